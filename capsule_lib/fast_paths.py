"""Faster ways to compute what the reference layers compute, kept apart from them so that the
reference code stays plain to read. Each gives the same result as the reference (the tests
assert it); benchmarks/throughput.py measures what each buys.
"""
from collections.abc import Callable

import torch
from torch import Tensor

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
