"""Two overlapping digits for CapsNet (Sabour et al. 2017, section 6, MultiMNIST).

The paper trains CapsNet on images of two overlapping digits of different classes. The margin
loss then has a target of 1 for both classes present (a two-hot T_k), and the decoder
reconstructs each digit separately from its own capsule, with that digit's own image as the
target. An image counts as classified right when both labels are among the two longest
capsules. This module holds what that needs on top of capsule_lib:

    make_pairs_with_layers   overlapping pairs that also keep each digit's own layer
    two_hot_margin_loss      the margin loss with several classes present
    two_digit_accuracy       both labels among the two longest capsules
    reconstruct_each_digit   decode one capsule per digit
    finetune_on_pairs        fine-tune a single-digit CapsNet on pairs
    pretrained_pair_model    the same, done once and cached like training.pretrained

The paper trains from scratch on 36x36 MultiMNIST; CapsNet here takes 28x28 images, so the pairs
are those of data.make_overlapping_pairs (28x28 canvas, shifts of up to 2 pixels).
"""
import copy
import dataclasses
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from . import __version__
from .data import load_dataset, pad_to, shift_images, subset
from .losses import reconstruction_loss
from .registry import build_model
from .training import Recipe, default_cache_dir, default_device, fused_adam, pretrained


@dataclass
class DigitPairs:
    """images [n, 1, S, S]: the two digits overlaid (pixel-wise maximum, clipped to [0, 1]);
    layers [n, 2, 1, S, S]: each digit alone, exactly where it sits in the overlay;
    labels int64 [n, 2]: the classes of the two digits (always different)."""
    images: Tensor
    layers: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index) -> "DigitPairs":
        return DigitPairs(self.images[index], self.layers[index], self.labels[index])


def make_pairs_with_layers(images: Tensor, labels: Tensor, n: int, max_shift: int = 2,
                           canvas: int = 28, seed: int = 0) -> DigitPairs:
    """n pairs of overlapping digits of different classes, with both digit layers kept.

    The random draws are those of data.make_overlapping_pairs, in the same order, so for the
    same arguments `.images` and `.labels` equal what make_overlapping_pairs returns: a random
    first digit, a random digit of another class, each centred on the canvas and shifted by
    integers in [-max_shift, max_shift] in x and y, overlaid by the pixel-wise maximum.
    images [N, 1, H, W] in [0, 1], labels [N].
    """
    if not (isinstance(images, Tensor) and images.dim() == 4 and images.shape[1] == 1):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"make_pairs_with_layers expects images [N, 1, H, W], got {shape}")
    labels = torch.as_tensor(labels).long()
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if n < 1:
        raise ValueError(f"n must be a positive number of pairs, got {n}")
    classes = labels.unique()
    if len(classes) < 2:
        raise ValueError("make_pairs_with_layers needs digits of at least two classes")
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(len(labels), (n,), generator=generator)          # [n] digit indices
    first_class = torch.searchsorted(classes, labels[first])               # [n] class positions
    offset = torch.randint(1, len(classes), (n,), generator=generator)
    second_class = (first_class + offset) % len(classes)                   # never the same class
    by_class = torch.argsort(labels, stable=True)
    counts = torch.bincount(torch.searchsorted(classes, labels), minlength=len(classes))
    starts = torch.cumsum(counts, 0) - counts
    pick = (torch.rand(n, generator=generator) * counts[second_class]).long()
    second = by_class[starts[second_class] + pick]                         # [n] digit indices
    layers = []
    for chosen in (first, second):
        digits = pad_to(images[chosen].float(), canvas)                    # [n, 1, S, S]
        shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
        layers.append(shift_images(digits, shifts).clamp(0, 1))
    combined = torch.maximum(layers[0], layers[1])                         # [n, 1, S, S]
    return DigitPairs(combined, torch.stack(layers, 1),                    # [n, 2, 1, S, S]
                      torch.stack([labels[first], labels[second]], 1))     # [n, 2]


def two_hot(labels: Tensor, n_classes: int = 10) -> Tensor:
    """[B, 2] class pairs -> [B, n_classes] float targets T_k, 1 for both classes present."""
    if labels.dim() != 2:
        raise ValueError(f"labels must be [batch, digits per image], got {tuple(labels.shape)}")
    return F.one_hot(labels, n_classes).amax(dim=1).to(torch.float32)


def two_hot_margin_loss(lengths: Tensor, labels: Tensor, m_plus: float = 0.9,
                        m_minus: float = 0.1, down_weight: float = 0.5) -> Tensor:
    """Sabour et al.'s margin loss (eq. 4) with T_k = 1 for every class in the image.

    L_k = T_k max(0, m+ - ||v_k||)^2 + lambda (1 - T_k) max(0, ||v_k|| - m-)^2, summed over k,
    averaged over the batch. lengths [B, K]; labels [B, 2] (or [B, n] for n digits per image).
    With one digit per image it equals losses.margin_loss.
    """
    if lengths.dim() != 2 or labels.dim() != 2 or labels.shape[0] != lengths.shape[0]:
        raise ValueError(f"two_hot_margin_loss expects lengths [batch, n_classes] and labels "
                         f"[batch, digits per image], got {tuple(lengths.shape)} and "
                         f"{tuple(labels.shape)}")
    present = two_hot(labels, lengths.shape[1]).to(lengths.dtype)          # T_k [B, K]
    loss = (present * F.relu(m_plus - lengths) ** 2
            + down_weight * (1 - present) * F.relu(lengths - m_minus) ** 2)
    return loss.sum(dim=1).mean()


def two_digit_accuracy(scores: Tensor, labels: Tensor) -> float:
    """Fraction of images whose two labels are both among the two longest capsules.

    scores [B, K] capsule lengths, labels [B, 2]."""
    if scores.dim() != 2 or labels.shape != (scores.shape[0], 2):
        raise ValueError(f"expected scores [batch, n_classes] and labels [batch, 2], got "
                         f"{tuple(scores.shape)} and {tuple(labels.shape)}")
    top_two = scores.topk(2, dim=1).indices                                # [B, 2]
    found = (top_two[:, :, None] == labels[:, None, :].to(top_two.device)).any(dim=1)  # [B, 2]
    return found.all(dim=1).float().mean().item()


def reconstruct_each_digit(model: nn.Module, poses: Tensor, labels: Tensor) -> Tensor:
    """Decode the capsule of each label separately: poses [B, 10, 16], labels [B, 2] ->
    reconstructions [B, 2, 1, 28, 28] (digit k drawn from capsule labels[:, k] alone)."""
    if getattr(model, "decoder", None) is None:
        raise ValueError(f"{type(model).__name__} has no decoder to reconstruct digits with")
    return torch.stack([model.decoder(poses, labels[:, k]) for k in range(labels.shape[1])], 1)


def pair_loss(model: nn.Module, poses: Tensor, scores: Tensor, pairs: DigitPairs) -> Tensor:
    """Two-hot margin loss + 0.0005 x the squared error of each digit's reconstruction against
    that digit's own layer, summed over pixels and both digits, averaged over the batch."""
    reconstructions = reconstruct_each_digit(model, poses, pairs.labels)   # [B, 2, 1, 28, 28]
    return (two_hot_margin_loss(scores, pairs.labels)
            + sum(reconstruction_loss(reconstructions[:, k], pairs.layers[:, k])
                  for k in range(pairs.labels.shape[1])))


@dataclass(frozen=True)
class PairRecipe:
    """Fine-tuning of the single-digit model of `base` on overlapping pairs.

    steps Adam steps at a constant learning_rate, each on batch_size fresh pairs made from the
    base recipe's training digits (so steps x batch_size pairs in all, each seen once), with
    shifts of up to max_shift pixels per digit on a 28x28 canvas. Seeded by seed.
    """
    base: Recipe
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 5e-4
    max_shift: int = 2
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.base, Recipe):
            raise TypeError(f"PairRecipe.base must be a training.Recipe, got "
                            f"{type(self.base).__name__}")
        for name in ("steps", "batch_size", "learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PairRecipe.{name} must be positive, got "
                                 f"{getattr(self, name)!r}")
        if self.max_shift < 0:
            raise ValueError(f"PairRecipe.max_shift is a number of pixels >= 0, got "
                             f"{self.max_shift!r}")

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["base"] = self.base.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "PairRecipe":
        return cls(**{**values, "base": Recipe.from_dict(values["base"])})


@dataclass
class PairHistory:
    """Per step: the training loss and the two-digit accuracy on that step's batch;
    seconds: the wall time of the fine-tuning."""
    loss: list[float] = field(default_factory=list)
    two_digit_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def training_digits(recipe: Recipe) -> TensorDataset:
    """The single digits a recipe trains on (its train split, or its seeded subset)."""
    digits = load_dataset(recipe.data, "train")
    return digits if recipe.train_size is None else subset(digits, recipe.train_size, recipe.seed)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def finetune_on_pairs(model: nn.Module, digits: TensorDataset, recipe: PairRecipe,
                      progress: bool = True) -> PairHistory:
    """Train `model` (a CapsNet with decoder) in place on pairs made from `digits`, with
    pair_loss, on the device its parameters are on."""
    images, labels = digits.tensors
    pairs = make_pairs_with_layers(images, labels, recipe.steps * recipe.batch_size,
                                   recipe.max_shift, canvas=28, seed=recipe.seed)
    device = _device_of(model)
    torch.manual_seed(recipe.seed)
    optimizer = fused_adam(model, recipe.learning_rate)
    history = PairHistory()
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(recipe.steps), desc="fine-tuning on pairs", unit="step", disable=not progress)
    for step in bar:
        batch = pairs[step * recipe.batch_size:(step + 1) * recipe.batch_size]
        batch = DigitPairs(batch.images.to(device), batch.layers.to(device),
                           batch.labels.to(device))
        output = model(batch.images)                                       # poses [B, 10, 16]
        loss = pair_loss(model, output.poses, output.scores, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.loss.append(loss.item())
        history.two_digit_accuracy.append(two_digit_accuracy(output.scores.detach(), batch.labels))
        bar.set_postfix(loss=f"{loss.item():.4f}")
    history.seconds = time.perf_counter() - start
    model.eval()
    return history


@dataclass
class PairEvaluation:
    """two_digit_accuracy in [0, 1]; scores [n, 10]; reconstructions [n, 2, 1, 28, 28], each
    digit decoded from the capsule of its true label (all on the CPU)."""
    two_digit_accuracy: float
    scores: Tensor
    reconstructions: Tensor


@torch.no_grad()
def evaluate_pairs(model: nn.Module, pairs: DigitPairs, batch_size: int = 250) -> PairEvaluation:
    """Scores and per-digit reconstructions of `model` on pairs, in eval mode."""
    device = _device_of(model)
    was_training = model.training
    model.eval()
    all_scores, all_reconstructions = [], []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        output = model(batch.images.to(device))
        all_scores.append(output.scores.cpu())                             # [b, 10]
        all_reconstructions.append(reconstruct_each_digit(
            model, output.poses, batch.labels.to(device)).cpu())           # [b, 2, 1, 28, 28]
    model.train(was_training)
    scores = torch.cat(all_scores)
    return PairEvaluation(two_digit_accuracy(scores, pairs.labels), scores,
                          torch.cat(all_reconstructions))


def pair_cache_path(recipe: PairRecipe, directory: str | Path | None = None) -> Path:
    """The cache file of a pair recipe, keyed by a hash of it and the library version."""
    key = json.dumps({"pair_recipe": recipe.to_dict(), "version": __version__}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    directory = Path(directory) if directory is not None else default_cache_dir()
    return directory / f"{recipe.base.model}-pairs-{digest}.pt"


def _load_pair_model(path: Path, recipe: PairRecipe) -> tuple[nn.Module, PairHistory]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("pair_recipe") != recipe.to_dict() or payload.get("version") != __version__:
        raise ValueError(f"{path} holds another pair recipe or library version")
    model = build_model(recipe.base.model, **recipe.base.model_config)
    model.load_state_dict(payload["state_dict"])
    return model, PairHistory(**payload["history"])


def pretrained_pair_model(recipe: PairRecipe, cache_dir: str | Path | None = None,
                          progress: bool = True, device: torch.device | str | None = None
                          ) -> tuple[nn.Module, PairHistory]:
    """Fine-tune `recipe.base`'s model (training.pretrained) on pairs once, cache the result
    next to it, and load it on later calls. Returns (model in eval mode, history).

    A cache file that cannot be used is refitted and overwritten, with a warning.
    """
    if not isinstance(recipe, PairRecipe):
        raise TypeError(f"expected a PairRecipe, got {type(recipe).__name__}")
    device = torch.device(device) if device is not None else default_device()
    path = pair_cache_path(recipe, cache_dir)
    if path.exists():
        try:
            model, history = _load_pair_model(path, recipe)
            return model.to(device).eval(), history
        except Exception as error:  # any unreadable or mismatched file is refitted
            warnings.warn(f"Cached pair model unusable, fine-tuning again: {error}", stacklevel=2)
    base_model, _ = pretrained(recipe.base, cache_dir, progress=progress, device=device)
    model = copy.deepcopy(base_model)              # the caller's copy of the base stays as it is
    history = finetune_on_pairs(model, training_digits(recipe.base), recipe, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save({"pair_recipe": recipe.to_dict(), "version": __version__,
                "state_dict": {key: value.detach().cpu()
                               for key, value in model.state_dict().items()},
                "history": dataclasses.asdict(history)}, partial)
    os.replace(partial, path)
    return model.eval(), history
