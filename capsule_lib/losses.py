"""Losses of the capsule papers."""
import torch
import torch.nn.functional as F
from torch import Tensor

# The margin loss's targets and the weight of absent classes (Sabour et al. 2017, eq. 4).
M_PLUS, M_MINUS, DOWN_WEIGHT = 0.9, 0.1, 0.5


def margin_loss(lengths: Tensor, labels: Tensor, m_plus: float = M_PLUS, m_minus: float = M_MINUS,
                down_weight: float = DOWN_WEIGHT) -> Tensor:
    """Sabour et al. (2017), eq. 4, summed over classes and averaged over the batch.

    L_k = T_k max(0, m+ - ||v_k||)^2 + lambda (1 - T_k) max(0, ||v_k|| - m-)^2
    lengths: [B, n_classes] capsule lengths ||v_k||; labels: [B] class indices.
    The lengths go in as they are: no softmax (a bug some reimplementations shipped).
    """
    if lengths.dim() != 2 or labels.shape != lengths.shape[:1]:
        raise ValueError(f"margin_loss expects lengths [batch, n_classes] and labels [batch], "
                         f"got {tuple(lengths.shape)} and {tuple(labels.shape)}")
    present = F.one_hot(labels, lengths.shape[1]).to(lengths.dtype)            # T_k [B, K]
    loss = (present * F.relu(m_plus - lengths) ** 2
            + down_weight * (1 - present) * F.relu(lengths - m_minus) ** 2)
    return loss.sum(dim=1).mean()


def reconstruction_loss(reconstructions: Tensor, images: Tensor, weight: float = 0.0005) -> Tensor:
    """Sum of squared pixel errors per image, averaged over the batch, times `weight`.

    weight 0.0005 is Sabour et al.'s; Efficient-CapsNet's 0.392 x pixel-mean squared error is
    the same number (0.392 / 784 = 0.0005).
    """
    if reconstructions.shape != images.shape:
        raise ValueError(f"reconstructions {tuple(reconstructions.shape)} and images "
                         f"{tuple(images.shape)} must have the same shape")
    return weight * ((reconstructions - images) ** 2).flatten(1).sum(dim=1).mean()
