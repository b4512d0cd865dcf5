"""Routing between capsule layers, as pure functions of the votes.

Both routings take the votes (prediction vectors) u_hat[b, i, j] = W_ij u_i that every input
capsule i makes for every output capsule j, and return the output capsules v_j together with
the coupling coefficients c_ij they used.

Shapes:  u_hat [B, n_in, n_out, d_out]  ->  outputs [B, n_out, d_out]

Half precision: the sums over a thousand votes reach lengths that float16 cannot hold (its
largest number is 65,504, and the squash squares the length). For float16 and bfloat16 votes
both routings compute in float32, with autocast switched off inside, and return the votes'
dtype; so they work in a model under torch.autocast.
"""
import math
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import Tensor

from .checks import check_tensor, check_whole_number
from .squash import efficient_squash, squash


class RoutingResult(NamedTuple):
    outputs: Tensor    # [B, n_out, d_out] output capsules v_j
    couplings: Tensor  # dynamic: [iterations, B, n_in, n_out]; self-attention: [B, n_in, n_out]


def _check_votes(u_hat: Tensor) -> None:
    if not isinstance(u_hat, Tensor) or u_hat.dim() != 4 or not u_hat.is_floating_point():
        shape = tuple(u_hat.shape) if isinstance(u_hat, Tensor) else type(u_hat).__name__
        raise ValueError(f"votes u_hat must be a float tensor of shape [batch, n_in, n_out, "
                         f"d_out], got {shape}")


def _autocast_off(u_hat: Tensor):
    """A context in which autocast is off for the votes' device, so that the routing's sums
    run in the dtype they are given (nothing to switch off where autocast is not on)."""
    device_type = u_hat.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


def _wide(x: Tensor) -> Tensor:
    """x in float32 when it is half precision (float16, bfloat16), else x."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def dynamic_routing(u_hat: Tensor, iterations: int = 3, bias: Tensor | None = None,
                    gradient_through_all_iterations: bool = True) -> RoutingResult:
    """Routing by agreement, Sabour et al. (2017), Procedure 1.

    b_ij starts at zero for every example and is never learned: it only lives inside this call.
    Each iteration: c_i = softmax_j(b_i) (over the OUTPUT capsules j), s_j = sum_i c_ij u_hat_j|i
    (+ bias_j, the 10x16 bias of the authors' code), v_j = squash(s_j), b_ij += u_hat_j|i . v_j.

    gradient_through_all_iterations: True (the paper and the authors' code) backpropagates
    through every iteration, i.e. through the couplings too. False treats the couplings of the
    earlier iterations as constants: they are computed from detached votes, and only the final
    weighted sum s_j carries gradient to u_hat.

    Returns the last iteration's v_j and the couplings of every iteration.
    """
    _check_votes(u_hat)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a whole number >= 1, got {iterations!r}")
    if bias is not None and tuple(bias.shape) != tuple(u_hat.shape[2:]):
        raise ValueError(f"bias must have shape [n_out, d_out] = {list(u_hat.shape[2:])}, got "
                         f"{tuple(bias.shape)}")
    with _autocast_off(u_hat):                           # sums in float32, see above
        outputs, couplings = _dynamic_routing(_wide(u_hat), iterations,
                                              None if bias is None else _wide(bias),
                                              gradient_through_all_iterations)
    return RoutingResult(outputs.to(u_hat.dtype), couplings.to(u_hat.dtype))


def _dynamic_routing(u_hat: Tensor, iterations: int, bias: Tensor | None,
                     gradient_through_all_iterations: bool) -> RoutingResult:
    batch, n_in, n_out, _ = u_hat.shape
    # Computed with the output capsule j ahead of the input capsule i: both sums over i below
    # are then plain batched matrix products over contiguous memory, and the softmax over j
    # runs across rows of n_in numbers (PyTorch's CPU softmax along a last dimension of only
    # n_out = 10 numbers is several times slower). The returned couplings are [.., n_in, n_out].
    by_output = u_hat.transpose(1, 2).contiguous()                   # u_hat [B, n_out, n_in, d]
    routing_votes = by_output if gradient_through_all_iterations else by_output.detach()
    logits = u_hat.new_zeros(batch, n_out, n_in)                      # b_ij  [B, n_out, n_in]
    all_couplings = []
    for iteration in range(iterations):
        couplings = torch.softmax(logits, dim=1)                      # c_ij  [B, n_out, n_in]
        all_couplings.append(couplings)
        last = iteration == iterations - 1
        votes = by_output if last else routing_votes
        s = (couplings.unsqueeze(2) @ votes).squeeze(2)               # s_j   [B, n_out, d_out]
        if bias is not None:
            s = s + bias
        v = squash(s)                                                 # v_j   [B, n_out, d_out]
        if not last:
            agreement = (routing_votes @ v.unsqueeze(-1)).squeeze(-1)  # u_hat . v_j [B, n_out, n_in]
            logits = logits + agreement
    return RoutingResult(v, torch.stack(all_couplings).transpose(2, 3))  # [T, B, n_in, n_out]


def self_attention_routing(u_hat: Tensor, prior: Tensor,
                           scale_dim: int | None = None) -> RoutingResult:
    """Self-attention routing of Efficient-CapsNet (Mazzia et al. 2021), as in the authors' code.

    agreement_ij = u_hat_j|i . (sum_k u_hat_j|k) / sqrt(d)   (each vote against all votes
    for the same output capsule), c_ij = softmax_j(agreement_ij) (over the OUTPUT capsules),
    s_j = sum_i (c_ij + prior_ij) u_hat_j|i, v_j = efficient_squash(s_j).

    prior: [n_in, n_out], the learned log-prior b, added after the softmax as the authors' code
    does. The returned couplings are the softmax part alone, so they sum to 1 over outputs.
    d is scale_dim, by default d_out: the authors' code scales by sqrt(d_out); issue #18 on
    their repository notes that the paper's formula uses the input capsule size instead (pass
    scale_dim=d_in for the paper's version).
    """
    _check_votes(u_hat)
    batch, n_in, n_out, d_out = u_hat.shape
    check_tensor(prior, "the prior [n_in, n_out]", "self_attention_routing")
    if prior.shape != (n_in, n_out):
        raise ValueError(f"prior must have shape [n_in, n_out] = [{n_in}, {n_out}], "
                         f"got {tuple(prior.shape)}")
    if scale_dim is None:
        scale_dim = d_out
    check_whole_number(scale_dim, "self_attention_routing: scale_dim", 1)
    with _autocast_off(u_hat):                           # sums in float32, see above
        outputs, couplings = _self_attention_routing(_wide(u_hat), _wide(prior), scale_dim)
    return RoutingResult(outputs.to(u_hat.dtype), couplings.to(u_hat.dtype))


def _self_attention_routing(u_hat: Tensor, prior: Tensor, scale_dim: int) -> RoutingResult:
    total_votes = u_hat.sum(dim=1, keepdim=True)                      # [B, 1, n_out, d_out]
    agreement = (u_hat * total_votes).sum(dim=-1) / math.sqrt(scale_dim)  # [B, n_in, n_out]
    couplings = torch.softmax(agreement, dim=2)                       # [B, n_in, n_out]
    s = torch.einsum("bij,bijd->bjd", couplings + prior, u_hat)      # [B, n_out, d_out]
    return RoutingResult(efficient_squash(s), couplings)
