"""capsule_lib.stats: the exact McNemar test, the paired accuracy difference and Holm's
adjustment."""
import math

import pytest
import torch

from capsule_lib.stats import (binomial_tail_at_least, clopper_pearson, exact_binomial_two_sided,
                               holm, mcnemar, paired_difference, sign_flip_test)


def p_value_by_enumeration(k: int, n: int) -> float:
    """Sum of the probabilities of all outcomes no more likely than k (the usual definition)."""
    probabilities = [math.comb(n, i) / 2 ** n for i in range(n + 1)]
    return min(1.0, sum(p for p in probabilities if p <= probabilities[k] * (1 + 1e-12)))


@pytest.mark.parametrize("k, n", [(0, 5), (3, 10), (10, 10), (7, 30), (40, 90), (5, 10)])
def test_exact_binomial_matches_the_definition(k, n):
    assert math.isclose(exact_binomial_two_sided(k, n), p_value_by_enumeration(k, n),
                        rel_tol=1e-9)
    assert exact_binomial_two_sided(0, 0) == 1.0


def test_mcnemar_counts_only_disagreements():
    first = torch.tensor([1, 1, 1, 0, 0, 1, 1, 0], dtype=torch.bool)
    second = torch.tensor([1, 0, 0, 0, 1, 1, 0, 0], dtype=torch.bool)
    result = mcnemar(first, second)
    assert (result.first_only, result.second_only, result.disagreements) == (3, 1, 4)
    assert math.isclose(result.p_value, 0.625)
    assert mcnemar(first, first).p_value == 1.0


def test_mcnemar_rejects_different_lengths():
    with pytest.raises(ValueError, match="same N images"):
        mcnemar(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))


def test_paired_difference_is_the_mean_of_per_image_differences():
    generator = torch.Generator().manual_seed(0)
    first = torch.rand(200, generator=generator) < 0.9
    second = torch.rand(200, generator=generator) < 0.8
    result = paired_difference(first, second)
    per_image = second.double() - first.double()                   # -1, 0 or +1 per image
    assert math.isclose(result.difference, per_image.mean().item(), abs_tol=1e-12)
    assert result.low < result.difference < result.high


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (8, 28), (40, 90)])
def test_clopper_pearson_ends_leave_the_stated_tail(k, n):
    low, high = clopper_pearson(k, n, 0.95)
    if k > 0:
        assert math.isclose(binomial_tail_at_least(k, n, low), 0.025, rel_tol=1e-6)
    if k < n:
        assert math.isclose(1 - binomial_tail_at_least(k + 1, n, high), 0.025, rel_tol=1e-6)
    assert (low == 0) == (k == 0) and (high == 1) == (k == n)


def test_binomial_tail_for_large_n_and_edges():
    # P(X >= n/2) = 1/2 + P(X = n/2) / 2 for a fair coin
    assert math.isclose(binomial_tail_at_least(1500, 3000, 0.5),
                        0.5 + math.comb(3000, 1500) / 2 ** 3001, rel_tol=1e-9)
    assert binomial_tail_at_least(0, 5, 0.3) == 1.0 and binomial_tail_at_least(6, 5, 0.3) == 0.0
    assert binomial_tail_at_least(2, 5, 0.0) == 0.0 and binomial_tail_at_least(2, 5, 1.0) == 1.0


def test_paired_interval_excludes_zero_exactly_when_mcnemar_rejects():
    for b in range(0, 31, 3):
        for c in range(0, 31):
            first = torch.tensor([True] * b + [False] * c + [True] * 50)
            second = torch.tensor([False] * b + [True] * c + [True] * 50)
            for confidence in (0.95, 1 - 0.05 / 6):
                result = paired_difference(first, second, confidence)
                rejects = mcnemar(first, second).p_value < 1 - confidence
                assert (result.low > 0 or result.high < 0) == rejects, (b, c, confidence)


def test_paired_difference_of_identical_models_is_zero_with_no_width():
    right = torch.tensor([1, 0, 1, 1], dtype=torch.bool)
    result = paired_difference(right, right)
    assert (result.difference, result.low, result.high) == (0.0, 0.0, 0.0)


def test_paired_difference_rejects_empty_and_mismatched_inputs():
    with pytest.raises(ValueError, match="empty batch"):
        paired_difference(torch.ones(0, dtype=torch.bool), torch.ones(0, dtype=torch.bool))
    with pytest.raises(ValueError, match="same N images"):
        paired_difference(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="confidence must be a number in"):
        paired_difference(torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool), 95)


def test_sign_flip_test_counts_sign_patterns():
    # |1|, |1|, |4|, |3| with sum -7: 6 of the 16 patterns reach |sum| >= 7 (zeros change no sum)
    assert math.isclose(sign_flip_test([0, 1, -1, -4, -3, 0]), 6 / 16)
    # all of one sign: only the two extreme patterns are as far from zero
    assert math.isclose(sign_flip_test([2, 3, 1, 5, 4, 2]), 2 / 64)
    assert sign_flip_test([0, 0, 0]) == 1.0


def test_sign_flip_test_rejects_bad_input():
    for bad in ([], [1.0, float("nan")], list(range(1, 22))):
        with pytest.raises(ValueError, match="sign_flip_test"):
            sign_flip_test(bad)


def test_holm_adjusts_step_down_and_stays_monotone():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
