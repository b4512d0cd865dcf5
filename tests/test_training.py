"""Recipes, the training loop, evaluation, and the pretrained cache, on a tiny model."""
import dataclasses
import platform
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from capsule_lib import registry, training
from capsule_lib.fast_paths import keep_freed_memory
from capsule_lib.interfaces import ModelOutput
from capsule_lib.losses import margin_loss
from capsule_lib.squash import squash
from capsule_lib.training import (RECIPES, History, Recipe, cpu_recipe, evaluate,
                                  evaluate_over_shifts, fit, pretrained)


class TinyCapsules(nn.Module):
    """One linear map from pixels to 10 squashed 4D capsules, trained with the margin loss."""

    def __init__(self):
        super().__init__()
        self.votes = nn.Linear(28 * 28, 10 * 4)

    def forward(self, images, labels=None):
        poses = squash(self.votes(images.flatten(1)).view(-1, 10, 4))     # [B, 10, 4]
        return ModelOutput(scores=poses.norm(dim=-1), poses=poses)

    def loss(self, output, images, labels):
        return margin_loss(output.scores, labels)


def stripes(n: int, seed: int = 0) -> TensorDataset:
    """Class k lights rows 2k+4 and 2k+5, plus noise: learnable by a linear model."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=generator)
    images = 0.2 * torch.rand(n, 1, 28, 28, generator=generator)
    for k in range(10):
        images[labels == k, 0, 2 * k + 4: 2 * k + 6, :] = 1.0
    return TensorDataset(images, labels)


def tiny_recipe(**changes) -> Recipe:
    values = dict(model="tiny", data="mnist-sample", epochs=3, batch_size=16,
                  learning_rate=1e-2, lr_decay=0.5, max_shift=1)
    return Recipe(**{**values, **changes})


def test_fit_decreases_loss_and_learns():
    torch.manual_seed(0)
    history = fit(TinyCapsules(), stripes(256), tiny_recipe(epochs=4, max_shift=0),
                  device="cpu", progress=False)
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert history.accuracy[-1] > 0.9


def test_fit_is_deterministic_for_a_seed():
    def weights(seed):
        torch.manual_seed(123)             # the same initial weights for every run
        model = TinyCapsules()
        fit(model, stripes(64), tiny_recipe(epochs=2, seed=seed), device="cpu", progress=False)
        return model.votes.weight.detach().clone()

    assert torch.equal(weights(seed=0), weights(seed=0))
    assert not torch.equal(weights(seed=0), weights(seed=1))   # order and shifts follow the seed


def test_fit_through_torch_compile_learns_what_eager_fit_learns():
    def weights(compile_model):
        torch.manual_seed(123)
        model = TinyCapsules()
        fit(model, stripes(64), tiny_recipe(epochs=2), device="cpu", progress=False,
            compile_model=compile_model)
        return model.votes.weight.detach().clone()

    torch._dynamo.reset()
    torch.testing.assert_close(weights(compile_model=True), weights(compile_model=False),
                               rtol=1e-4, atol=1e-5)       # the compiler may fuse and reorder


def test_history_fields():
    recipe = tiny_recipe(epochs=3, lr_decay=0.5, min_learning_rate=3e-3)
    history = fit(TinyCapsules(), stripes(48), recipe, validation_set=stripes(20, seed=1),
                  device="cpu", progress=False)
    assert history.epochs == 3
    for values in dataclasses.asdict(history).values():
        assert len(values) == 3
    assert history.learning_rate == pytest.approx([1e-2, 5e-3, 3e-3])   # decay, then the floor
    assert all(0 <= accuracy <= 1 for accuracy in history.accuracy + history.validation_accuracy)
    assert all(speed > 0 for speed in history.samples_per_second)
    assert History.from_dict(history.to_dict()) == history


def test_fit_on_the_cpu_asks_the_c_library_to_keep_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(training, "keep_freed_memory", lambda: calls.append(True) or True)
    fit(TinyCapsules(), stripes(32), tiny_recipe(epochs=1), device="cpu", progress=False)
    assert calls == [True]


def test_keep_freed_memory_works_with_glibc_and_declines_elsewhere():
    agreed = keep_freed_memory()
    assert agreed is (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    assert keep_freed_memory() is agreed                                 # can be asked again


def test_history_without_validation_set_has_no_validation_entries():
    history = fit(TinyCapsules(), stripes(32), tiny_recipe(epochs=1), device="cpu",
                  progress=False)
    assert history.validation_accuracy == [] and history.validation_loss == []


def test_learning_rate_schedule():
    every_2000 = Recipe(model="capsnet", data="mnist", epochs=1, batch_size=128,
                        learning_rate=1e-3, lr_decay=0.96, decay_every_steps=2000)
    assert every_2000.learning_rate_at(1999, steps_per_epoch=469) == pytest.approx(1e-3)
    assert every_2000.learning_rate_at(2000, steps_per_epoch=469) == pytest.approx(0.96e-3)
    per_epoch = RECIPES["efficient-capsnet-paper"]
    assert per_epoch.learning_rate_at(2 * 3750, steps_per_epoch=3750) == pytest.approx(
        5e-4 * 0.97 ** 2)
    assert per_epoch.learning_rate_at(149 * 3750, steps_per_epoch=3750) == pytest.approx(5e-5)


@pytest.mark.parametrize("change, message", [
    ({"epochs": 0}, r"Recipe.epochs must be a whole number >= 1, got 0"),
    ({"epochs": 1.5}, r"Recipe.epochs must be a whole number >= 1, got 1.5"),
    ({"epochs": 2.0}, r"got 2.0; write 2"),
    ({"batch_size": True}, "batch_size"),
    ({"learning_rate": -1.0}, "learning_rate must be a finite number > 0"),
    ({"learning_rate": float("inf")}, "learning_rate must be a finite number > 0"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number > 0"),
    ({"min_learning_rate": -1e-3}, "min_learning_rate"),
    ({"seed": -1}, "seed"),
    ({"model": 3}, "model must be a name"),
    ({"lr_decay": 1.5}, r"lr_decay .* \(0, 1\]"),
    ({"decay_every_steps": 0}, "decay_every_steps"),
    ({"max_shift": -1}, "max_shift"),
    ({"train_size": 0}, "train_size"),
    ({"model_config": {"activation": nn.ReLU}}, "plain values"),
    ({"augmentation": "mixup"}, "augmentation must be one of"),
    ({"augmentation": "efficient-capsnet", "max_shift": 2}, "set max_shift=0"),
])
def test_recipe_rejects_bad_values(change, message):
    with pytest.raises(ValueError, match=message):
        tiny_recipe(**change)


def test_augmentation_enters_the_cache_key_only_when_it_is_not_the_default():
    """Recipes from before the field existed keep their cache names; others get new ones."""
    shift = tiny_recipe()
    assert "augmentation" not in shift.to_dict()
    assert Recipe.from_dict(shift.to_dict()) == shift
    efficient = tiny_recipe(augmentation="efficient-capsnet", max_shift=0)
    assert efficient.to_dict()["augmentation"] == "efficient-capsnet"
    assert Recipe.from_dict(efficient.to_dict()) == efficient
    assert training.cache_path(efficient) != training.cache_path(
        tiny_recipe(max_shift=0))


def test_the_efficient_capsnet_recipes_use_the_authors_augmentation():
    paper = RECIPES["efficient-capsnet-paper"]
    assert (paper.augmentation, paper.max_shift, paper.batch_size, paper.epochs) == (
        "efficient-capsnet", 0, 16, 150)
    assert (paper.learning_rate, paper.lr_decay, paper.min_learning_rate) == (5e-4, 0.97, 5e-5)
    assert RECIPES["efficient-capsnet-fast"].augmentation == "shift"


def test_fit_applies_the_recipes_augmentation(monkeypatch):
    seen = []
    original = training.efficient_capsnet_augmentation

    def spy(images, generator):
        seen.append(images.shape)
        return original(images, generator)

    monkeypatch.setattr(training, "efficient_capsnet_augmentation", spy)
    recipe = tiny_recipe(epochs=1, augmentation="efficient-capsnet", max_shift=0)

    def weights():
        torch.manual_seed(0)
        model = TinyCapsules()
        fit(model, stripes(40), recipe, device="cpu", progress=False)
        return model.votes.weight.detach().clone()

    first = weights()
    assert seen == [(16, 1, 28, 28), (16, 1, 28, 28), (8, 1, 28, 28)]
    assert torch.equal(first, weights())             # seeded, like the shifts


def test_cpu_recipe_names_the_models_it_knows():
    assert cpu_recipe("efficient-capsnet").data == "mnist-sample"
    with pytest.raises(ValueError, match="models with one"):
        cpu_recipe("resnet")


def test_fit_rejects_other_datasets():
    with pytest.raises(TypeError, match="TensorDataset"):
        fit(TinyCapsules(), [(torch.zeros(1, 28, 28), 0)], tiny_recipe(), progress=False)


class FixedGuesser(nn.Module):
    """Predicts the class written (times 0.1) in pixel (0, 0); records how it was called."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, images, labels=None):
        self.calls.append((self.training, torch.is_grad_enabled(), labels))
        guesses = (images[:, 0, 0, 0] * 10).round().long()
        return ModelOutput(scores=self.scale * nn.functional.one_hot(guesses, 10).float())

    def loss(self, output, images, labels):
        return margin_loss(output.scores, labels)


def test_evaluate_over_shifts_averages_the_nine_shifted_copies():
    labels = torch.tensor([3, 7])
    images = (labels / 10).view(2, 1, 1, 1).expand(2, 1, 28, 28).clone()  # the class everywhere
    model = FixedGuesser().train()
    result = evaluate_over_shifts(model, TensorDataset(images, labels), max_shift=1)
    # the 5 copies moved down or right bring zeros into pixel (0, 0), so they vote for class 0
    expected = torch.zeros(2, 10)
    expected[:, 0] = 5 / 9
    expected[[0, 1], labels] = 4 / 9
    assert torch.allclose(result.scores, expected)
    assert result.predictions.tolist() == [0, 0] and result.accuracy == 0
    assert len(model.calls) == 9 and model.training                # nine passes, mode restored
    # the loss is the copies' mean: a wrong copy costs 0.9^2 + 0.5 * 0.9^2, a right one 0
    assert result.loss == pytest.approx(5 / 9 * 1.5 * 0.81)


def test_shifted_copy_moves_down_and_right():
    images = torch.zeros(2, 1, 5, 5)
    images[:, 0, 2, 2] = 1
    moved = training.shifted_copy(images, 1, -2)                    # one down, two left
    assert moved[:, 0, 3, 0].tolist() == [1, 1] and moved.sum() == 2
    assert moved.is_contiguous()
    with pytest.raises(ValueError, match="dx"):
        training.shifted_copy(images, 0, 0.5)


def test_evaluate_over_shifts_without_shifts_is_evaluate():
    torch.manual_seed(0)
    model, digits = TinyCapsules(), stripes(20)
    plain, unshifted = evaluate(model, digits), evaluate_over_shifts(model, digits, max_shift=0)
    assert torch.equal(plain.scores, unshifted.scores) and plain.loss == unshifted.loss
    with pytest.raises(ValueError, match="max_shift"):
        evaluate_over_shifts(model, digits, max_shift=-1)
    with pytest.raises(ValueError, match="max_shift"):
        evaluate_over_shifts(model, digits, max_shift=1.5)
    with pytest.raises(ValueError, match="out of the frame"):
        evaluate_over_shifts(model, digits, max_shift=28)


def test_evaluate_accuracy_predictions_and_mode():
    labels = torch.arange(10)
    guesses = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 0, 0])          # 7 of 10 right
    images = torch.zeros(10, 1, 28, 28)
    images[:, 0, 0, 0] = guesses / 10
    model = FixedGuesser().train()
    result = evaluate(model, TensorDataset(images, labels), batch_size=4)
    assert result.accuracy == pytest.approx(0.7)
    assert result.errors == 3
    assert torch.equal(result.predictions, guesses)
    assert result.scores.shape == (10, 10)
    # wrong guesses cost 0.9^2 (missing class) + 0.5 * 0.9^2 (wrong class present)
    assert result.loss == pytest.approx(3 * 1.5 * 0.81 / 10)
    assert model.calls == [(False, False, None)] * 3              # eval mode, no grad, no labels
    assert model.training                                         # mode restored


# ---------------------------------------------------------------------------------------------
# train and pretrained, with the registry answering "tiny" with TinyCapsules


@pytest.fixture
def tiny_registry(monkeypatch):
    monkeypatch.setitem(registry.MODEL_CLASSES, "tiny", TinyCapsules)


@pytest.fixture
def fit_calls(monkeypatch):
    calls = []
    real_fit = training.fit

    def counting_fit(*args, **kwargs):
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", counting_fit)
    return calls


def test_train_uses_a_subset_and_tracks_the_test_split(tiny_registry):
    model, history = training.train(tiny_recipe(epochs=1, train_size=64), progress=False,
                                    device="cpu")
    assert isinstance(model, TinyCapsules)
    assert len(history.validation_accuracy) == 1
    assert history.samples_per_second[0] * history.seconds[0] == pytest.approx(64)


def test_train_rejects_a_subset_larger_than_the_split(tiny_registry):
    with pytest.raises(ValueError, match="larger than the training split"):
        training.train(tiny_recipe(train_size=10**6), progress=False, device="cpu")


def test_pretrained_trains_once_then_loads(tiny_registry, fit_calls, tmp_path):
    recipe = tiny_recipe(epochs=1, train_size=64)
    first, first_history = pretrained(recipe, cache_dir=tmp_path, progress=False, device="cpu")
    second, second_history = pretrained(recipe, cache_dir=tmp_path, progress=False, device="cpu")
    assert len(fit_calls) == 1
    assert torch.equal(first.votes.weight, second.votes.weight)
    assert second_history == first_history
    assert not second.training
    pretrained(dataclasses.replace(recipe, seed=1), cache_dir=tmp_path, progress=False,
               device="cpu")
    assert len(fit_calls) == 2                        # another recipe, another cache file


def test_pretrained_cache_dir_from_environment(tiny_registry, fit_calls, tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSULE_LIB_CACHE", str(tmp_path / "cache"))
    recipe = tiny_recipe(epochs=1, train_size=32)
    pretrained(recipe, progress=False, device="cpu")
    assert training.cache_path(recipe).parent == tmp_path / "cache"
    assert training.cache_path(recipe).is_file()


def test_pretrained_retrains_a_corrupt_cache_file(tiny_registry, fit_calls, tmp_path):
    recipe = tiny_recipe(epochs=1, train_size=32)
    training.cache_path(recipe, tmp_path).write_bytes(b"half a checkpoint")
    with pytest.warns(UserWarning, match="retraining"):
        pretrained(recipe, cache_dir=tmp_path, progress=False, device="cpu")
    assert len(fit_calls) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")                # the rewritten file loads cleanly
        pretrained(recipe, cache_dir=tmp_path, progress=False, device="cpu")
    assert len(fit_calls) == 1


def test_pretrained_wants_a_recipe():
    with pytest.raises(TypeError, match="RECIPES"):
        pretrained("efficient-capsnet-cpu")


def test_capsnet_variant_changes_only_what_the_table1_cell_changes():
    from capsule_lib.recipes import capsnet_variant
    shared = RECIPES["capsnet-cpu"]
    assert capsnet_variant(shared, 3, True) == shared
    assert capsnet_variant(shared, 1, True) == RECIPES["capsnet-no-routing-cpu"]
    assert capsnet_variant(shared, 3, False).model_config == {"with_decoder": False}
    assert capsnet_variant(shared, 1, False).model_config == {"routing_iterations": 1,
                                                              "with_decoder": False}
