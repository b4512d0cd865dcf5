"""Overlapping digit pairs with their layers, the two-hot margin loss, the two-digit accuracy,
and fine-tuning on pairs with its cache (on a tiny recipe)."""
import warnings

import pytest
import torch

from capsule_lib import multidigit
from capsule_lib.capsnet import CapsNet
from capsule_lib.data import make_overlapping_pairs
from capsule_lib.checkpoint import cache_path
from capsule_lib.losses import class_targets, margin_loss
from capsule_lib.multidigit import (DigitPairs, PairRecipe, evaluate_pairs,
                                    make_pairs_with_layers, pair_loss,
                                    pretrained_pair_model, reconstruct_each_digit,
                                    two_digit_accuracy)
from capsule_lib.training import Recipe


def blobs(n: int = 40, seed: int = 0):
    """Digit-like random images [n, 1, 28, 28] in [0, 1] with labels cycling over 0..9."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 28, 28)
    images[:, :, 6:22, 8:20] = torch.rand(n, 1, 16, 12, generator=generator)
    return images, torch.arange(n) % 10


@pytest.mark.parametrize("max_shift, canvas", [(2, 28), (4, 36)])
def test_pairs_match_make_overlapping_pairs(max_shift, canvas):
    images, labels = blobs()
    pairs = make_pairs_with_layers(images, labels, 25, max_shift, canvas, seed=3)
    combined, pair_labels = make_overlapping_pairs(images, labels, 25, max_shift, canvas, seed=3)
    assert torch.equal(pairs.images, combined)
    assert torch.equal(pairs.labels, pair_labels)
    assert pairs.layers.shape == (25, 2, 1, canvas, canvas)


def test_layers_overlay_to_the_image_and_hold_each_digit():
    images, labels = blobs()
    pairs = make_pairs_with_layers(images, labels, 30, seed=1)
    assert torch.equal(pairs.layers.amax(dim=1), pairs.images)
    assert (pairs.labels[:, 0] != pairs.labels[:, 1]).all()
    # a layer is its digit shifted: same total ink, since a 2-pixel shift never cuts a blob
    ink = pairs.layers.flatten(2).sum(2)                                   # [n, 2]
    first_ink = images.flatten(1).sum(1)
    assert any(torch.allclose(ink[0, 0], value) for value in first_ink)


def test_pairs_are_seeded_and_check_their_input():
    images, labels = blobs()
    one = make_pairs_with_layers(images, labels, 10, seed=5)
    assert torch.equal(one.layers, make_pairs_with_layers(images, labels, 10, seed=5).layers)
    assert not torch.equal(one.layers, make_pairs_with_layers(images, labels, 10, seed=6).layers)
    with pytest.raises(ValueError, match=r"images \[B, C, H, W\]"):
        make_pairs_with_layers(images[:, 0], labels, 10)
    with pytest.raises(ValueError, match="two classes"):
        make_pairs_with_layers(images, torch.zeros_like(labels), 10)
    with pytest.raises(ValueError, match="labels"):
        make_pairs_with_layers(images, labels[:5], 10)


def test_margin_loss_with_two_labels_per_image_has_two_targets():
    lengths = torch.rand(6, 10)
    labels = torch.randint(0, 10, (6,))
    same_twice = torch.stack([labels, labels], 1)
    assert torch.allclose(margin_loss(lengths, same_twice), margin_loss(lengths, labels))
    pairs = torch.tensor([[1, 7]])
    assert torch.equal(class_targets(pairs, 10)[0], torch.tensor([0, 1, 0, 0, 0, 0, 0, 1, 0, 0.0]))
    perfect = 0.95 * class_targets(pairs, 10)                                        # both long, rest 0
    assert margin_loss(perfect, pairs) == 0
    one_missing = perfect.clone()
    one_missing[0, 7] = 0.0
    assert torch.isclose(margin_loss(one_missing, pairs), torch.tensor(0.81))


def test_two_digit_accuracy_needs_both_labels_in_the_top_two():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.0],
                           [0.9, 0.1, 0.8, 0.0],
                           [0.1, 0.9, 0.0, 0.8]])
    labels = torch.tensor([[1, 0], [0, 1], [3, 1]])
    assert two_digit_accuracy(scores, labels) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="labels"):
        two_digit_accuracy(scores, labels[:, :1])


def test_each_digit_is_decoded_from_its_own_capsule_and_the_loss_backpropagates():
    torch.manual_seed(0)
    model = CapsNet()
    images, labels = blobs()
    pairs = make_pairs_with_layers(images, labels, 3)
    output = model(pairs.images)
    reconstructions = reconstruct_each_digit(model, output.poses, pairs.labels)
    assert reconstructions.shape == (3, 2, 1, 28, 28)
    for k in range(2):
        assert torch.equal(reconstructions[:, k], model.decoder(output.poses, pairs.labels[:, k]))
    loss = pair_loss(model, output.poses, output.scores, pairs)
    loss.backward()
    assert torch.isfinite(loss) and model.decoder.layers[0].weight.grad.abs().sum() > 0
    evaluation = evaluate_pairs(model, pairs, batch_size=2)
    assert evaluation.reconstructions.shape == (3, 2, 1, 28, 28)
    assert torch.allclose(evaluation.reconstructions, reconstructions, atol=1e-6)


def test_pair_recipe_checks_and_round_trips():
    base = Recipe(model="capsnet", data="mnist-sample", epochs=1, batch_size=4,
                  learning_rate=1e-3, train_size=20)
    recipe = PairRecipe(base, steps=2, batch_size=3)
    assert PairRecipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(ValueError, match="steps"):
        PairRecipe(base, steps=0)
    with pytest.raises(TypeError, match="Recipe"):
        PairRecipe("capsnet-cpu")
    assert cache_path(recipe) != cache_path(PairRecipe(base, steps=3, batch_size=3))


def test_pretrained_pair_model_fine_tunes_once_then_loads(tmp_path, monkeypatch):
    base = Recipe(model="capsnet", data="mnist-sample", epochs=1, batch_size=10,
                  learning_rate=1e-3, train_size=20)
    recipe = PairRecipe(base, steps=2, batch_size=3)
    calls = []
    real_finetune = multidigit.finetune_on_pairs
    monkeypatch.setattr(multidigit, "finetune_on_pairs",
                        lambda *args, **kwargs: calls.append(1) or real_finetune(*args, **kwargs))
    model, history = pretrained_pair_model(recipe, cache_dir=tmp_path, progress=False,
                                           device="cpu")
    assert len(history.loss) == 2 and not model.training
    again, again_history = pretrained_pair_model(recipe, cache_dir=tmp_path, progress=False,
                                                 device="cpu")
    assert calls == [1] and again_history.loss == history.loss
    for (name, value), (_, loaded) in zip(model.state_dict().items(),
                                          again.state_dict().items()):
        assert torch.equal(value, loaded), name
    cache_path(recipe, tmp_path).write_bytes(b"not a checkpoint")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pretrained_pair_model(recipe, cache_dir=tmp_path, progress=False, device="cpu")
    assert calls == [1, 1] and any("unusable" in str(w.message) for w in caught)


def test_digit_pairs_slice_together():
    images, labels = blobs()
    pairs = make_pairs_with_layers(images, labels, 8)
    part = pairs[2:5]
    assert isinstance(part, DigitPairs) and len(part) == 3
    assert torch.equal(part.layers, pairs.layers[2:5])


def test_two_hot_logit_loss_is_binary_cross_entropy_on_both_classes():
    logits = torch.randn(4, 10)
    labels = torch.tensor([[1, 7], [0, 2], [9, 3], [5, 4]])
    by_hand = 0.0
    for row, (first, second) in zip(logits, labels.tolist()):
        for k, logit in enumerate(row):
            p = torch.sigmoid(logit)
            by_hand += -(torch.log(p) if k in (first, second) else torch.log(1 - p))
    assert torch.isclose(multidigit.two_hot_logit_loss(logits, labels), by_hand / 4, atol=1e-5)
    confident = torch.full((1, 10), -20.0)
    confident[0, [1, 7]] = 20.0
    assert multidigit.two_hot_logit_loss(confident, torch.tensor([[1, 7]])) < 1e-6


def test_predicted_masks_keep_found_labels_in_their_slots():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.0],     # both found
                           [0.1, 0.9, 0.0, 0.8],     # label 3 found, label 2 missed
                           [0.9, 0.8, 0.1, 0.0]])    # neither found
    labels = torch.tensor([[1, 0], [2, 3], [2, 3]])
    masks, found = multidigit.predicted_masks(scores, labels)
    assert found.tolist() == [[True, True], [False, True], [False, False]]
    assert masks.tolist() == [[1, 0], [1, 3], [0, 1]]
    assert two_digit_accuracy(scores, labels) == pytest.approx(found.all(1).float().mean())
    with pytest.raises(ValueError, match="two labels"):
        multidigit.predicted_masks(scores, labels[:, :1])


def test_evaluate_pairs_decodes_the_predicted_capsules_too():
    torch.manual_seed(0)
    model = CapsNet()
    images, labels = blobs()
    pairs = make_pairs_with_layers(images, labels, 6)
    evaluation = evaluate_pairs(model, pairs, batch_size=4)
    masks, found = multidigit.predicted_masks(evaluation.scores, pairs.labels)
    assert torch.equal(found, evaluation.found)
    assert evaluation.correct.float().mean() == pytest.approx(evaluation.two_digit_accuracy)
    with torch.no_grad():
        poses = model(pairs.images).poses
        expected = reconstruct_each_digit(model, poses, masks)
    assert torch.allclose(evaluation.predicted_reconstructions, expected, atol=1e-6)
    assert torch.allclose(evaluation.poses, poses, atol=1e-6)
    same = found[:, :, None, None, None].expand_as(expected)
    assert torch.equal(evaluation.predicted_reconstructions[same],
                       evaluation.reconstructions[same])


def test_a_cnn_is_fine_tuned_on_pairs_with_the_two_hot_loss_and_cached(tmp_path):
    base = Recipe(model="pooling-cnn", data="mnist-sample", epochs=1, batch_size=10,
                  learning_rate=1e-3, train_size=20)
    recipe = PairRecipe(base, steps=2, batch_size=3)
    model, history = pretrained_pair_model(recipe, cache_dir=tmp_path, progress=False,
                                           device="cpu")
    assert len(history.loss) == 2 and all(torch.isfinite(torch.tensor(history.loss)))
    assert cache_path(recipe, tmp_path).name.startswith("pooling-cnn-pairs-")
    images, labels = blobs()
    evaluation = evaluate_pairs(model, make_pairs_with_layers(images, labels, 5))
    assert evaluation.reconstructions is None and evaluation.poses is None
    assert evaluation.scores.shape == (5, 10)
    assert evaluation.found.shape == (5, 2)


def test_after_step_sees_the_model_of_every_shorter_recipe():
    # constant learning rate and a seeded stream of pairs: step k of a 3-step fine-tuning is
    # the 2-step recipe's model, which is what benchmarks/pair_finetune_length.py relies on
    base = Recipe(model="capsnet", data="mnist-sample", epochs=1, batch_size=10,
                  learning_rate=1e-3, train_size=20)
    images, labels = blobs(20)
    digits = torch.utils.data.TensorDataset(images, labels)
    torch.manual_seed(0)
    start = CapsNet()
    seen = {}

    def remember(step, model):
        seen[step] = {name: value.clone() for name, value in model.state_dict().items()}

    longer = multidigit.copy.deepcopy(start)
    multidigit.finetune_on_pairs(longer, digits, PairRecipe(base, steps=3, batch_size=3),
                                 progress=False, after_step=remember)
    shorter = multidigit.copy.deepcopy(start)
    multidigit.finetune_on_pairs(shorter, digits, PairRecipe(base, steps=2, batch_size=3),
                                 progress=False)
    assert sorted(seen) == [1, 2, 3] and longer.training is False
    for name, value in shorter.state_dict().items():
        assert torch.equal(seen[2][name], value), name
    assert not torch.equal(seen[3]["digit_capsules.weight"], seen[2]["digit_capsules.weight"])
