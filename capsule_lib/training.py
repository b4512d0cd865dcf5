"""Training and evaluation: the training loop, evaluation, and trained models on demand.

`fit` runs the loop on a model you built; `train` builds model and data from a recipe
(recipes.py); `pretrained` trains a recipe once and loads its cached checkpoint afterwards
(the cache itself lives in checkpoint.py).
"""
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from .checkpoint import cache_path, cached_model, default_cache_dir
from .checks import (check_dataset, check_device, check_label_range, check_model,
                     check_whole_number)
from .data import (efficient_capsnet_augmentation, load_dataset, pad_to, random_shift,
                   shift_images, subset)
from .distributed import check_global_batches, process_group, shard, sum_over_processes, wrap
from .fast_paths import keep_freed_memory
from .precision import autocast, resolve_precision
from .recipes import RECIPES, History, Recipe, cpu_recipe
from .registry import build_model

__all__ = ["RECIPES", "History", "Recipe", "cpu_recipe", "EvalResult", "default_device",
           "model_device", "fused_adam", "fit", "evaluate", "recipe_split", "training_set", "train",
           "pretrained", "cache_path", "default_cache_dir"]


# A progress bar redraws at most once a second. In a notebook every redraw is a message from
# the kernel, and the kernel's output channel drops messages when too many wait to be read
# (ZeroMQ keeps 1,000 by default): a cell of chapter 07 that trains five models, redrawn at
# every batch, lost the message that ends the cell under nbval.
PROGRESS_SECONDS = 1.0


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


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _device(device) -> torch.device:
    """device as a torch.device (None: default_device()), checked by checks.check_device."""
    return default_device() if device is None else check_device(device)


def fused_adam(model: nn.Module, learning_rate: float) -> torch.optim.Adam:
    """Adam for the model's parameters (already on their device), with PyTorch's fused kernel.

    Same update as the default Adam, computed in one pass over all parameters instead of several:
    a step over CapsNet's 8.2M parameters takes about 6 ms instead of 34 ms on 2 CPU cores.
    """
    return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True)


def _check_recipe(recipe) -> None:
    if not isinstance(recipe, Recipe):
        raise TypeError(f"expected a Recipe, got {type(recipe).__name__}; pick one with "
                        f"RECIPES[name] (names: {sorted(RECIPES)}) or build Recipe(...)")


def augment(images: Tensor, recipe: Recipe, generator: torch.Generator) -> Tensor:
    """A training batch [B, 1, H, W] under the recipe's augmentation (see Recipe)."""
    if recipe.augmentation == "efficient-capsnet":
        return efficient_capsnet_augmentation(images, generator)
    if recipe.max_shift:
        return random_shift(images, recipe.max_shift, generator=generator)
    return images


def fit(model: nn.Module, train_set: TensorDataset, recipe: Recipe,
        validation_set: TensorDataset | None = None, device: torch.device | str | None = None,
        progress: bool = True, precision: str = "fp32", compile_model: bool = False) -> History:
    """Train `model` in place with Adam and the recipe's learning-rate schedule.

    Seeded from recipe.seed: the batch order and the shifts come from a private generator, and
    the global seed is set for anything else random inside the model (dropout). On the CPU two
    runs with the same number of threads give identical weights (another thread count splits
    the sums differently, and the runs drift apart). validation_set, when given, is evaluated
    after every epoch. Under torchrun (torch.distributed initialised) every process trains its
    shard of each global batch of recipe.batch_size (capsule_lib.distributed says how).
    The data are checked first (float pixels in [0, 1], labels in [0, 10)), so bad data fail
    before any training time is spent. precision "bf16" runs the forward pass and the loss under
    bf16 autocast where the device computes in bf16, and falls back to fp32 with a warning
    elsewhere (capsule_lib.precision); the weights stay fp32.
    The training digits are moved to the device once, before the first epoch (all of MNIST
    is 47 MB), so on a GPU each batch is picked and augmented there. compile_model=True trains
    through torch.compile(model) (the first steps then wait for the compiler; evaluation runs
    the model as it is). On a Linux CPU, fit asks the C library to keep freed memory for
    reuse (fast_paths.keep_freed_memory: about 10% faster CapsNet steps).
    """
    check_model(model, "fit")
    _check_recipe(recipe)
    images, labels = check_dataset(train_set, "fit (train_set)")
    if validation_set is not None:
        check_dataset(validation_set, "fit (validation_set)")
    rank, world_size = process_group()
    n = len(labels)
    if world_size > 1:
        check_global_batches(n, recipe.batch_size, world_size)
    device = _device(device)
    precision = resolve_precision(precision, device)
    if device.type == "cpu":
        keep_freed_memory()                          # fewer page faults (see fast_paths)
    model.to(device)
    images, labels = images.to(device), labels.to(device)               # [N, 1, H, W], [N]
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    network = wrap(model, device) if world_size > 1 else model
    if compile_model:
        network = torch.compile(network)
    optimizer = fused_adam(model, recipe.learning_rate)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    history = History()
    step = 0
    for epoch in range(recipe.epochs):
        model.train()
        history.learning_rate.append(recipe.learning_rate_at(step, steps_per_epoch))
        order = torch.randperm(n, generator=generator)
        loss_sum, correct = 0.0, 0
        bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="img",
                   disable=not progress or rank != 0, leave=True,
                   mininterval=PROGRESS_SECONDS)
        start = time.perf_counter()
        for batch in order.to(device).split(recipe.batch_size):
            batch_images = images[batch]                                   # [B, 1, 28, 28]
            # the whole global batch is augmented on every process (the generator's draws
            # stay the same everywhere), then each keeps its shard
            batch_images = augment(batch_images, recipe, generator)
            batch_labels = labels[batch]
            if world_size > 1:
                batch_images = shard(batch_images, rank, world_size)      # [B / world, ...]
                batch_labels = shard(batch_labels, rank, world_size)
            for group in optimizer.param_groups:
                group["lr"] = recipe.learning_rate_at(step, steps_per_epoch)
            with autocast(precision, device):
                output = network(batch_images, batch_labels)
                loss = model.loss(output, batch_images, batch_labels)      # mean over the shard
            optimizer.zero_grad()
            # DDP averages the processes' gradients: weighting each shard's mean by its share
            # of the global batch makes that average the global batch's mean gradient
            (loss * (len(batch_labels) * world_size / len(batch))).backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(batch_labels)
            correct += int((output.scores.argmax(1) == batch_labels).sum())
            bar.update(len(batch))
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)   # shown at the next draw
        seconds = time.perf_counter() - start
        loss_sum, correct = sum_over_processes(loss_sum, correct)
        history.loss.append(loss_sum / n)
        history.accuracy.append(correct / n)
        history.seconds.append(seconds)
        history.samples_per_second.append(n / seconds)
        postfix = {"loss": f"{history.loss[-1]:.4f}", "acc": f"{history.accuracy[-1]:.4f}"}
        if validation_set is not None:
            result = evaluate(model, validation_set, device=device)
            history.validation_loss.append(result.loss)
            history.validation_accuracy.append(result.accuracy)
            postfix["validation_acc"] = f"{history.validation_accuracy[-1]:.4f}"
        bar.set_postfix(postfix)
        bar.close()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, dataset: TensorDataset, batch_size: int = 250,
             device: torch.device | str | None = None) -> EvalResult:
    """Accuracy and loss in eval mode (no labels given: decoders mask by the longest capsule).

    device=None runs where the model's parameters are; the model's train/eval mode is restored.
    """
    check_model(model, "evaluate")
    images, labels = check_dataset(dataset, "evaluate")
    batch_size = check_whole_number(batch_size, "evaluate: batch_size")
    if device is not None:
        model.to(_device(device))
    device = model_device(model)
    was_training = model.training
    model.eval()
    all_scores, loss_sum = [], 0.0
    try:
        for batch_images, batch_labels in zip(images.split(batch_size), labels.split(batch_size)):
            batch_images, batch_labels = batch_images.to(device), batch_labels.to(device)
            output = model(batch_images)
            check_label_range(batch_labels, output.scores.shape[1], "evaluate")
            loss_sum += model.loss(output, batch_images, batch_labels).item() * len(batch_labels)
            all_scores.append(output.scores.float().cpu())                 # [b, n_classes]
    finally:
        model.train(was_training)
    scores = torch.cat(all_scores)                                         # [N, n_classes]
    predictions = scores.argmax(1)
    return EvalResult(accuracy=(predictions == labels).float().mean().item(),
                      loss=loss_sum / len(labels), predictions=predictions, labels=labels,
                      scores=scores)


def shifted_copy(images: Tensor, dy: int, dx: int) -> Tensor:
    """images [N, C, H, W] all moved by dy pixels down and dx right (negative: up, left),
    zero fill, in the standard memory layout (so the unshifted copy gives bit for bit what the
    images themselves give)."""
    dy, dx = (check_whole_number(value, f"shifted_copy: {name} (pixels)", minimum=-10**9)
              for value, name in ((dy, "dy"), (dx, "dx")))
    moved = shift_images(images, torch.tensor([[dy, dx]]).expand(len(images), 2))
    return moved.clone(memory_format=torch.contiguous_format)


def evaluate_over_shifts(model: nn.Module, dataset: TensorDataset, max_shift: int = 1,
                         batch_size: int = 250,
                         device: torch.device | str | None = None) -> EvalResult:
    """Test-time augmentation: `evaluate` on each of the (2 max_shift + 1)^2 copies of the
    dataset moved by whole pixels (dy down, dx right, each in [-max_shift, max_shift], zero
    fill), with each digit's class scores averaged over the copies; predictions and accuracy
    come from the averaged scores, the loss is the mean of the copies' losses. max_shift=0 is
    `evaluate`.
    """
    images, labels = check_dataset(dataset, "evaluate_over_shifts")
    max_shift = check_whole_number(max_shift, "evaluate_over_shifts: max_shift (pixels)",
                                   minimum=0)
    if max_shift >= min(images.shape[-2:]):
        raise ValueError(f"evaluate_over_shifts: max_shift={max_shift} moves some copies of "
                         f"the {tuple(images.shape[-2:])} images wholly out of the frame; "
                         f"use a shift of a few pixels (1 or 2)")
    steps = range(-max_shift, max_shift + 1)
    copies = [evaluate(model, TensorDataset(shifted_copy(images, dy, dx), labels), batch_size,
                       device)
              for dy in steps for dx in steps]
    scores = torch.stack([copy.scores for copy in copies]).mean(0)         # [N, n_classes]
    predictions = scores.argmax(1)
    return EvalResult(accuracy=(predictions == labels).float().mean().item(),
                      loss=sum(copy.loss for copy in copies) / len(copies),
                      predictions=predictions, labels=labels, scores=scores)


def recipe_split(recipe: Recipe, split: str) -> TensorDataset:
    """A split of the recipe's data, centred on a larger canvas (data.pad_to) when the recipe's
    model takes larger images (model_config image_size, e.g. CapsNet(image_size=36))."""
    images, labels = load_dataset(recipe.data, split).tensors             # [N, 1, 28, 28]
    size = recipe.model_config.get("image_size", images.shape[-1])
    if size != images.shape[-1]:
        images = pad_to(images, size)                                      # [N, 1, S, S]
    return TensorDataset(images, labels)


def training_set(recipe: Recipe) -> TensorDataset:
    """The digits a recipe trains on: its data's train split, or a seeded class-balanced subset
    of recipe.train_size of them."""
    _check_recipe(recipe)
    digits = recipe_split(recipe, "train")
    if recipe.train_size is None:
        return digits
    if recipe.train_size > len(digits):
        raise ValueError(f"Recipe.train_size={recipe.train_size} is larger than the training "
                         f"split ({len(digits)} images); lower it or use None for all")
    return subset(digits, recipe.train_size, recipe.seed)


def train(recipe: Recipe, progress: bool = True, device: torch.device | str | None = None,
          precision: str = "fp32", compile_model: bool = False) -> tuple[nn.Module, History]:
    """Build the recipe's model, train it on the train split, and track its accuracy on the
    validation split after every epoch (the test split is left for reporting). precision and
    compile_model: see fit."""
    _check_recipe(recipe)
    device = _device(device)
    train_set = training_set(recipe)
    validation_set = recipe_split(recipe, "validation")
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, **recipe.model_config)
    history = fit(model, train_set, recipe, validation_set=validation_set, device=device,
                  progress=progress, precision=precision, compile_model=compile_model)
    return model, history


def pretrained(recipe: Recipe, cache_dir=None, progress: bool = True,
               device: torch.device | str | None = None) -> tuple[nn.Module, History]:
    """Train the recipe once and cache the checkpoint; later calls load it (in eval mode).

    A cache file that cannot be loaded is retrained and overwritten, with a warning.
    """
    _check_recipe(recipe)
    device = _device(device)
    return cached_model(recipe, lambda: train(recipe, progress=progress, device=device),
                        cache_dir, device)
