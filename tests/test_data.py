"""capsule_lib.data: the bundled sample, offline loading, shifts, affine transforms, MultiMNIST."""
import gzip
import socket
import time

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from capsule_lib.data import (DATASET_NAMES, DatasetNotFoundError, affine_test_set,
                              affine_transform, load_dataset, make_multimnist,
                              make_overlapping_pairs, pad_to, random_affine, random_shift,
                              read_idx, shift_images, subset, validation_indices)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("capsule_lib.data tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def sample():
    return {split: load_dataset("mnist-sample", split)
            for split in ("train", "validation", "test")}


@pytest.mark.parametrize("split, per_class", [("train", 350), ("validation", 50), ("test", 100)])
def test_mnist_sample_shapes_ranges_and_balance(sample, split, per_class):
    images, labels = sample[split].tensors
    assert images.shape == (10 * per_class, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (10 * per_class,) and labels.dtype == torch.int64
    assert images.min() == 0 and images.max() == 1
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), per_class))


def test_mnist_sample_splits_are_disjoint(sample):
    images = {split: {bytes(image.numpy()) for image in (dataset.tensors[0] * 255).byte()}
              for split, dataset in sample.items()}
    assert not images["train"] & images["test"]
    assert not images["train"] & images["validation"]
    assert not images["validation"] & images["test"]
    assert len(images["train"] | images["validation"]) == 4000     # the sample's training digits


def test_validation_split_is_the_same_every_time(sample):
    again = load_dataset("mnist-sample", "validation")
    assert torch.equal(again.tensors[0], sample["validation"].tensors[0])


def test_validation_indices_are_stratified_in_proportion_and_seeded():
    labels = np.repeat(np.arange(10), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851,
                                       5949])                       # MNIST's training classes
    chosen = validation_indices(labels, 5000)
    assert len(chosen) == 5000 and len(np.unique(chosen)) == 5000
    counts = np.bincount(labels[chosen], minlength=10)
    assert np.all(np.abs(counts - 5000 * np.bincount(labels) / len(labels)) < 1)
    assert np.array_equal(chosen, validation_indices(labels, 5000))
    assert not np.array_equal(chosen, validation_indices(labels, 5000, seed=1))


def test_unknown_name_or_split_lists_the_valid_ones():
    with pytest.raises(ValueError, match="mnist-sample"):
        load_dataset("cifar-10")
    with pytest.raises(ValueError, match="validation"):
        load_dataset("mnist-sample", "val")
    assert DATASET_NAMES == ("mnist-sample", "mnist", "fashion-mnist")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_missing_files_raise_quickly_with_instructions(tmp_path, monkeypatch, name):
    monkeypatch.setattr("capsule_lib.data.FASHION_MNIST_DEBIAN_DIR", tmp_path / "not-installed")
    start = time.monotonic()
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset(name, "train", root=tmp_path)
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert str(tmp_path) in message and "download=True" in message
    assert isinstance(error.value, FileNotFoundError)
    if name == "fashion-mnist":
        assert "apt install dataset-fashion-mnist" in message


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        size.to_bytes(4, "big") for size in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST/raw"), ("fashion-mnist", "")])
def test_reads_gzipped_idx_files_offline(tmp_path, name, folder):
    directory = tmp_path / folder
    directory.mkdir(parents=True, exist_ok=True)
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    _write_idx(directory / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.array([7, 0, 9]))
    dataset = load_dataset(name, "test", root=tmp_path)
    assert torch.equal(dataset.tensors[1], torch.tensor([7, 0, 9]))
    assert torch.allclose(dataset.tensors[0][:, 0] * 255, torch.from_numpy(images).float())
    assert read_idx(directory / "t10k-labels-idx1-ubyte.gz").tolist() == [7, 0, 9]


def test_subset_is_class_balanced_and_seeded(sample):
    part = subset(sample["train"], 50, seed=3)
    assert torch.equal(torch.bincount(part.tensors[1], minlength=10), torch.full((10,), 5))
    again = subset(sample["train"], 50, seed=3)
    assert torch.equal(part.tensors[0], again.tensors[0])
    assert not torch.equal(part.tensors[0], subset(sample["train"], 50, seed=4).tensors[0])
    with pytest.raises(ValueError, match="between 1 and"):
        subset(sample["train"], 4001)


def _one_pixel_images(batch, size=28):
    images = torch.zeros(batch, 1, size, size)
    images[:, 0, size // 2, size // 2] = 1.0
    return images


def test_random_shift_moves_within_range_with_zero_padding():
    images = _one_pixel_images(500)
    shifted = random_shift(images, max_shift=2, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    assert torch.equal(shifted.sum((1, 2, 3)), torch.ones(500))            # mass kept
    where = shifted[:, 0].flatten(1).argmax(1)
    dy, dx = where // 28 - 14, where % 28 - 14
    assert dy.abs().max() == 2 and dx.abs().max() == 2                     # every value drawn
    assert set(dy.tolist()) == set(range(-2, 3)) == set(dx.tolist())


def test_random_shift_pads_with_zeros_not_wrapping():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, :, 27] = 1.0                                               # right-most column
    moved = shift_images(image, torch.tensor([[0, 1]]))                    # one pixel right
    assert moved.sum() == 0
    moved_left = shift_images(image, torch.tensor([[0, -3]]))
    assert torch.equal(moved_left[0, 0, :, 24], torch.ones(28)) and moved_left.sum() == 28


def test_random_shift_is_deterministic_with_a_seeded_generator(sample):
    images = sample["test"].tensors[0][:64]
    first = random_shift(images, 2, generator=torch.Generator().manual_seed(7))
    second = random_shift(images, 2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second) and not torch.equal(first, images)
    assert torch.equal(random_shift(images, 0), images)
    with pytest.raises(ValueError, match="B, C, H, W"):
        random_shift(images[0], 2)


def test_affine_identity_at_defaults(sample):
    images = sample["test"].tensors[0][:16]
    assert torch.allclose(affine_transform(images), images, atol=1e-5)
    assert torch.allclose(random_affine(images, 0.0), images, atol=1e-5)


def test_affine_rotation_by_90_degrees_is_rot90():
    pattern = torch.zeros(1, 1, 28, 28)
    pattern[0, 0, 4:10, 3:20] = 1.0                                        # an off-centre bar
    pattern[0, 0, 20, 5] = 0.5
    rotated = affine_transform(pattern, rotation_deg=90.0)
    assert torch.allclose(rotated, torch.rot90(pattern, 1, (-2, -1)), atol=1e-5)


def test_affine_translation_and_scale():
    pattern = _one_pixel_images(1)
    moved = affine_transform(pattern, translate=(3.0, -2.0))
    assert moved[0, 0, 12, 17] == pytest.approx(1.0, abs=1e-5)
    assert moved.sum() == pytest.approx(1.0, abs=1e-5)
    square = torch.zeros(1, 1, 28, 28)
    square[0, 0, 10:18, 10:18] = 1.0
    assert affine_transform(square, scale=0.5).sum() == pytest.approx(16.0, abs=0.5)


def test_affine_test_set_is_reproducible_and_keeps_labels(sample):
    part = subset(sample["test"], 40, seed=0)
    first, second = affine_test_set(part, 1.0, seed=1), affine_test_set(part, 1.0, seed=1)
    assert torch.equal(first.tensors[0], second.tensors[0])
    assert torch.equal(first.tensors[1], part.tensors[1])
    assert not torch.equal(first.tensors[0], affine_test_set(part, 1.0, seed=2).tensors[0])
    assert first.tensors[0].min() >= 0 and first.tensors[0].max() <= 1 + 1e-6
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        affine_test_set(part, 1.5)


def _centre_of_mass(images):
    """(x, y) in pixels of each image [B, 1, H, W] -> [B, 2]."""
    h, w = images.shape[-2:]
    mass = images[:, 0].sum((1, 2))                                        # [B]
    x = (images[:, 0].sum(1) * torch.arange(w)).sum(1) / mass
    y = (images[:, 0].sum(2) * torch.arange(h)).sum(1) / mass
    return torch.stack([x, y], 1)


def test_random_affine_translations_stay_within_the_training_shifts(sample):
    images = subset(sample["test"], 200, seed=0).tensors[0]
    only_translation = {"max_rotation_deg": 0, "max_shear": 0, "scale_range": 0}
    moved = random_affine(images, 1.0, torch.Generator().manual_seed(3), **only_translation)
    # nearly every digit keeps all its ink (MNIST centres by the centre of mass, so a few
    # strokes lie near the frame, as with the training shifts)
    kept = torch.isclose(moved.sum((1, 2, 3)), images.sum((1, 2, 3)), rtol=1e-3)  # [B]
    assert kept.float().mean() > 0.95
    offset = (_centre_of_mass(moved) - _centre_of_mass(images))[kept]      # [B', 2]
    # each axis by at most 2 px (the training shifts); sub-pixel moves, not whole pixels
    assert offset.abs().max() <= 2.0 + 1e-3
    assert offset.abs().max() > 1.5 and (offset.abs() % 1 > 0.05).any()
    farther = random_affine(images, 1.0, torch.Generator().manual_seed(3), max_translation=4.0,
                            **only_translation)
    # the same draws scaled: twice the range, twice the move
    farther_kept = torch.isclose(farther.sum((1, 2, 3)), images.sum((1, 2, 3)), rtol=1e-3)
    both = farther_kept[kept]
    assert both.float().mean() > 0.8
    farther_offset = (_centre_of_mass(farther) - _centre_of_mass(images))[kept]
    assert torch.allclose(farther_offset[both], 2 * offset[both], atol=0.05)
    test_set = affine_test_set(TensorDataset(images, torch.zeros(200, dtype=torch.long)), 1.0,
                               seed=3, **only_translation)
    assert torch.equal(test_set.tensors[0], moved)


def test_random_affine_ranges_are_checked_and_zero_ranges_leave_images_alone(sample):
    images = sample["test"].tensors[0][:8]
    nothing = {"max_rotation_deg": 0, "max_shear": 0, "scale_range": 0, "max_translation": 0}
    assert torch.allclose(random_affine(images, 1.0, **nothing), images, atol=1e-5)
    for name, value in (("max_rotation_deg", -1.0), ("max_shear", float("nan")),
                        ("scale_range", 1.0), ("max_translation", "2")):
        with pytest.raises(ValueError, match=name):
            random_affine(images, 1.0, **{name: value})


def test_multimnist_two_different_visible_digits(sample):
    images, labels = sample["test"].tensors
    pairs, pair_labels = make_multimnist(images, labels, 200, seed=0)
    assert pairs.shape == (200, 1, 36, 36) and pairs.dtype == torch.float32
    assert pair_labels.shape == (200, 2) and pair_labels.dtype == torch.int64
    assert (pair_labels[:, 0] != pair_labels[:, 1]).all()
    assert pairs.min() >= 0 and pairs.max() <= 1
    # each digit is visible: the overlay is at least as bright as either digit alone, so its
    # ink covers more pixels than the fainter digit's and never less than either one's
    ink = (pairs > 0.5).flatten(1).sum(1)
    single_ink = (images > 0.5).flatten(1).sum(1)
    assert (ink >= single_ink.min()).all() and ink.float().mean() > single_ink.float().mean()
    again, again_labels = make_multimnist(images, labels, 200, seed=0)
    assert torch.equal(again, pairs) and torch.equal(again_labels, pair_labels)


def test_overlay_is_the_pixelwise_max_of_the_two_shifted_digits():
    images = torch.zeros(2, 1, 28, 28)
    images[0, 0, 4:24, 13] = 1.0                                           # a "1", class 1
    images[1, 0, 13, 4:24] = 0.6                                           # a bar, class 7
    pairs, pair_labels = make_overlapping_pairs(images, torch.tensor([1, 7]), 20, max_shift=0)
    for pair, (first, second) in zip(pairs, pair_labels):
        expected = torch.maximum(images[int(first == 7)], images[int(second == 7)])
        assert torch.equal(pair, expected)
    assert pad_to(images, 36)[0, 0, 4:32, 4:32].equal(images[0, 0])


def test_multimnist_shows_both_digits_shifted_up_to_4_pixels():
    # one dot per image, its brightness naming the class: the overlay must show both dots
    images = _one_pixel_images(30) * (torch.arange(30) % 10 + 1).float().div(10)[:, None, None, None]
    labels = torch.arange(30) % 10
    pairs, pair_labels = make_multimnist(images, labels, 300, seed=1)
    both_visible = 0
    for pair, (first, second) in zip(pairs[:, 0], pair_labels):
        values = (first + 1) / 10, (second + 1) / 10
        dots = pair.nonzero()
        assert torch.allclose(pair.max(), torch.maximum(*values).float())
        assert ((dots - 18).abs() <= 4).all()                              # centre 18 on 36x36
        seen = set(pair[pair > 0].tolist())
        assert seen <= {values[0].item(), values[1].item()}
        both_visible += len(dots) == 2
    assert both_visible >= 0.9 * len(pairs)                               # coincide: 1/81 of pairs
