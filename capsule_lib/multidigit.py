"""Two overlapping digits for CapsNet (Sabour et al. 2017, section 6, MultiMNIST).

The paper trains CapsNet on images of two overlapping digits of different classes. The margin
loss then has a target of 1 for both classes present (losses.margin_loss with labels [B, 2]),
and the decoder reconstructs each digit separately from its own capsule, with that digit's own
image as the target. An image counts as classified right when both labels are among the two
longest capsules. This module holds what that needs on top of capsule_lib:

    two_digit_accuracy       both labels among the two longest capsules (highest scores)
    reconstruct_each_digit   decode one capsule per digit
    pair_loss                the two-hot margin loss plus both digits' reconstruction errors
    two_hot_logit_loss       the CNN's pair loss: binary cross-entropy on two-hot targets
    predicted_masks          the capsules the decoder is given when the labels are not known
    finetune_on_pairs        fine-tune a single-digit CapsNet (or CNN) on pairs
    evaluate_pairs           scores and per-digit reconstructions on pairs
    pretrained_pair_model    fine-tune once, cached like training.pretrained

A model without capsules (baseline_cnn.PoolingCNN, whose scores are logits) has no decoder: it
is fine-tuned with two_hot_logit_loss, the usual multi-label loss, and scored with the same
two_digit_accuracy, so that CapsNet and a CNN can be compared on the same pairs.

The pairs themselves come from data.make_pairs_with_layers; the recipe is recipes.PairRecipe.
The paper trains from scratch on 36x36 MultiMNIST; the book's CPU settings fine-tune the 28x28
single-digit CapsNet on pairs made on a 28x28 canvas with shifts of up to 2 pixels
(PairRecipe.canvas = 36 with a CapsNet(image_size=36) base gives the paper's canvas).
"""
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from .checkpoint import cached_model
from .checks import (check_label_range, check_labels, check_model, check_not_empty, check_tensor,
                     check_tensor_dataset, check_whole_number)
from .data import DigitPairs, make_pairs_with_layers, stream_pairs
from .layers import CapsuleClassifier
from .losses import class_targets, margin_loss, reconstruction_loss
from .recipes import PairHistory, PairRecipe
from .training import (PROGRESS_SECONDS, _device, fused_adam, model_device, pretrained,
                       training_set)

__all__ = ["DigitPairs", "PairRecipe", "PairHistory", "make_pairs_with_layers",
           "two_digit_accuracy", "reconstruct_each_digit", "pair_loss",
           "two_hot_logit_loss", "predicted_masks", "finetune_on_pairs", "PairEvaluation",
           "evaluate_pairs", "pretrained_pair_model"]

def two_digit_accuracy(scores: Tensor, labels: Tensor) -> float:
    """Fraction of images whose two labels are both among the two longest capsules.

    scores [B, K] capsule lengths, labels [B, 2] in [0, K)."""
    check_tensor(scores, "scores [batch, n_classes]", "two_digit_accuracy")
    check_tensor(labels, "labels [batch, 2]", "two_digit_accuracy")
    if scores.dim() != 2 or labels.shape != (scores.shape[0], 2):
        raise ValueError(f"expected scores [batch, n_classes] and labels [batch, 2], got "
                         f"{tuple(scores.shape)} and {tuple(labels.shape)}")
    check_not_empty(scores.shape[0], "two_digit_accuracy")
    check_label_range(labels, scores.shape[1], "two_digit_accuracy")
    top_two = scores.topk(2, dim=1).indices                                # [B, 2]
    found = (top_two[:, :, None] == labels[:, None, :].to(top_two.device)).any(dim=1)  # [B, 2]
    return found.all(dim=1).float().mean().item()


def _check_pairs(pairs, owner: str) -> None:
    if not isinstance(pairs, DigitPairs):
        raise TypeError(f"{owner} expects DigitPairs (images, layers, labels) as "
                        f"make_pairs_with_layers returns, got {type(pairs).__name__}")


def _check_decoder(model: nn.Module) -> None:
    if getattr(model, "decoder", None) is None:
        raise ValueError(f"{type(model).__name__} has no decoder to reconstruct digits with: "
                         f"build it with with_decoder=True (CapsNet, EfficientCapsNet)")


def reconstruct_each_digit(model: nn.Module, poses: Tensor, labels: Tensor) -> Tensor:
    """Decode the capsule of each label separately: poses [B, 10, 16], labels [B, 2] ->
    reconstructions [B, 2, 1, 28, 28] (digit k drawn from capsule labels[:, k] alone)."""
    _check_decoder(model)
    check_labels(labels, len(poses), "reconstruct_each_digit", digits_per_image=True)
    return torch.stack([model.decoder(poses, labels[:, k]) for k in range(labels.shape[1])], 1)


def pair_loss(model: nn.Module, poses: Tensor, scores: Tensor, pairs: DigitPairs) -> Tensor:
    """Two-hot margin loss + 0.0005 x the squared error of each digit's reconstruction against
    that digit's own layer, summed over pixels and both digits, averaged over the batch."""
    _check_pairs(pairs, "pair_loss")
    reconstructions = reconstruct_each_digit(model, poses, pairs.labels)   # [B, 2, 1, 28, 28]
    return (margin_loss(scores, pairs.labels)
            + sum(reconstruction_loss(reconstructions[:, k], pairs.layers[:, k])
                  for k in range(pairs.labels.shape[1])))


def two_hot_logit_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy of sigmoid(logits) [B, K] against two-hot targets (1 for both
    classes of labels [B, 2], 0 elsewhere), summed over classes, averaged over the batch: the
    multi-label loss of a CNN that has to name two digits."""
    check_tensor(logits, "logits [batch, n_classes]", "two_hot_logit_loss")
    check_labels(labels, len(logits), "two_hot_logit_loss", digits_per_image=True)
    targets = class_targets(labels, logits.shape[1]).to(logits.dtype)    # [B, K]
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(logits)


def predicted_masks(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The two capsules the decoder gets without labels: the two longest, put in the slots of
    the true digits they name.

    scores [B, K], labels [B, 2] -> (masks [B, 2], found [B, 2] bool). found[:, k]: label k is
    among the two longest capsules; then masks[:, k] = labels[:, k]. A slot whose label was
    missed gets the predicted capsule that names neither digit."""
    check_tensor(scores, "scores [batch, n_classes]", "predicted_masks")
    check_labels(labels, len(scores), "predicted_masks", digits_per_image=True)
    if labels.shape[1] != 2:
        raise ValueError(f"predicted_masks expects two labels per image, got {labels.shape[1]}")
    top_two = scores.topk(2, dim=1).indices                                # [B, 2]
    labels = labels.to(top_two.device)
    found = (labels[:, :, None] == top_two[:, None, :]).any(dim=2)         # [B, 2]
    # the top-two entries that name neither label, in order of length
    spare = ~(top_two[:, :, None] == labels[:, None, :]).any(dim=2)        # [B, 2]
    spare_order = torch.argsort((~spare).to(torch.int8), dim=1, stable=True)
    spares = top_two.gather(1, spare_order)                                # spares first
    fill = torch.cumsum((~found).long(), dim=1) - 1                        # n-th missed slot
    masks = torch.where(found, labels, spares.gather(1, fill.clamp(min=0)))
    return masks, found


def finetune_on_pairs(model: nn.Module, digits: TensorDataset, recipe: PairRecipe,
                      progress: bool = True,
                      after_step: Callable[[int, nn.Module], None] | None = None
                      ) -> PairHistory:
    """Train `model` in place on pairs made from `digits`, on the device its parameters are
    on: a capsule model (with decoder) with pair_loss, any other model (a CNN: scores are
    logits) with two_hot_logit_loss.

    after_step(step, model), if given, is called after every optimizer step (step = 1, 2, ...);
    the learning rate is constant and the pairs are a seeded stream, so the model after step k
    of a longer run is the model of the same recipe with steps=k (how
    benchmarks/pair_finetune_length.py scores every length in one run). It must leave the
    model as it found it (evaluate_pairs does)."""
    if not isinstance(recipe, PairRecipe):
        raise TypeError(f"expected a PairRecipe, got {type(recipe).__name__}")
    check_model(model, "finetune_on_pairs")
    capsules = isinstance(model, CapsuleClassifier)
    if capsules:
        _check_decoder(model)
    images, labels = check_tensor_dataset(digits, "finetune_on_pairs (digits)")
    model_shape = tuple(getattr(model, "image_shape", (1, 28, 28)))
    if model_shape[1:] != (recipe.canvas, recipe.canvas):
        raise ValueError(f"the recipe makes pairs on a {recipe.canvas}x{recipe.canvas} canvas but "
                         f"{type(model).__name__} takes images of shape {model_shape}: build "
                         f"the model with image_size={recipe.canvas} or set PairRecipe.canvas="
                         f"{model_shape[-1]}")
    batches = stream_pairs(images, labels, recipe.batch_size, recipe.steps, recipe.max_shift,
                           recipe.canvas, recipe.seed)      # one batch of pairs at a time
    device = model_device(model)
    torch.manual_seed(recipe.seed)
    optimizer = fused_adam(model, recipe.learning_rate)
    history = PairHistory()
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=recipe.steps, desc="fine-tuning on pairs", unit="step",
               disable=not progress, mininterval=PROGRESS_SECONDS)
    for step, batch in enumerate(batches, start=1):
        bar.update()
        batch = DigitPairs(batch.images.to(device), batch.layers.to(device),
                           batch.labels.to(device))
        output = model(batch.images)                                       # poses [B, 10, 16]
        loss = (pair_loss(model, output.poses, output.scores, batch) if capsules
                else two_hot_logit_loss(output.scores, batch.labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.loss.append(loss.item())
        history.two_digit_accuracy.append(two_digit_accuracy(output.scores.detach(), batch.labels))
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if after_step is not None:
            after_step(step, model)
    bar.close()
    history.seconds = time.perf_counter() - start
    model.eval()
    return history


@dataclass
class PairEvaluation:
    """two_digit_accuracy in [0, 1]; scores [n, 10]; reconstructions [n, 2, 1, S, S], each
    digit decoded from the capsule of its true label; predicted_reconstructions: the same from
    predicted_masks (the two longest capsules), found [n, 2]: which labels those name; poses
    [n, 10, 16] (all on the CPU). Reconstructions and poses are None for a model without a
    decoder or capsules (the CNN)."""
    two_digit_accuracy: float
    scores: Tensor
    reconstructions: Tensor | None
    predicted_reconstructions: Tensor | None = None
    found: Tensor | None = None
    poses: Tensor | None = None

    @property
    def correct(self) -> Tensor:
        """[n] bool: both labels among the two highest scores (two_digit_accuracy per pair)."""
        return self.found.all(dim=1)


@torch.no_grad()
def evaluate_pairs(model: nn.Module, pairs: DigitPairs, batch_size: int = 250) -> PairEvaluation:
    """Scores and per-digit reconstructions of `model` on pairs, in eval mode (no
    reconstructions for a model without a decoder, such as the CNN)."""
    _check_pairs(pairs, "evaluate_pairs")
    batch_size = check_whole_number(batch_size, "evaluate_pairs: batch_size")
    if len(pairs) == 0:
        raise ValueError("evaluate_pairs got no pairs")
    device = model_device(model)
    was_training = model.training
    model.eval()
    decodes = getattr(model, "decoder", None) is not None
    all_scores, all_poses, by_label, by_prediction = [], [], [], []
    try:
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start:start + batch_size]
            output = model(batch.images.to(device))
            all_scores.append(output.scores.float().cpu())                 # [b, 10]
            if output.poses is not None:
                all_poses.append(output.poses.float().cpu())               # [b, 10, 16]
            if decodes:
                labels = batch.labels.to(device)
                masks, _ = predicted_masks(output.scores, labels)
                by_label.append(reconstruct_each_digit(
                    model, output.poses, labels).cpu())                    # [b, 2, 1, S, S]
                by_prediction.append(reconstruct_each_digit(model, output.poses, masks).cpu())
    finally:
        model.train(was_training)
    scores = torch.cat(all_scores)
    _, found = predicted_masks(scores, pairs.labels)
    return PairEvaluation(two_digit_accuracy(scores, pairs.labels), scores,
                          torch.cat(by_label) if decodes else None,
                          torch.cat(by_prediction) if decodes else None, found,
                          torch.cat(all_poses) if all_poses else None)


def pretrained_pair_model(recipe: PairRecipe, cache_dir=None, progress: bool = True,
                          device: torch.device | str | None = None
                          ) -> tuple[nn.Module, PairHistory]:
    """Fine-tune `recipe.base`'s model (training.pretrained) on pairs once, cache the result
    next to it, and load it on later calls. Returns (model in eval mode, history). The base may
    be a CapsNet recipe or a CNN's (RECIPES["pooling-cnn-cpu"]): see finetune_on_pairs.

    A cache file that cannot be used is fine-tuned again and overwritten, with a warning.
    """
    if not isinstance(recipe, PairRecipe):
        raise TypeError(f"expected a PairRecipe, got {type(recipe).__name__}")
    device = _device(device)

    def finetune() -> tuple[nn.Module, PairHistory]:
        base_model, _ = pretrained(recipe.base, cache_dir, progress=progress, device=device)
        model = copy.deepcopy(base_model)          # the caller's copy of the base stays as it is
        return model, finetune_on_pairs(model, training_set(recipe.base), recipe, progress)

    return cached_model(recipe, finetune, cache_dir, device)
