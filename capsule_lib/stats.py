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
    """Accuracy of the second model minus the first's on the same N images, with an interval
    [low, high] (fractions, not percent)."""
    difference: float
    low: float
    high: float


def binomial_tail_at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in logarithms (no overflow for large n)."""
    if k <= 0 or p >= 1:
        return 1.0 if k <= n else 0.0
    if p <= 0 or k > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    return sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                        + i * log_p + (n - i) * log_q) for i in range(k, n + 1))


def clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval for a binomial proportion from k of n: the p at
    which seeing k or more (for the lower end), or k or fewer (the upper end), has probability
    (1 - confidence) / 2. Found by bisection on the binomial tail, to 1e-12."""
    tail = (1 - confidence) / 2

    def solve(too_low) -> float:  # the p in [0, 1] where too_low(p) turns False
        low, high = 0.0, 1.0
        while high - low > 1e-12:
            middle = (low + high) / 2
            low, high = (middle, high) if too_low(middle) else (low, middle)
        return (low + high) / 2

    lower = 0.0 if k == 0 else solve(lambda p: binomial_tail_at_least(k, n, p) < tail)
    upper = 1.0 if k == n else solve(
        lambda p: 1 - binomial_tail_at_least(k + 1, n, p) > tail)
    return lower, upper


def paired_difference(first_right: Tensor, second_right: Tensor,
                      confidence: float = 0.95) -> PairedDifference:
    """Accuracy difference of two models on the same N images, with an exact paired interval.

    The difference of the accuracies is (c - b) / N, with b, c as in McNemar's test: only the
    b + c disagreements count. Given them, c ~ Binomial(b + c, q), and the difference is
    (b + c) / N x (2q - 1); the interval maps the exact (Clopper-Pearson) interval for q the
    same way. So it excludes 0 exactly when McNemar's exact test rejects at 1 - confidence
    (mcnemar(...).p_value < 1 - confidence), and a plot of these intervals cannot disagree with
    the tests. When the models never disagree the interval is the single point 0. For m
    comparisons shown together, confidence = 1 - 0.05 / m makes them simultaneous 95%
    intervals (Bonferroni; at least as strict as holm() on the same p-values)."""
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) \
            or not 0 < confidence < 1:
        raise ValueError(f"paired_difference: confidence must be a number in (0, 1), e.g. "
                         f"0.95, got {confidence!r}")
    test = mcnemar(first_right, second_right)  # checks the inputs, counts b and c
    n = first_right.numel()
    check_not_empty(n, "paired_difference")
    b, c = test.first_only, test.second_only
    if b + c == 0:
        return PairedDifference(0.0, 0.0, 0.0)
    q_low, q_high = clopper_pearson(c, b + c, confidence)
    scale = (b + c) / n
    return PairedDifference((c - b) / n, scale * (2 * q_low - 1), scale * (2 * q_high - 1))


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
