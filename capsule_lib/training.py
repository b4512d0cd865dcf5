"""Training and evaluation: recipes, the training loop, and a cache of trained models.

A `Recipe` says everything that decides the trained weights (model, data, optimiser schedule,
augmentation, seed). `fit` runs the loop on a model you built; `train` builds model and data
from a recipe; `pretrained` trains a recipe once and loads the cached checkpoint afterwards.
"""
import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from . import __version__
from .data import load_dataset, random_shift, subset
from .registry import build_model


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights.

    The learning rate follows an exponential staircase:
        lr(step) = max(learning_rate * lr_decay ** (step // decay_every), min_learning_rate)
    where `decay_every` is `decay_every_steps` optimizer steps, or one epoch when it is None.
    max_shift: random translation of each training image by up to this many pixels (0: none).
    train_size: train on a seeded random subset of this many training images (None: all).
    """
    model: str
    data: str
    epochs: int
    batch_size: int
    learning_rate: float
    lr_decay: float = 1.0
    decay_every_steps: int | None = None
    min_learning_rate: float = 0.0
    max_shift: int = 2
    train_size: int | None = None
    seed: int = 0
    model_config: dict = field(default_factory=dict)

    def __post_init__(self):
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "learning_rate": self.learning_rate}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"Recipe.{name} must be positive, got {value!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"Recipe.lr_decay is the factor applied at each decay, expected a "
                             f"number in (0, 1] (1 = constant rate), got {self.lr_decay!r}")
        if self.decay_every_steps is not None and self.decay_every_steps < 1:
            raise ValueError(f"Recipe.decay_every_steps must be a positive number of "
                             f"optimizer steps, or None to decay once per epoch; "
                             f"got {self.decay_every_steps!r}")
        if self.max_shift < 0:
            raise ValueError(f"Recipe.max_shift is a number of pixels >= 0, got {self.max_shift!r}")
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"Recipe.train_size must be a positive number of images, or None for "
                             f"the whole training split; got {self.train_size!r}")
        try:
            json.dumps(self.model_config)
        except TypeError as error:
            raise ValueError(f"Recipe.model_config must hold plain values (numbers, strings, "
                             f"bools, lists, dicts) so it can be saved and hashed: "
                             f"{error}") from None

    def learning_rate_at(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of optimizer step `step` (counting from 0)."""
        decay_every = self.decay_every_steps or steps_per_epoch
        return max(self.learning_rate * self.lr_decay ** (step // decay_every),
                   self.min_learning_rate)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Recipe":
        return cls(**values)


RECIPES = {
    # Sabour et al.'s code: Adam 1e-3, x0.96 every 2,000 steps, batch 128, shifts of up to 2 px.
    # The paper gives no epoch count: 50 epochs is our choice.
    "capsnet-paper": Recipe(model="capsnet", data="mnist", epochs=50, batch_size=128,
                            learning_rate=1e-3, lr_decay=0.96, decay_every_steps=2000),
    # Mazzia et al.: Adam 5e-4, x0.97 per epoch down to 5e-5, batch 16, 150 epochs. Their
    # augmentation also rotates, squishes and erases; this recipe only shifts.
    "efficient-capsnet-paper": Recipe(model="efficient-capsnet", data="mnist", epochs=150,
                                      batch_size=16, learning_rate=5e-4, lr_decay=0.97,
                                      min_learning_rate=5e-5),
    # Sized for a laptop CPU on the bundled 4,000/1,000 MNIST sample (the CLI's defaults).
    "efficient-capsnet-cpu": Recipe(model="efficient-capsnet", data="mnist-sample", epochs=8,
                                    batch_size=32, learning_rate=2e-3, lr_decay=0.8,
                                    min_learning_rate=5e-5),
    # The shared CapsNet of chapters 04-06. Two epochs: the held-out accuracy of a third epoch
    # was no higher (95.7% after two, 95.2% after three); training takes about two minutes on
    # two CPU cores.
    "capsnet-cpu": Recipe(model="capsnet", data="mnist-sample", epochs=2, batch_size=32,
                          learning_rate=1e-3, lr_decay=0.8),
    "baseline-cnn-cpu": Recipe(model="baseline-cnn", data="mnist-sample", epochs=2,
                               batch_size=32, learning_rate=1e-3, lr_decay=0.8),
    "deep-capsnet-cpu": Recipe(model="deep-capsnet", data="mnist-sample", epochs=3,
                               batch_size=32, learning_rate=1e-3, lr_decay=0.8),
}


def cpu_recipe(model: str) -> Recipe:
    """The CPU-sized recipe of `model` (the command line's defaults)."""
    name = f"{model}-cpu"
    if name not in RECIPES:
        known = sorted(key.removesuffix("-cpu") for key in RECIPES if key.endswith("-cpu"))
        raise ValueError(f"No CPU recipe for model {model!r}; models with one: {known}")
    return RECIPES[name]


@dataclass
class History:
    """Per-epoch training record. Training loss and accuracy are measured on the augmented
    training batches as they went by; seconds and samples_per_second count the training steps
    only, not the held-out evaluation; learning_rate is the rate of the epoch's first step.
    val_loss and val_accuracy stay empty when fit was given no val_set."""
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    samples_per_second: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.loss)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "History":
        return cls(**values)


@dataclass
class EvalResult:
    """accuracy in [0, 1]; loss = the model's own training loss, averaged over images;
    predictions, labels: [N]; scores: [N, n_classes] (all on the CPU)."""
    accuracy: float
    loss: float
    predictions: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor

    @property
    def errors(self) -> int:
        return int((self.predictions != self.labels).sum())


def default_device() -> torch.device:
    """CUDA when a GPU is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2):
        raise ValueError("expected a TensorDataset(images [N, 1, 28, 28], labels [N]) as "
                         f"load_dataset returns, got {type(dataset).__name__}; wrap tensors with "
                         "torch.utils.data.TensorDataset(images, labels)")
    return dataset.tensors


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def fused_adam(model: nn.Module, learning_rate: float) -> torch.optim.Adam:
    """Adam for the model's parameters (already on their device), with PyTorch's fused kernel.

    Same update as the default Adam, computed in one pass over all parameters instead of several:
    a step over CapsNet's 8.2M parameters takes about 6 ms instead of 34 ms on 2 CPU cores.
    """
    return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True)


def fit(model: nn.Module, train_set: TensorDataset, recipe: Recipe,
        val_set: TensorDataset | None = None, device: torch.device | str | None = None,
        progress: bool = True) -> History:
    """Train `model` in place with Adam and the recipe's learning-rate schedule.

    Seeded from recipe.seed: the batch order and the shifts come from a private generator, and
    the global seed is set for anything else random inside the model (dropout). On the CPU two
    runs give identical weights. val_set, when given, is evaluated after every epoch.
    """
    images, labels = _tensors(train_set)
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = fused_adam(model, recipe.learning_rate)
    n = len(labels)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    history = History()
    step = 0
    for epoch in range(recipe.epochs):
        model.train()
        history.learning_rate.append(recipe.learning_rate_at(step, steps_per_epoch))
        order = torch.randperm(n, generator=generator)
        loss_sum, correct = 0.0, 0
        bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="img",
                   disable=not progress, leave=True)
        start = time.perf_counter()
        for batch in order.split(recipe.batch_size):
            batch_images = images[batch]                                   # [B, 1, 28, 28]
            if recipe.max_shift:
                batch_images = random_shift(batch_images, recipe.max_shift, generator=generator)
            batch_images, batch_labels = batch_images.to(device), labels[batch].to(device)
            for group in optimizer.param_groups:
                group["lr"] = recipe.learning_rate_at(step, steps_per_epoch)
            output = model(batch_images, batch_labels)
            loss = model.loss(output, batch_images, batch_labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(batch)
            correct += int((output.scores.argmax(1) == batch_labels).sum())
            bar.update(len(batch))
            bar.set_postfix(loss=f"{loss.item():.4f}")
        seconds = time.perf_counter() - start
        history.loss.append(loss_sum / n)
        history.accuracy.append(correct / n)
        history.seconds.append(seconds)
        history.samples_per_second.append(n / seconds)
        postfix = {"loss": f"{history.loss[-1]:.4f}", "acc": f"{history.accuracy[-1]:.4f}"}
        if val_set is not None:
            result = evaluate(model, val_set, device=device)
            history.val_loss.append(result.loss)
            history.val_accuracy.append(result.accuracy)
            postfix["val_acc"] = f"{history.val_accuracy[-1]:.4f}"
        bar.set_postfix(postfix)
        bar.close()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, dataset: TensorDataset, batch_size: int = 250,
             device: torch.device | str | None = None) -> EvalResult:
    """Accuracy and loss in eval mode (no labels given: decoders mask by the longest capsule).

    device=None runs where the model's parameters are; the model's train/eval mode is restored.
    """
    images, labels = _tensors(dataset)
    if device is not None:
        model.to(device)
    device = _model_device(model)
    was_training = model.training
    model.eval()
    all_scores, loss_sum = [], 0.0
    for batch_images, batch_labels in zip(images.split(batch_size), labels.split(batch_size)):
        batch_images, batch_labels = batch_images.to(device), batch_labels.to(device)
        output = model(batch_images)
        loss_sum += model.loss(output, batch_images, batch_labels).item() * len(batch_labels)
        all_scores.append(output.scores.cpu())                             # [b, n_classes]
    model.train(was_training)
    scores = torch.cat(all_scores)                                         # [N, n_classes]
    predictions = scores.argmax(1)
    return EvalResult(accuracy=(predictions == labels).float().mean().item(),
                      loss=loss_sum / len(labels), predictions=predictions, labels=labels,
                      scores=scores)


def _check_recipe(recipe) -> None:
    if not isinstance(recipe, Recipe):
        raise TypeError(f"expected a Recipe, got {type(recipe).__name__}; pick one with "
                        f"RECIPES[name] (names: {sorted(RECIPES)}) or build Recipe(...)")


def train(recipe: Recipe, progress: bool = True,
          device: torch.device | str | None = None) -> tuple[nn.Module, History]:
    """Build the recipe's model, train it on the train split, track test-split accuracy."""
    _check_recipe(recipe)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, **recipe.model_config)
    train_set = load_dataset(recipe.data, "train")
    if recipe.train_size is not None:
        if recipe.train_size > len(train_set):
            raise ValueError(f"Recipe.train_size={recipe.train_size} is larger than the training "
                             f"split ({len(train_set)} images); lower it or use None for all")
        train_set = subset(train_set, recipe.train_size, recipe.seed)  # class-balanced, seeded
    test_set = load_dataset(recipe.data, "test")
    history = fit(model, train_set, recipe, val_set=test_set, device=device, progress=progress)
    return model, history


def default_cache_dir() -> Path:
    """Where `pretrained` keeps checkpoints: $CAPSULE_LIB_CACHE, else ~/.cache/capsule_lib."""
    return Path(os.environ.get("CAPSULE_LIB_CACHE", Path.home() / ".cache" / "capsule_lib"))


def cache_path(recipe: Recipe, directory: str | Path | None = None) -> Path:
    """The cache file of a recipe, keyed by a hash of the recipe and the library version."""
    key = json.dumps({"recipe": recipe.to_dict(), "version": __version__}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    directory = Path(directory) if directory is not None else default_cache_dir()
    return directory / f"{recipe.model}-{digest}.pt"


def pretrained(recipe: Recipe, cache_dir: str | Path | None = None, progress: bool = True,
               device: torch.device | str | None = None) -> tuple[nn.Module, History]:
    """Train the recipe once and cache the checkpoint; later calls load it (in eval mode).

    A cache file that cannot be loaded is retrained and overwritten, with a warning.
    """
    from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # imports us
    _check_recipe(recipe)
    path = cache_path(recipe, cache_dir)
    device = torch.device(device) if device is not None else default_device()
    if path.exists():
        try:
            model, info = load_checkpoint(path, expected_model=recipe.model)
            if info.recipe != recipe:
                raise CheckpointError(f"{path} holds a different recipe than the one asked for")
            return model.to(device).eval(), info.history
        except CheckpointError as error:
            warnings.warn(f"Cached checkpoint unusable, retraining: {error}", stacklevel=2)
    model, history = train(recipe, progress=progress, device=device)
    save_checkpoint(path, model, recipe, history)
    return model.eval(), history
