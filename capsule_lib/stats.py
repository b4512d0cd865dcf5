"""Paired comparisons of two classifiers on the same test images.

Two models scored on the same digits are not independent measurements: most digits are right
(or wrong) for both. McNemar's test looks only at the digits where they disagree:
b = right for the first model only, c = right for the second only. If the models were equally
accurate, each disagreement would go either way with probability 1/2, so b ~ Binomial(b + c,
1/2); the exact two-sided p-value is the probability of a split at least as uneven as the one
seen.
`paired_difference` gives the accuracy difference itself with an interval from the same paired
data, for plots that should show what the test sees.

Over training seeds the unit is a seed, not a digit: `sign_flip_test` asks whether the mean of
per-seed differences (e.g. errors of recipe B minus recipe A, seed by seed) is beyond chance.
"""
import math
from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import Tensor

from .checks import check_not_empty, check_tensor


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


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of the second model minus the first's on the same N images, with an
    approximate interval [low, high] (fractions, not percent)."""
    difference: float
    low: float
    high: float


def paired_difference(first_right: Tensor, second_right: Tensor,
                      confidence: float = 0.95) -> PairedDifference:
    """Accuracy difference of two models on the same N images, with a paired interval.

    Per image, d_i = second_right_i - first_right_i is -1, 0 or +1, and the difference of the
    accuracies is the mean of the d_i: (c - b) / N with b, c as in McNemar's test. Its standard
    error is the d_i's standard deviation over sqrt(N), sqrt(((b + c) / N - d^2) / N): only the
    disagreements spread it, which is why it is narrower than two separate binomial intervals.
    The interval is the normal approximation, d +- 1.96 standard errors at confidence 0.95:
    rough when b + c is a handful, and of zero width when the models never disagree. For m
    comparisons shown together, confidence = 1 - 0.05 / m makes them simultaneous 95%
    intervals (Bonferroni), the counterpart of holm() for intervals."""
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) \
            or not 0 < confidence < 1:
        raise ValueError(f"paired_difference: confidence must be a number in (0, 1), e.g. "
                         f"0.95, got {confidence!r}")
    test = mcnemar(first_right, second_right)  # checks the inputs, counts b and c
    n = first_right.numel()
    check_not_empty(n, "paired_difference")
    difference = (test.second_only - test.first_only) / n
    standard_error = math.sqrt(max(test.disagreements / n - difference ** 2, 0.0) / n)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)  # 1.96 at 0.95
    return PairedDifference(difference, difference - z * standard_error,
                            difference + z * standard_error)


MAX_SIGN_FLIP_PAIRS = 20  # 2^20 sign patterns, about a million sums


def sign_flip_test(differences) -> float:
    """Exact two-sided p-value that paired differences (one per seed, say) have mean zero.

    If the two conditions were interchangeable, each difference would be as likely to have the
    opposite sign; the p-value is the share of all 2^k sign patterns whose sum is at least as
    far from zero as the observed sum (zeros count in k but cannot change a sum). It assumes
    no distribution, but with k pairs it cannot go below 2 / 2^k: 0.031 for 6 seeds."""
    values = torch.as_tensor(differences, dtype=torch.float64).flatten()
    if values.numel() == 0 or not bool(torch.isfinite(values).all()):
        raise ValueError(f"sign_flip_test expects one or more finite differences, got "
                         f"{differences!r}")
    if values.numel() > MAX_SIGN_FLIP_PAIRS:
        raise ValueError(f"sign_flip_test enumerates 2^k sign patterns; k = {values.numel()} "
                         f"is more than {MAX_SIGN_FLIP_PAIRS}: sample the patterns instead")
    k = values.numel()
    patterns = torch.arange(2 ** k)[:, None] >> torch.arange(k) & 1     # [2^k, k] bits
    sums = ((1 - 2 * patterns) * values).sum(1)                         # [2^k]
    observed = values.sum().abs()
    return (sums.abs() >= observed - 1e-9 * (1 + observed)).double().mean().item()


def holm(p_values: dict) -> dict:
    """Holm's step-down adjustment of several p-values (same keys): controls the chance of any
    false "significant" among all the comparisons made."""
    order = sorted(p_values, key=p_values.get)
    adjusted, running = {}, 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[key]))
        adjusted[key] = running
    return adjusted
