"""Capsule statistics for the critique chapters.

The critiques of capsule networks (Mitterreiter et al. 2023, "Why Capsule Neural Networks Do
Not Scale"; Everett et al. 2023, "Vanishing Activations") say that many capsules starve during
training, that routing is close to static, and that gradients vanish in deep capsule stacks.
This file measures those things on our own models. Every threshold below is this book's own
choice, documented where it is defined; none of them is taken from those papers.

Shapes:  lengths [N, n_caps]       one layer's capsule lengths ||v|| over N examples
         couplings [..., n_in, n_out]   coupling coefficients, summing to 1 over n_out

Starvation (top_coupling_counts, starved_parent_fraction): a parent capsule that receives the
largest coupling of no child on any held-out example is "starved"; the measure is ours.
"""
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .checks import (check_device, check_model, check_not_empty, check_tensor,
                     check_whole_number)

# A capsule counts as active on an example when its length exceeds this. 0.1 is the margin
# loss's m- (Sabour et al. 2017): the length below which the loss treats a class capsule as
# "absent". A low threshold makes "dead" (never active) a conservative verdict: a capsule is
# only called dead if it never even reaches the loss's own notion of "not quite off".
ACTIVE_THRESHOLD = 0.1

# How far a row of couplings may sum from 1 and still count as a distribution. Rounding alone
# moved the sums of softmaxes over 10 outputs (64 x 1152 rows, logits scaled by 0.1 to 100) by
# at most 2.5e-7 in float32, 3.9e-4 in float16 and 3.0e-3 in bfloat16; the tolerances leave
# a margin of about 400, 25 and 7 times that.
COUPLING_SUM_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 2e-2}
DEFAULT_COUPLING_SUM_TOLERANCE = 1e-4


class ActivationStats(NamedTuple):
    mean: Tensor             # [n_caps] mean length over the examples
    std: Tensor              # [n_caps] standard deviation of the length
    max: Tensor              # [n_caps] largest length seen
    active_fraction: Tensor  # [n_caps] fraction of examples with length > threshold


def _check_lengths(lengths: Tensor) -> None:
    check_tensor(lengths, "capsule lengths [n_examples, n_capsules]", "capsule statistics")
    if lengths.dim() != 2 or lengths.shape[0] == 0:
        raise ValueError(f"capsule lengths must have shape [n_examples, n_capsules] with at "
                         f"least one example, got {tuple(lengths.shape)}. For one example, "
                         f"use lengths.unsqueeze(0).")


def capsule_activation_stats(lengths: Tensor,
                             threshold: float = ACTIVE_THRESHOLD) -> ActivationStats:
    """Per-capsule mean, std, max of the length and the fraction of examples where it is active.

    lengths: [N, n_caps]. The std is the population std (it is 0, not NaN, for N = 1).
    """
    _check_lengths(lengths)
    lengths = lengths.detach().float()
    return ActivationStats(
        mean=lengths.mean(dim=0),
        std=lengths.std(dim=0, correction=0),
        max=lengths.max(dim=0).values,
        active_fraction=(lengths > threshold).float().mean(dim=0))


def dead_capsule_fraction(lengths: Tensor, threshold: float = ACTIVE_THRESHOLD) -> float:
    """Fraction of capsules whose length exceeds `threshold` on no example at all.

    lengths: [N, n_caps]. Default threshold: ACTIVE_THRESHOLD (0.1, the margin loss's m-).
    """
    _check_lengths(lengths)
    never_active = (lengths.detach() <= threshold).all(dim=0)     # [n_caps]
    return never_active.float().mean().item()


# ----------------------------------------------------------------------------------------------
# Collecting lengths over a dataset

LayerLengths = Callable[[nn.Module, Tensor], dict[str, Tensor]]


def capsnet_layer_lengths(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """{"primary": [B, n_primary], "digit": [B, 10]} capsule lengths from one forward pass, for
    models with a primary_capsules submodule returning squashed capsules [B, n_primary, d]:
    CapsNet (1152 primary capsules) and EfficientCapsNet (16)."""
    captured = []
    hook = model.primary_capsules.register_forward_hook(
        lambda module, inputs, output: captured.append(output))
    try:
        digit = model(images).scores                              # [B, 10]
    finally:
        hook.remove()
    primary = captured[0]                                         # [B, n_primary, d]
    return {"primary": primary.norm(dim=-1), "digit": digit}


def routing_layer_names(n_routing_layers: int) -> list[str]:
    """A DeepCapsNet's routing layers named by the capsules they route to: "hidden1", ...,
    "class" (the last)."""
    return [f"hidden{k}" for k in range(1, n_routing_layers)] + ["class"]


def deep_capsnet_layer_lengths(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """DeepCapsNet: {"primary": [B, n_0], "hidden1": [B, n_1], ..., "class": [B, 10]},
    from input to output."""
    layers = model.forward_layers(images)                         # each [B, n_caps, d]
    names = ["primary"] + routing_layer_names(len(layers) - 1)
    return {name: capsules.norm(dim=-1) for name, capsules in zip(names, layers)}


def default_layer_lengths(model: nn.Module) -> LayerLengths:
    """The layer function that fits `model`: DeepCapsNet's forward_layers, or the primary and
    digit capsules of CapsNet and EfficientCapsNet."""
    if hasattr(model, "forward_layers"):
        return deep_capsnet_layer_lengths
    if hasattr(model, "primary_capsules") and hasattr(model, "digit_capsules"):
        return capsnet_layer_lengths
    raise ValueError(f"no default capsule layers for {type(model).__name__}: pass layer_fn, a "
                     f"function (model, images) -> {{layer name: lengths [B, n_caps]}}")


def _image_batches(data, batch_size: int):
    """Yield image batches [B, 1, 28, 28] from a tensor, a Dataset or a DataLoader."""
    if isinstance(data, Tensor):
        yield from data.split(batch_size)
        return
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def collect_capsule_lengths(model: nn.Module, data, layer_fn: LayerLengths | None = None,
                            batch_size: int = 256, device: str | torch.device | None = None
                            ) -> dict[str, Tensor]:
    """Run `model` in eval mode over `data` and stack each layer's capsule lengths.

    data: an image tensor [N, 1, 28, 28], a Dataset of (image, label) pairs or a DataLoader
    of (images, labels) batches. layer_fn(model, images) -> {name: lengths [B, n_caps]};
    by default CapsNet's primary and digit capsules, or every layer of a DeepCapsNet.
    device: where the images go (default: the device of the model's parameters).
    Returns {name: lengths [N, n_caps]} on the CPU. The model's train/eval mode is restored.
    """
    batch_size = check_whole_number(batch_size, "collect_capsule_lengths: batch_size")
    if isinstance(data, Tensor) and len(data) == 0:
        raise ValueError("collect_capsule_lengths got no examples: the image tensor is empty")
    layer_fn = layer_fn or default_layer_lengths(model)
    device = next(model.parameters()).device if device is None else check_device(device)
    was_training = model.training
    model.eval()
    collected: dict[str, list[Tensor]] = {}
    try:
        for images in _image_batches(data, batch_size):
            for name, lengths in layer_fn(model, images.to(device)).items():
                collected.setdefault(name, []).append(lengths.cpu())
    finally:
        model.train(was_training)
    if not collected:
        raise ValueError("collect_capsule_lengths got no examples: the data is empty")
    return {name: torch.cat(parts) for name, parts in collected.items()}


# ----------------------------------------------------------------------------------------------
# Routing

def coupling_entropy(couplings: Tensor, normalized: bool = True) -> Tensor:
    """Entropy of each input capsule's coupling distribution over the output capsules.

    couplings: [..., n_in, n_out], each row summing to 1 (dynamic routing returns
    [iterations, B, n_in, n_out], self-attention routing [B, n_in, n_out]).
    Returns [..., n_in]: in nats, or divided by log(n_out) when normalized, so that 1 means
    uniform couplings (routing made no choice) and 0 means each input picks a single output.
    """
    check_tensor(couplings, "couplings [..., n_in, n_out]", "coupling_entropy")
    if couplings.dim() < 2:
        raise ValueError(f"couplings must have shape [..., n_in, n_out], "
                         f"got {tuple(couplings.shape)}")
    if couplings.numel() == 0:
        raise ValueError(f"couplings hold no input capsules (shape {tuple(couplings.shape)})")
    n_out = couplings.shape[-1]
    if normalized and n_out < 2:
        raise ValueError("normalized entropy needs at least 2 output capsules (log 1 = 0)")
    _check_distributions(couplings)
    entropy = -torch.special.xlogy(couplings, couplings).sum(dim=-1)   # 0 log 0 = 0
    return entropy / math.log(n_out) if normalized else entropy


def _check_distributions(couplings: Tensor) -> None:
    """Raise unless every row [..., n_in, :] is a probability distribution over the outputs:
    no negative values, summing to 1 up to float rounding. Entropy means nothing otherwise
    (it can come out negative or NaN)."""
    if bool((couplings < 0).any()):
        raise ValueError(f"couplings must be probabilities, got negative values (down to "
                         f"{float(couplings.min()):.4g}); pass softmax outputs, not logits")
    tolerance = COUPLING_SUM_TOLERANCE.get(couplings.dtype, DEFAULT_COUPLING_SUM_TOLERANCE)
    sums = couplings.double().sum(dim=-1)
    off = ~((sums - 1).abs() <= tolerance)                         # NaN sums are off too
    if bool(off.any()):
        raise ValueError(f"each row of couplings (over the n_out = {couplings.shape[-1]} "
                         f"output capsules) must sum to 1, as routing's softmax gives; "
                         f"{int(off.sum())} of {sums.numel()} rows do not (one sums to "
                         f"{float(sums[off][0]):.4g}). Normalise with couplings / "
                         f"couplings.sum(-1, keepdim=True), or check that the last axis is the "
                         f"output capsules")


def mean_coupling_entropy(couplings: Tensor, normalized: bool = True) -> Tensor:
    """coupling_entropy averaged over input capsules and examples.

    [n_in, n_out] or [B, n_in, n_out] -> scalar; [iterations, B, n_in, n_out] -> [iterations],
    one value per routing iteration.
    """
    entropy = coupling_entropy(couplings, normalized)
    if couplings.dim() == 4:
        return entropy.flatten(1).mean(dim=1)                         # [iterations]
    if couplings.dim() in (2, 3):
        return entropy.mean()
    raise ValueError(f"couplings must be [n_in, n_out], [B, n_in, n_out] or "
                     f"[iterations, B, n_in, n_out], got {tuple(couplings.shape)}")


# ----------------------------------------------------------------------------------------------
# Gradients

def gradient_norms(model: nn.Module, images: Tensor, labels: Tensor) -> dict[str, float]:
    """L2 norm of the gradient of model.loss for each layer, ordered from input to output.

    One forward pass (with labels, as in training) and one backward pass of
    model.loss(output, images, labels), in the model's current train/eval mode. A "layer" is a
    module that owns parameters directly (e.g. "conv1", "digit_capsules", "decoder.0"); its
    norm is that of all its own parameters' gradients together. Layers are ordered by when
    their forward pass finished, i.e. from input to output. The parameters' .grad fields are
    left untouched. Frozen parameters are skipped; a layer whose parameters do not reach the
    loss gets 0.0.
    """
    check_model(model, "gradient_norms")
    if isinstance(images, Tensor) and images.dim() > 0:     # the model checks the rest
        check_not_empty(len(images), "gradient_norms")          # (zero gradients, not vanishing)
    owners = {name: module for name, module in model.named_modules()
              if any(p.requires_grad for p in module.parameters(recurse=False))}
    finished: list[str] = []
    hooks = [module.register_forward_hook(
                 lambda *_, name=name: finished.append(name) if name not in finished else None)
             for name, module in owners.items()]
    try:
        loss = model.loss(model(images, labels), images, labels)
    finally:
        for hook in hooks:
            hook.remove()
    order = finished + [name for name in owners if name not in finished]
    params = [(name, p) for name in order for p in owners[name].parameters(recurse=False)
              if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    squared = dict.fromkeys(order, 0.0)
    for (name, _), grad in zip(params, grads):
        if grad is not None:
            squared[name] += grad.double().pow(2).sum().item()
    return {(name or type(model).__name__): math.sqrt(total) for name, total in squared.items()}


# ----------------------------------------------------------------------------------------------
# Starvation: parents that no child chooses

def top_coupling_counts(couplings: Tensor) -> Tensor:
    """How often each output capsule (parent) receives an input capsule's largest coupling.

    couplings: [..., n_in, n_out], each row one input capsule's couplings on one example (e.g.
    the last routing iteration [B, n_in, n_out]). For every row, each parent whose coupling
    equals the row's largest gets a count; on a tie every tied parent counts, so uniform
    couplings (no choice made, as with one routing iteration) count for every parent and
    starve none. Returns [n_out] int64 counts over all rows (sum them over batches).
    """
    check_tensor(couplings, "couplings [..., n_in, n_out]", "top_coupling_counts")
    if couplings.dim() < 2 or couplings.numel() == 0:
        raise ValueError(f"couplings must have shape [..., n_in, n_out] with at least one "
                         f"input capsule, got {tuple(couplings.shape)}")
    _check_distributions(couplings)
    couplings = couplings.detach()
    top = couplings == couplings.amax(dim=-1, keepdim=True)          # [..., n_in, n_out]
    return top.flatten(0, -2).sum(dim=0)                               # [n_out]


def starved_parent_fraction(counts: Tensor) -> float:
    """Fraction of parents that never received any child's largest coupling: counts [n_out]
    from top_coupling_counts, summed over a held-out set. Such a parent is "starved" in this
    book's sense: whatever its length, no part ever picked it as its whole."""
    check_tensor(counts, "counts [n_out]", "starved_parent_fraction")
    if counts.dim() != 1 or counts.numel() == 0 or bool((counts < 0).any()):
        raise ValueError(f"counts must be a non-empty [n_out] tensor of counts >= 0 (from "
                         f"top_coupling_counts), got shape {tuple(counts.shape)}")
    return (counts == 0).float().mean().item()


@torch.no_grad()
def collect_top_coupling_counts(model: nn.Module, data, batch_size: int = 256
                                ) -> dict[str, Tensor]:
    """top_coupling_counts of the last routing iteration of every routing layer of `model`,
    summed over `data` (as in collect_capsule_lengths), in eval mode.

    Returns {parent layer: counts [n_out]}: "digit" for CapsNet; "hidden1", ..., "class" for
    DeepCapsNet (the names of deep_capsnet_layer_lengths).
    """
    batch_size = check_whole_number(batch_size, "collect_top_coupling_counts: batch_size")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals: dict[str, Tensor] = {}
    try:
        for images in _image_batches(data, batch_size):
            couplings = model(images.to(device)).couplings
            if isinstance(couplings, Tensor):
                named = {"digit": couplings}
            else:
                names = routing_layer_names(len(couplings))
                named = dict(zip(names, couplings))
            for name, layer_couplings in named.items():
                counts = top_coupling_counts(layer_couplings[-1]).cpu()
                totals[name] = totals[name] + counts if name in totals else counts
    finally:
        model.train(was_training)
    if not totals:
        raise ValueError("collect_top_coupling_counts got no examples: the data is empty")
    return totals
