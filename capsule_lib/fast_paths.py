"""Faster ways to compute what the reference layers compute, kept apart from them so that the
reference code stays plain to read. Each gives the same result as the reference (the tests
assert it); benchmarks/throughput.py measures what each buys.
"""
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .routing import RoutingResult

# Examples routed together by route_in_chunks; measured by benchmarks/throughput.py.
CPU_EXAMPLES_PER_CHUNK = 4


def route_in_chunks(route: Callable[[Tensor], RoutingResult], u: Tensor,
                    examples_per_chunk: int = CPU_EXAMPLES_PER_CHUNK) -> RoutingResult:
    """route(u) computed a few examples at a time: u [B, n_in, d_in] -> v [B, n_out, d_out],
    couplings [iterations, B, n_in, n_out], the same as route(u) itself.

    Routing reads every vote 2 x iterations - 1 times forward and again backward. One
    example's votes (0.7 MB for the MNIST CapsNet) stay in the processor's cache for all of
    that; a batch of 64 (47 MB) does not, and its routing then waits on main memory. Routing 4
    examples at a time halved the time of CapsNet's routing layer on a 2-core AMD EPYC
    (training step 0.75 -> 0.94 of the matmul roofline at batch 64); on a 2-core Intel Xeon a
    training step took the same time with chunks of 4, 8 and 32. Examples never interact in
    routing, so the result is the same either way. A GPU routes the whole batch at once.
    """
    chunks = [route(part) for part in u.split(examples_per_chunk)]      # votes [b, 1152, 10, 16]
    return RoutingResult(torch.cat([chunk.outputs for chunk in chunks]),
                         torch.cat([chunk.couplings for chunk in chunks], dim=1))


# CpuConv2d computes its backward tap by tap from this many input channels on, and with one
# matrix product over all taps (im2col) for a single input channel; in between, torch's own
# backward was as fast or faster (DeepCapsNet's 64 channels: 5-8% faster, 2-core AMD EPYC).
MIN_CHANNELS_PER_TAP = 128


class CpuConv2d(nn.Conv2d):
    """nn.Conv2d (no padding, groups or dilation) whose backward pass on the CPU is computed
    tap by tap (for 1 or at least MIN_CHANNELS_PER_TAP input channels); the forward pass and
    every result are nn.Conv2d's (the tests assert it, to float rounding: the sums run in
    another order).

    On a 2-core AMD EPYC (benchmarks/throughput.py --profile, batch 64) torch's CPU backward
    computed the two gradients of CapsNet's PrimaryCaps layer (256 -> 256 channels, 9x9,
    stride 2) at 0.57 and 0.48 of the matmul rate, and Conv1's weight gradient (1 input
    channel) at 0.10, while the forward pass ran at 0.96. Seen tap by tap, a convolution is a sum of
    kernel_size^2 ordinary matrix products, one per kernel offset (i, j), each as wide as the
    channels:
        out[b, y, x] = sum_ij W[:, :, i, j] @ images[b, :, s*y + i, s*x + j]
    so both gradients are such products too, and each is large and fits the cache:
        grad_W[:, :, i, j] = sum_{b, y, x} grad_out[b, :, y, x] images[b, :, s*y + i, s*x + j]^T
        grad_images[b, :, s*y + i, s*x + j] += W[:, :, i, j]^T grad_out[b, :, y, x]
    Computed so, PrimaryCaps' gradients ran at 0.81 and 0.73 of the matmul rate and Conv1's at
    0.31 (there one product over all taps, im2col, since one channel makes each tap's product
    too thin), and a whole CapsNet training step took 0.8 to 0.93 of its former time (batch 16
    to 64, the two backward passes timed in turn in the same runs). Other devices (cuDNN on a
    GPU) keep torch's own backward.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, images: Tensor) -> Tensor:
        tap_by_tap = self.in_channels == 1 or self.in_channels >= MIN_CHANNELS_PER_TAP
        if (images.device.type != "cpu" or not torch.is_grad_enabled() or not tap_by_tap
                or torch.is_autocast_enabled("cpu")):                  # bf16: torch's own
            return super().forward(images)
        return _TapwiseBackwardConv2d.apply(images, self.weight, self.bias, self.stride[0])


def _tap(images_hwc: Tensor, i: int, j: int, stride: int, out_h: int, out_w: int) -> Tensor:
    """The pixels that kernel offset (i, j) meets: [B, H, W, C] -> [B, out_h, out_w, C]."""
    return images_hwc[:, i:i + stride * (out_h - 1) + 1:stride,
                      j:j + stride * (out_w - 1) + 1:stride]


class _TapwiseBackwardConv2d(torch.autograd.Function):
    """F.conv2d(images, weight, bias, stride) forward; backward one kernel tap at a time."""

    @staticmethod
    def forward(ctx, images: Tensor, weight: Tensor, bias: Tensor | None,
                stride: int) -> Tensor:
        ctx.save_for_backward(images, weight)
        ctx.stride = stride
        return F.conv2d(images, weight, bias, stride)                   # [B, O, Ho, Wo]

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        images, weight = ctx.saved_tensors
        stride = ctx.stride
        batch, channels, height, width = images.shape
        out_channels, _, kh, kw = weight.shape
        out_h, out_w = grad_out.shape[2:]
        rows = batch * out_h * out_w
        grad = grad_out.permute(0, 2, 3, 1).reshape(rows, out_channels)  # [B*Ho*Wo, O]
        grad_images = grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            images_hwc = images.permute(0, 2, 3, 1).contiguous()        # [B, H, W, C]
            if channels >= MIN_CHANNELS_PER_TAP:
                per_tap = grad.new_empty(kh, kw, out_channels, channels)
                for i in range(kh):
                    for j in range(kw):
                        tap = _tap(images_hwc, i, j, stride, out_h, out_w)
                        torch.mm(grad.t(), tap.reshape(rows, channels),
                                 out=per_tap[i, j])                     # [O, C]
                # [kh*kw, O*C] -> [O*C, kh*kw]: a 2-D transpose, the fastest copy of the kind
                grad_weight = per_tap.view(kh * kw, -1).t().contiguous()
            else:                                                       # im2col: one product
                patches = torch.stack([_tap(images_hwc, i, j, stride, out_h, out_w)
                                       for i in range(kh) for j in range(kw)], dim=3)
                grad_weight = (grad.t() @ patches.reshape(rows, kh * kw * channels)
                               ).view(out_channels, kh * kw, channels).transpose(1, 2)
            grad_weight = grad_weight.reshape(out_channels, channels, kh, kw)
        if ctx.needs_input_grad[0]:
            taps = weight.view(-1, kh * kw).t().contiguous().view(kh, kw, out_channels,
                                                                  channels)
            grad_hwc = grad.new_zeros(batch, height, width, channels)   # [B, H, W, C]
            for i in range(kh):
                for j in range(kw):
                    _tap(grad_hwc, i, j, stride, out_h, out_w).add_(
                        (grad @ taps[i, j]).view(batch, out_h, out_w, channels))
            grad_images = grad_hwc.permute(0, 3, 1, 2)                  # [B, C, H, W]
        if ctx.needs_input_grad[2]:                                     # False without a bias
            grad_bias = grad.sum(0)
        return grad_images, grad_weight, grad_bias, None
