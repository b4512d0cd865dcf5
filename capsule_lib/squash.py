"""Squash non-linearities: shrink a capsule's vector to a length below 1, keep its direction.

Both functions work on the last dimension by default and are finite, with finite gradients,
at the zero vector. The textbook form s / ||s|| divides by zero there, which is where the NaN
gradients of many reimplementations come from. Here the norm is computed from a squared norm
clamped to the smallest positive float, so nothing is ever divided by zero and the result only
differs from the exact formula for vectors shorter than about 1e-19.
"""
import torch
from torch import Tensor


def _safe_norm(s: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """(||s||, ||s||^2) along `dim`, kept as size-1 dimensions; ||s|| is never exactly 0."""
    squared = (s * s).sum(dim=dim, keepdim=True)
    norm = squared.clamp_min(torch.finfo(s.dtype).tiny).sqrt()
    return norm, squared


def squash(s: Tensor, dim: int = -1) -> Tensor:
    """Sabour et al. (2017), eq. 1: v = ||s||^2 / (1 + ||s||^2) * s / ||s||.

    Written as v = s * ||s|| / (1 + ||s||^2), which is the same function without a division
    by ||s||. Output length ||s||^2 / (1 + ||s||^2) lies in [0, 1); direction is unchanged.
    """
    norm, squared = _safe_norm(s, dim)
    return s * (norm / (1.0 + squared))


def efficient_squash(s: Tensor, dim: int = -1) -> Tensor:
    """Mazzia et al. (2021): v = (1 - 1/e^||s||) * s / ||s||.

    Written as v = s * (-expm1(-||s||) / ||s||): the factor tends to 1 as ||s|| -> 0, so the
    function is the identity near zero instead of 0 / 0. (The authors' code instead adds
    eps = 1e-20 to both denominators; the two agree to float precision away from zero.)
    """
    norm, _ = _safe_norm(s, dim)
    return s * (-torch.expm1(-norm) / norm)
