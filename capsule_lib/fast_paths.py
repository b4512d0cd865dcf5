"""Faster ways to compute what the reference layers compute, kept apart from them so that the
reference code stays plain to read. Each gives the same result as the reference (the tests
assert it); benchmarks/throughput.py measures what each buys.
"""
import ctypes
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .routing import RoutingResult
from .squash import _safe_norm, squash

# glibc's mallopt parameters, and the largest block it can be told to keep (64-bit Linux)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
LARGEST_KEPT_BLOCK = 32 * 2**20


def keep_freed_memory() -> bool:
    """Ask the C library (glibc, on Linux) to keep the memory that freed tensors up to 32 MB
    leave, instead of handing it back to the operating system; True where it agreed.

    By default glibc returns large freed blocks to the system at once, and the next tensor of
    that size has each of its pages mapped in afresh: a CapsNet training step on the CPU
    allocates and frees tensors of 2 to 26 MB, and took 10,000 to 16,000 such page faults at
    batch 16, and about 30,000 at batch 64. With the memory kept, a batch-16 step took about
    0.9 of its time on a 2-core AMD EPYC (four pairs of fresh processes, one of each kind in
    turn). The cost: the process keeps its largest footprint until it ends. Results do not
    change. fit() calls this when it trains on the CPU; elsewhere (macOS, Windows, other C
    libraries) it does nothing and returns False.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt                          # the process's C library
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGEST_KEPT_BLOCK)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, 2**30))


# Examples whose votes digit_capsules_on_cpu makes and routes together (8 examples' votes
# are 5.9 MB); 4, 8 and 16 took the same time on a 2-core AMD EPYC, 32 and 64 longer.
CPU_EXAMPLES_PER_CHUNK = 8


def digit_capsules_on_cpu(u: Tensor, weight: Tensor, bias: Tensor | None, iterations: int,
                          gradient_through_all_iterations: bool = True,
                          examples_per_chunk: int = CPU_EXAMPLES_PER_CHUNK) -> RoutingResult:
    """What capsnet.DigitCapsules.route computes, the votes u_hat_j|i = W_ij u_i and then
    routing.dynamic_routing, on a CPU, with a hand-written backward pass: the same
    outputs and couplings, and the same gradients for u, W and the bias (to float rounding:
    the tests assert it).

    u [B, n_in, d_in], weight W [n_in, n_out, d_out, d_in], bias [n_out, d_out] or None
      -> outputs [B, n_out, d_out], couplings [iterations, B, n_in, n_out] (no gradient)

    Routing is light arithmetic on a large tensor: it reads every vote 2 x iterations - 1
    times forward and as often backward, and a batch of 64 (47 MB of votes for the MNIST
    CapsNet) does not fit a processor's cache. So the votes are made and routed a few examples
    at a time, each chunk while it is in the cache, and made again for the backward pass
    instead of being kept. Autograd through the reference routing spends most of its time on
    outer products and on matrix-vector products in the orientation that the CPU's BLAS does
    slowly; the backward pass below forms each chunk's vote gradients with one matrix
    product, and every product reads the votes as rows.
    """
    if u.dtype not in (torch.float32, torch.float64) or u.device.type != "cpu":
        raise ValueError(f"digit_capsules_on_cpu takes float32 or float64 tensors on the CPU, "
                         f"got {u.dtype} on {u.device}; use DigitCapsules.route for others")
    outputs, couplings = _DigitCapsulesOnCpu.apply(u, weight, bias, iterations,
                                                   gradient_through_all_iterations,
                                                   examples_per_chunk)
    return RoutingResult(outputs, couplings.transpose(2, 3))      # [T, B, n_in, n_out]


def _by_output(votes: Tensor, out_dim: int) -> Tensor:
    """Votes [n_in, b, n_out * d] read as one [n_in, d] matrix per example and output capsule,
    a strided view (no copy): [b * n_out, n_in, d], pairs in example-major order."""
    return votes.view(len(votes), -1, out_dim).transpose(0, 1)


class _DigitCapsulesOnCpu(torch.autograd.Function):
    """Votes and dynamic routing (Sabour et al. 2017, Procedure 1) forward, the backward by hand.

    Per example, with the output capsule j ahead of the input capsule i (as in routing.py):
        c^t = softmax_j(b^t),   s^t_j = sum_i c^t_ij u_j|i (+ bias_j),   v^t = squash(s^t),
        b^0 = 0,   b^(t+1) = b^t + a^t   with   a^t_ij = u_j|i . v^t_j.
    Backward, t = T-1 down to 0, with G = dL/db^(t+1) carried down from the later iterations:
        dL/dv^t = dL/doutputs (t = T-1)   or   sum_i G_ij u_j|i (t < T-1, through a^t)
        g^t = dL/ds^t from dL/dv^t through the squash
        dL/db^t = G + softmax-backward over j of (g^t_j . u_j|i)
        dL/du_j|i = sum_t c^t_ij g^t_j + sum_(t<T-1) dL/db^(t+1)_ij v^t_j
    The last sum is one batched matrix product over the 2T-1 terms. Without gradients
    through all iterations only the final s carries gradient to the votes,
    dL/du_j|i = c^(T-1)_ij g^(T-1)_j, while a bias gets the whole sum over t of g^t.
    Then, from u_hat_j|i = W_ij u_i:  dL/dW_ij = sum_b dL/du_j|i u_i^T,  dL/du_i = sum_j
    W_ij^T dL/du_j|i, batched products over i, chunk by chunk.
    """

    @staticmethod
    def forward(ctx, u: Tensor, weight: Tensor, bias: Tensor | None, iterations: int,
                gradient_through_all_iterations: bool, examples_per_chunk: int):
        batch, n_in, _ = u.shape
        n_out, dim = weight.shape[1:3]
        u_by_input = u.transpose(0, 1).contiguous()                   # [n_in, B, d_in]
        weight_t = weight.view(n_in, n_out * dim, -1).transpose(1, 2)  # [n_in, d_in, n_out*d]
        couplings = u.new_empty(iterations, batch, n_out, n_in)       # c^t   [T, B, n_out, n_in]
        sums = u.new_empty(iterations, batch, n_out, dim)             # s^t   [T, B, n_out, d]
        outputs = u.new_empty(batch, n_out, dim)                      # v     [B, n_out, d]
        for start in range(0, batch, examples_per_chunk):
            part = slice(start, start + examples_per_chunk)
            votes_by_input = torch.bmm(u_by_input[:, part], weight_t)  # [n_in, b, n_out*d]
            votes = _by_output(votes_by_input, dim)                   # [b*n_out, n_in, d]
            logits = u.new_zeros(couplings[0, part].shape)            # b^t   [b, n_out, n_in]
            for t in range(iterations):
                c = couplings[t, part]
                torch.softmax(logits, dim=1, out=c)
                s = torch.bmm(c.view(-1, 1, n_in), votes).view(-1, n_out, dim)  # s^t [b, n_out, d]
                if bias is not None:
                    s = s + bias
                sums[t, part] = s
                v = squash(s)
                if t < iterations - 1:                                # a^t = u_j|i . v^t_j
                    logits += torch.bmm(v.view(-1, 1, dim), votes.transpose(1, 2)).view_as(logits)
            outputs[part] = v
        ctx.save_for_backward(u_by_input, weight, couplings, sums)
        ctx.examples_per_chunk = examples_per_chunk
        ctx.through_all = gradient_through_all_iterations
        ctx.mark_non_differentiable(couplings)
        return outputs, couplings

    @staticmethod
    def backward(ctx, grad_outputs: Tensor, _grad_couplings: Tensor):
        u_by_input, weight, couplings, sums = ctx.saved_tensors
        iterations, batch, n_out, n_in = couplings.shape
        dim = sums.shape[-1]
        chunk = ctx.examples_per_chunk
        weight_by_input = weight.view(n_in, n_out * dim, -1)         # [n_in, n_out*d, d_in]
        weight_t = weight_by_input.transpose(1, 2)                    # [n_in, d_in, n_out*d]
        grad_u = u_by_input.new_empty(batch, n_in, u_by_input.shape[-1]) \
            if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight_by_input) if ctx.needs_input_grad[1] else None
        grad_bias = sums.new_zeros(sums.shape[2:]) if ctx.needs_input_grad[2] else None
        grad_votes = u_by_input.new_empty(n_in, chunk, n_out * dim)  # [n_in, b, n_out*d]
        for start in range(0, batch, chunk):
            part = slice(start, start + chunk)
            votes_by_input = torch.bmm(u_by_input[:, part], weight_t)  # [n_in, b, n_out*d]
            grad_chunk, grad_sums = _routing_backward(
                _by_output(votes_by_input, dim), couplings[:, part], sums[:, part],
                grad_outputs[part], ctx.through_all, grad_bias is not None)  # [b*n_out, n_in, d]
            grads = grad_votes[:, :votes_by_input.shape[1]]           # [n_in, b, n_out*d]
            _by_output(grads, dim).copy_(grad_chunk)
            if grad_bias is not None:
                grad_bias += grad_sums
            if grad_weight is not None:                               # sum_b dL/du_j|i u_i^T
                grad_weight.baddbmm_(grads.transpose(1, 2), u_by_input[:, part])
            if grad_u is not None:                                    # sum_j W_ij^T dL/du_j|i
                grad_u[part] = torch.bmm(grads, weight_by_input).transpose(0, 1)
        if grad_weight is not None:
            grad_weight = grad_weight.view(weight.shape)
        return grad_u, grad_weight, grad_bias, None, None, None


def _routing_backward(votes: Tensor, couplings: Tensor, sums: Tensor, grad_outputs: Tensor,
                      through_all: bool, bias_needs_grad: bool) -> tuple[Tensor, Tensor]:
    """The routing's backward pass for b examples (formulas in _DigitCapsulesOnCpu): votes
    [b*n_out, n_in, d], couplings c^t [T, b, n_out, n_in], sums s^t [T, b, n_out, d],
    dL/doutputs [b, n_out, d] -> dL/dvotes [b*n_out, n_in, d], sum_t dL/ds^t [n_out, d]."""
    iterations, _, n_out, n_in = couplings.shape
    dim = sums.shape[-1]
    # Without gradients through all iterations, the votes' gradient comes from the final s
    # alone, but a bias still reaches the outputs through the earlier couplings.
    first = 0 if through_all or bias_needs_grad else iterations - 1
    weights, vectors = [], []                          # dL/du_j|i = sum_k weights_k vectors_k
    grad_v, grad_logits = grad_outputs, None           # dL/dv^t, dL/db^(t+1)
    grad_sums = torch.zeros_like(sums[0, 0])
    for t in range(iterations - 1, first - 1, -1):
        c = couplings[t]                                              # [b, n_out, n_in]
        if grad_logits is not None:                                   # through a^t
            grad_v = torch.bmm(grad_logits.view(-1, 1, n_in), votes).view_as(grad_outputs)
            if through_all:
                weights.append(grad_logits)
                vectors.append(squash(sums[t]))                       # v^t
        grad_s = _squash_backward(sums[t], grad_v)                    # [b, n_out, d]
        grad_sums += grad_s.sum(0)
        if through_all or t == iterations - 1:
            weights.append(c)
            vectors.append(grad_s)
        if t > first:                                                 # on to dL/db^t
            grad_c = torch.bmm(grad_s.view(-1, 1, dim),
                               votes.transpose(1, 2)).view_as(c)      # [b, n_out, n_in]
            grad_c -= (c * grad_c).sum(dim=1, keepdim=True)           # softmax backward over j
            grad_c *= c
            grad_logits = grad_c if grad_logits is None else grad_logits + grad_c
    terms = len(weights)
    return torch.bmm(torch.stack(weights, dim=-1).view(-1, n_in, terms),   # [b*n_out, n_in, K]
                     torch.stack(vectors, dim=2).view(-1, terms, dim)      # [b*n_out, K, d]
                     ), grad_sums


def _squash_backward(s: Tensor, grad_v: Tensor) -> Tensor:
    """dL/ds for v = squash(s) = s f(q), f = n / (1 + q), q = ||s||^2, n = sqrt(q) (clamped
    as in squash.py): dL/ds = f dL/dv + 2 f'(q) (dL/dv . s) s, with
    f'(q) = n'(q) / (1 + q) - n / (1 + q)^2 and n'(q) = 1 / (2n) (0 where the clamp holds)."""
    norm, squared = _safe_norm(s, dim=-1)                             # n, q as squash's
    denominator = 1.0 + squared
    norm_slope = torch.where(squared >= torch.finfo(s.dtype).tiny, 0.5 / norm, 0.0)  # n'(q)
    slope = norm_slope / denominator - norm / denominator.square()    # f'(q)
    return (norm / denominator) * grad_v + (2 * slope * (grad_v * s).sum(-1, keepdim=True)) * s


# CpuConv2d computes its backward tap by tap from this many input channels on, and with
# products over all taps at once (im2col) for a single input channel; in between, torch's own
# backward was as fast or faster (DeepCapsNet's 64 channels: 5-8% faster, 2-core AMD EPYC).
MIN_CHANNELS_PER_TAP = 128


class CpuConv2d(nn.Conv2d):
    """nn.Conv2d (no padding, groups or dilation) with a faster backward pass on the CPU (for
    1 or at least MIN_CHANNELS_PER_TAP input channels); the forward pass and every result are
    nn.Conv2d's (the tests assert it, to float rounding: the sums run in another order).

    On a 2-core AMD EPYC (benchmarks/throughput.py --profile, batch 64) torch's CPU backward
    computed the two gradients of CapsNet's PrimaryCaps layer (256 -> 256 channels, 9x9,
    stride 2) at 0.57 and 0.48 of the matmul rate, and Conv1's weight gradient (1 input
    channel) at 0.10, while the forward pass ran at 0.96. Seen tap by tap, a convolution is a
    sum of kernel_size^2 ordinary matrix products, one per kernel offset (i, j), each as wide
    as the channels:
        out[b, y, x] = sum_ij W[:, :, i, j] @ images[b, :, s*y + i, s*x + j]
    so both gradients are such products too, and each is large and fits the cache:
        grad_W[:, :, i, j] = sum_{b, y, x} grad_out[b, :, y, x] images[b, :, s*y + i, s*x + j]^T
        grad_images[b, :, s*y + i, s*x + j] += W[:, :, i, j]^T grad_out[b, :, y, x]
    Computed so, PrimaryCaps' gradients ran at 0.81 and 0.73 of the matmul rate and Conv1's at
    0.31, later 0.44-0.49 (there one product per example over all taps, im2col, since one
    channel makes each tap's product too thin), and a whole CapsNet training step took 0.8 to
    0.93 of its former time (batch 16 to 64, the two backward passes timed in turn in the same
    runs). The input gradient is still computed so (_input_gradient); the weight gradient,
    whose sum over taps is itself a convolution, is now one call to the convolution library
    (_weight_gradient), faster than its 81 products. Other devices (cuDNN on a GPU) keep
    torch's own backward.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, images: Tensor) -> Tensor:
        tap_by_tap = self.in_channels == 1 or self.in_channels >= MIN_CHANNELS_PER_TAP
        if (images.device.type != "cpu" or not torch.is_grad_enabled() or not tap_by_tap
                or torch.is_autocast_enabled("cpu")):                  # bf16: torch's own
            return super().forward(images)
        return _TapwiseBackwardConv2d.apply(images, self.weight, self.bias, self.stride[0])


class _TapwiseBackwardConv2d(torch.autograd.Function):
    """F.conv2d(images, weight, bias, stride) forward; backward: the input gradient one kernel
    tap at a time, the weight gradient as one dilated convolution (from MIN_CHANNELS_PER_TAP
    input channels; im2col for a single one)."""

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
        batch, channels = images.shape[:2]
        out_channels, _, kh, kw = weight.shape
        grad_images = grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            if channels >= MIN_CHANNELS_PER_TAP:
                grad_weight = _weight_gradient(images, grad_out, stride, kh)  # [O, C, k, k]
            else:                               # im2col: one product per example, summed
                patches = F.unfold(images, (kh, kw), stride=stride)    # [B, C*kh*kw, Ho*Wo]
                grad_weight = torch.bmm(grad_out.reshape(batch, out_channels, -1),
                                        patches.transpose(1, 2)).sum(0)  # [O, C*kh*kw]
            grad_weight = grad_weight.reshape(out_channels, channels, kh, kw)
        if ctx.needs_input_grad[0]:
            grad_images = _input_gradient(grad_out, weight, stride, images.shape)
        if ctx.needs_input_grad[2]:                                     # False without a bias
            grad_bias = grad_out.sum(dim=(0, 2, 3))
        return grad_images, grad_weight, grad_bias, None


def _weight_gradient(images: Tensor, grad_out: Tensor, stride: int, kernel: int) -> Tensor:
    """dL/dW of a convolution without padding, as a convolution: images [B, C, H, W],
    grad_out [B, O, Ho, Wo] -> [O, C, k, k].

        grad_W[o, c, i, j] = sum_{b, y, x} grad_out[b, o, y, x] images[b, c, s*y + i, s*x + j]

    is a convolution of the images, with the channels C as its batch and the examples B as
    its input channels, by grad_out as the kernel ([O, B, Ho, Wo]), dilated by the stride s:
    one call to the CPU's convolution library (oneDNN) instead of k^2 matrix products, one per
    tap. Only the first k + s (Ho - 1) rows and columns of the images reach a weight. On a
    2-core AMD EPYC, PrimaryCaps' weight gradient (256 -> 256 channels, 9x9, stride 2) took
    a median 203 ms against 276 ms tap by tap at batch 64 (faster in 15 of 15 pairs of runs),
    134 against 166 ms at batch 32 and 78 against 89 ms at batch 16 (13 of 15 pairs each);
    a whole CapsNet training step, in a quiet period, a median 571 against 592 ms at batch 64
    and 162 against 175 ms at batch 16 (faster in 16 of 16 pairs at each).
    """
    reach_h = kernel + stride * (grad_out.shape[2] - 1)
    reach_w = kernel + stride * (grad_out.shape[3] - 1)
    by_channel = images[:, :, :reach_h, :reach_w].transpose(0, 1)     # [C, B, reach_h, reach_w]
    grad_weight = F.conv2d(by_channel, grad_out.transpose(0, 1), dilation=stride)  # [C, O, k, k]
    return grad_weight.transpose(0, 1).contiguous()                   # [O, C, k, k]


def _input_gradient(grad_out: Tensor, weight: Tensor, stride: int,
                    image_shape: torch.Size) -> Tensor:
    """dL/dimages of a convolution without padding, tap by tap: grad_out [B, O, Ho, Wo],
    weight [O, C, k, k] -> [B, C, H, W] (contiguous: elementwise backward passes, such as the
    ReLU before PrimaryCaps, ran about 7 times slower on a gradient laid out unlike their input).

    Tap (i, j) sends W[:, :, i, j]^T grad_out[b, :, y, x] to pixel (s*y + i, s*x + j). With
    i = s*m + p, that pixel is row Y = y + m of row phase p (rows s*Y + p), column x of column
    offset j (columns s*x + j). So in a buffer [Y, x, b, C] of one phase p and offset j, with
    grad_out's rows in (y, x, b) order, every tap of that (p, j) adds its product to a
    contiguous block of rows (Y from m to m + Ho - 1), and the matrix product adds it in place
    (addmm_). Each buffer is then added to the image once: 2 x 9 strided additions for
    PrimaryCaps instead of one per tap (81), each of a product first written to memory. On a
    2-core AMD EPYC, PrimaryCaps' forward and backward at batch 64 took a median 22 ms (3%)
    less than with one addition per tap, faster in 21 of 30 pairs of runs; at batch 16, 7 ms
    less in 17 of 30 pairs, within the noise.
    """
    batch, channels, height, width = image_shape
    out_channels, _, kernel, _ = weight.shape
    out_h, out_w = grad_out.shape[2:]
    grad = grad_out.permute(2, 3, 0, 1).reshape(-1, out_channels)    # [Ho*Wo*B, O], (y, x, b)
    taps = weight.view(-1, kernel * kernel).t().contiguous().view(kernel, kernel, out_channels,
                                                                  channels)  # [k, k, O, C]
    grad_hwc = grad.new_zeros(batch, height, width, channels)         # [B, H, W, C]
    row_stride, column_stride = grad_hwc.stride()[1:3]
    phases = min(stride, kernel)
    buffer = grad.new_empty((kernel - 1) // stride + out_h, out_w, batch, channels)
    for p in range(phases):
        rows = (kernel - 1 - p) // stride + out_h                     # Y = 0 .. rows - 1
        for j in range(kernel):
            block = buffer[:rows].zero_()                             # [Y, x, B, C]
            for i in range(p, kernel, stride):
                m = i // stride
                block[m:m + out_h].view(-1, channels).addmm_(grad, taps[i, j])
            # pixels (s*Y + p, s*x + j) of every example: [Y, x, B, C], a strided view
            grad_hwc.as_strided(block.shape, (stride * row_stride, stride * column_stride,
                                              grad_hwc.stride(0), 1),
                                p * row_stride + j * column_stride).add_(block)
    return grad_hwc.permute(0, 3, 1, 2).contiguous()                  # [B, C, H, W]
