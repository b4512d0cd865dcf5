"""Mixed-precision training: bfloat16 where the hardware computes in it, fp32 everywhere else.

Under `torch.autocast(..., dtype=torch.bfloat16)` the convolutions and matrix products run in
bf16 (8 bits of mantissa, fp32's exponent range, so no loss scaling is needed), while the
weights, the optimizer state and the reductions autocast keeps in fp32 stay fp32. The squash and
the routing compute in fp32 when they are handed half-precision tensors (capsule_lib.squash,
capsule_lib.routing), so the capsule lengths and couplings keep fp32's accuracy.

It only pays where the hardware has bf16 arithmetic: on CPUs with AVX512-BF16 or AMX (recent
Intel Xeons) and on GPUs from NVIDIA's Ampere generation on. Elsewhere, for example on an AMD
CPU with AVX2 only, bf16 would be emulated and slower than fp32, so `resolve_precision` warns and
trains in fp32 instead. The chapters always train in fp32, so that the book prints the same
numbers on every machine; `python -m capsule_lib.train --precision bf16` is for readers' own runs.
"""
import contextlib
import warnings

import torch

PRECISIONS = ("fp32", "bf16")


def bf16_supported(device: torch.device) -> bool:
    """Whether this device computes in bf16 natively: a GPU that torch says supports it, or a
    CPU for which oneDNN has bf16 kernels (AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision training will use: `precision` itself, or "fp32" with a warning when
    "bf16" is asked for on a device without bf16 arithmetic. Unknown names are a ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and not bf16_supported(device):
        warnings.warn(f"bf16 was asked for, but this {device.type} has no bf16 arithmetic "
                      "(on a CPU: AVX512-BF16 or AMX); training in fp32 instead, which is "
                      "faster here", stacklevel=2)
        return "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a training step's forward pass and loss run in: bf16 autocast, or nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
