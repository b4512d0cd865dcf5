"""Efficient-CapsNet's training augmentation (data.py), checked against the rules of the
authors' utils/pre_process_mnist.py: what each transform may and may not do to a digit."""
import math

import pytest
import torch

from capsule_lib.data import (affine_transform, efficient_capsnet_augmentation, ink_margins,
                              load_dataset, random_erase, random_margin_shift, random_rotation,
                              random_squish)

TRANSFORMS = (random_rotation, random_margin_shift, random_squish, random_erase,
              efficient_capsnet_augmentation)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("mnist-sample", "train").tensors[0][:400]           # [400, 1, 28, 28]


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_transforms_keep_shape_range_and_are_seeded(digits, transform):
    first, again = transform(digits, generator(3)), transform(digits, generator(3))
    assert first.shape == digits.shape and first.dtype == digits.dtype
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.equal(first, transform(digits, generator(4)))


def test_ink_margins_of_a_known_image():
    image = torch.zeros(2, 1, 28, 28)
    image[0, 0, 5:9, 10:20] = 1                       # rows 5-8, columns 10-19
    assert ink_margins(image).tolist() == [[5, 19, 10, 8], [0, 0, 0, 0]]


def test_rotation_turns_about_half_the_digits_by_whole_degrees_up_to_30(digits):
    rotated = random_rotation(digits, generator(0))
    changed = (rotated - digits).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert 0.38 < changed.float().mean() < 0.62
    # each changed digit equals the original turned by some whole angle in [-29, 29] degrees
    angles = torch.arange(-29, 30, dtype=torch.float64)
    for index in torch.nonzero(changed).flatten()[:5].tolist():
        candidates = affine_transform(digits[index:index + 1].expand(len(angles), -1, -1, -1),
                                      angles)
        errors = (candidates - rotated[index]).abs().amax(dim=(1, 2, 3))
        assert errors.min() < 1e-5


def test_margin_shift_keeps_all_ink_inside_the_frame(digits):
    shifted = random_margin_shift(digits, generator(1))
    torch.testing.assert_close(shifted.sum(dim=(1, 2, 3)), digits.sum(dim=(1, 2, 3)))
    before, after = ink_margins(digits), ink_margins(shifted)
    moves = after[:, [0, 2]] - before[:, [0, 2]]                            # (dy, dx)
    assert (moves != 0).any(dim=1).float().mean() > 0.5                    # most digits move
    assert (after >= 0).all()
    # each axis moves by at most the blank margin on the side it moves towards
    assert (moves.abs() <= torch.where(moves > 0, before[:, [1, 3]], before[:, [0, 2]])).all()


def test_squish_narrows_the_image_by_1_to_7_pixels_near_the_middle():
    band = torch.zeros(1000, 1, 28, 28)
    band[:, :, 10:18, :] = 1                         # ink in every column, rows 10-17
    squished = random_squish(band, generator(2))
    columns = squished[:, 0, 14].gt(0.5)                                    # [1000, 28]
    lost = 28 - columns.sum(dim=1)
    assert lost.min() == 1 and lost.max() <= 7 and lost.float().mean() < 3
    left = columns.float().argmax(dim=1)             # first inked column: half the lost width
    assert ((left - lost // 2 >= 0) & (left - lost // 2 <= 1)).all()
    # horizontal only: the rows keep their ink, and no ink appears in other rows
    assert torch.equal(squished.gt(0).any(dim=3), band.gt(0).any(dim=3))


def test_erase_zeroes_one_4x4_patch_within_rows_and_columns_4_to_25():
    ones = torch.ones(500, 1, 28, 28)
    erased = random_erase(ones, generator(5))
    zeros = erased == 0
    assert (zeros.sum(dim=(1, 2, 3)) == 16).all()
    rows, cols = zeros.any(dim=3).squeeze(1), zeros.any(dim=2).squeeze(1)   # [500, 28]
    assert not rows[:, :4].any() and not rows[:, 26:].any()
    assert not cols[:, :4].any() and not cols[:, 26:].any()
    assert rows[:, 4].any() and rows[:, 25].any()                          # both ends reached
    with pytest.raises(ValueError, match="at least 26 pixels"):
        random_erase(torch.ones(1, 1, 20, 20))


def test_augmentation_applies_the_four_in_the_authors_order(digits):
    expected = digits
    shared = generator(7)
    for transform in (random_rotation, random_margin_shift, random_squish, random_erase):
        expected = transform(expected, shared)
    torch.testing.assert_close(efficient_capsnet_augmentation(digits, generator(7)), expected)


def test_angles_follow_the_clipped_normal(digits):
    """Two thirds of the rotated digits turn by less than 10 degrees (|N(0, 0.33)| x 30 < 10
    with probability about 0.67)."""
    flat = torch.zeros(4000, 1, 28, 28)
    flat[:, :, 13:15, 4:24] = 1                                             # a horizontal bar
    rotated = random_rotation(flat, generator(8))
    changed = (rotated - flat).abs().amax(dim=(1, 2, 3)) > 1e-4
    # the bar's end rows rise or fall by about 10 px x sin(angle): below 10 degrees, < 2 rows
    rows = rotated[changed].gt(0.5).any(dim=3).squeeze(1).sum(dim=1)        # rows with ink
    small = (rows <= 2 + 2 * 10 * math.sin(math.radians(10))).float().mean()
    assert 0.55 < small < 0.8
