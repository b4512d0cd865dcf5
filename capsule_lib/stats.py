"""Paired comparisons of two classifiers on the same test images.

Two models scored on the same digits are not independent measurements: most digits are right
(or wrong) for both. McNemar's test looks only at the digits where they disagree:
b = right for the first model only, c = right for the second only. If the models were equally
accurate, each disagreement would go either way with probability 1/2, so b ~ Binomial(b + c,
1/2); the exact two-sided p-value is the probability of a split at least as uneven as the one
seen.
"""
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .checks import check_tensor


@dataclass(frozen=True)
class McNemarResult:
    """first_only (b) and second_only (c): digits right for one model only; p_value: exact
    two-sided McNemar (binomial) p-value, 1.0 when the models never disagree."""
    first_only: int
    second_only: int
    p_value: float

    @property
    def disagreements(self) -> int:
        return self.first_only + self.second_only


def exact_binomial_two_sided(k: int, n: int) -> float:
    """P(X <= min(k, n-k)) + P(X >= max(k, n-k)) for X ~ Binomial(n, 1/2), at most 1."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def mcnemar(first_right: Tensor, second_right: Tensor) -> McNemarResult:
    """Exact McNemar test of two models on the same N images: first_right, second_right [N]
    booleans (prediction == label of each model, in the same image order)."""
    for name, value in (("first_right", first_right), ("second_right", second_right)):
        check_tensor(value, f"{name} [N] booleans", "mcnemar")
    if first_right.shape != second_right.shape or first_right.dim() != 1:
        raise ValueError(f"mcnemar expects two [N] tensors for the same N images, got "
                         f"{tuple(first_right.shape)} and {tuple(second_right.shape)}")
    first, second = first_right.bool(), second_right.bool()
    b, c = int((first & ~second).sum()), int((~first & second).sum())
    return McNemarResult(b, c, exact_binomial_two_sided(b, b + c))


def holm(p_values: dict) -> dict:
    """Holm's step-down adjustment of several p-values (same keys): controls the chance of any
    false "significant" among all the comparisons made."""
    order = sorted(p_values, key=p_values.get)
    adjusted, running = {}, 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[key]))
        adjusted[key] = running
    return adjusted
