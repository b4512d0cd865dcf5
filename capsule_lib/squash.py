"""Squash non-linearities: shrink a capsule's vector to a length below 1, keep its direction.

Both functions work on the last dimension by default and are finite, with finite gradients,
at the zero vector. The textbook form s / ||s|| divides by zero there, which is where the NaN
gradients of many reimplementations come from. Here the norm is computed from a squared norm
clamped to the smallest positive normal float, so nothing is ever divided by zero and the
result only differs from the exact formula for vectors shorter than about 1e-19.

Half precision: float16 overflows at 65,504, so the squared norm of a vector of length 256
is already infinite. For float16 and bfloat16 inputs both functions compute in float32 and
return the input's dtype, so they work under torch.autocast and for any length.

squash_curves gives both functions' output length and slope against the input length (the
curves chapter 02 plots).
"""
import math

import torch
from torch import Tensor

from .checks import check_tensor, check_whole_number, describe


def _in_float32(s: Tensor) -> Tensor:
    """s, in float32 when it is a half-precision tensor (float16, bfloat16); a TypeError for
    anything but a float tensor."""
    check_tensor(s, "capsule vectors s", "squash")
    if not s.is_floating_point():
        raise TypeError(f"squash expects float vectors, got {describe(s)}; convert with .float()")
    return s.float() if s.dtype in (torch.float16, torch.bfloat16) else s


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
    wide = _in_float32(s)
    norm, squared = _safe_norm(wide, dim)
    return (wide * (norm / (1.0 + squared))).to(s.dtype)


def efficient_squash(s: Tensor, dim: int = -1) -> Tensor:
    """Mazzia et al. (2021): v = (1 - 1/e^||s||) * s / ||s||.

    Written as v = s * (-expm1(-||s||) / ||s||): the factor tends to 1 as ||s|| -> 0, so the
    function is the identity near zero instead of 0 / 0. (The authors' code instead adds
    eps = 1e-20 to both denominators; the two agree to float precision away from zero.)
    """
    wide = _in_float32(s)
    norm, _ = _safe_norm(wide, dim)
    return (wide * (-torch.expm1(-norm) / norm)).to(s.dtype)


def squash_curves(max_norm: float = 5.0, n_points: int = 501, dim: int = 16) -> dict[str, Tensor]:
    """Output length ||v|| against input length ||s|| for both squashes, and d||v||/d||s||.

    The inputs are s = r * u for one fixed unit vector u in `dim` dimensions and r in
    [0, max_norm]. Both squashes keep the direction, so ||v|| = v . u; this projection is used
    instead of a norm because its autograd derivative is also right at r = 0, where a norm's
    gradient is undefined. The slopes come from autograd, not from a formula.
    Returns {"input_length", "squash", "squash_slope", "efficient_squash",
    "efficient_squash_slope"}, each [n_points] (float64).
    """
    if not (isinstance(max_norm, (int, float)) and math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"squash_curves needs a finite max_norm > 0, got {max_norm!r}")
    n_points = check_whole_number(n_points, "squash_curves: n_points", minimum=2)
    dim = check_whole_number(dim, "squash_curves: dim")
    radius = torch.linspace(0.0, max_norm, n_points, dtype=torch.float64, requires_grad=True)
    direction = torch.ones(dim, dtype=torch.float64) / dim ** 0.5   # unit vector u
    curves = {"input_length": radius.detach()}
    for name, function in (("squash", squash), ("efficient_squash", efficient_squash)):
        length = (function(radius[:, None] * direction) * direction).sum(dim=-1)   # [n]
        slope, = torch.autograd.grad(length.sum(), radius)   # each length depends on its own r
        curves[name] = length.detach()
        curves[f"{name}_slope"] = slope
    return curves
