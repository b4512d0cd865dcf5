"""Losses of the capsule papers: the margin loss (one or several digits per image) and the
reconstruction loss."""
import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import (check_label_range, check_labels, check_not_empty, describe,
                     labels_are_cheap_to_read)

# The margin loss's targets and the weight of absent classes (Sabour et al. 2017, eq. 4).
M_PLUS, M_MINUS, DOWN_WEIGHT = 0.9, 0.1, 0.5


def class_targets(labels: Tensor, n_classes: int) -> Tensor:
    """T_k: [B] class indices -> one-hot [B, n_classes]; [B, m] (m digits per image) ->
    [B, n_classes] with a 1 for every class present (two-hot for pairs of digits)."""
    one_hot = F.one_hot(labels.long(), n_classes)                  # [B, K] or [B, m, K]
    return (one_hot.amax(dim=1) if labels.dim() == 2 else one_hot).to(torch.float32)


def margin_loss(lengths: Tensor, labels: Tensor, m_plus: float = M_PLUS, m_minus: float = M_MINUS,
                down_weight: float = DOWN_WEIGHT) -> Tensor:
    """Sabour et al. (2017), eq. 4, summed over classes and averaged over the batch.

    L_k = T_k max(0, m+ - ||v_k||)^2 + lambda (1 - T_k) max(0, ||v_k|| - m-)^2
    lengths: [B, n_classes] capsule lengths ||v_k||; labels: [B] class indices, or [B, m] the
    classes of m digits per image (T_k = 1 for each: section 6's two-hot loss for MultiMNIST).
    The lengths go in as they are: no softmax (a bug some reimplementations shipped).
    """
    if not isinstance(lengths, Tensor) or lengths.dim() != 2 or not lengths.is_floating_point():
        raise ValueError(f"margin_loss expects lengths as a float tensor [batch, n_classes], got "
                         f"{describe(lengths)}")
    batch, n_classes = lengths.shape
    check_not_empty(batch, "margin_loss")
    several = isinstance(labels, Tensor) and labels.dim() == 2
    check_labels(labels, batch, "margin_loss", n_classes, digits_per_image=several)
    if labels_are_cheap_to_read(labels):
        check_label_range(labels, n_classes, "margin_loss")
    present = class_targets(labels, n_classes).to(lengths.dtype)               # T_k [B, K]
    loss = (present * F.relu(m_plus - lengths) ** 2
            + down_weight * (1 - present) * F.relu(lengths - m_minus) ** 2)
    return loss.sum(dim=1).mean()


def reconstruction_loss(reconstructions: Tensor, images: Tensor, weight: float = 0.0005) -> Tensor:
    """Sum of squared pixel errors per image, averaged over the batch, times `weight`.

    weight 0.0005 is Sabour et al.'s; Efficient-CapsNet's 0.392 x pixel-mean squared error is
    the same number (0.392 / 784 = 0.0005).
    """
    if not (isinstance(reconstructions, Tensor) and isinstance(images, Tensor)):
        raise TypeError(f"reconstruction_loss expects two tensors, got {describe(reconstructions)}"
                        f" and {describe(images)}")
    if reconstructions.shape != images.shape:
        raise ValueError(f"reconstructions {tuple(reconstructions.shape)} and images "
                         f"{tuple(images.shape)} must have the same shape")
    check_not_empty(images.shape[0], "reconstruction_loss")
    return weight * ((reconstructions - images) ** 2).flatten(1).sum(dim=1).mean()
