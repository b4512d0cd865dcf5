"""capsule_lib.stats: the exact McNemar test, the paired accuracy difference and Holm's
adjustment."""
import math

import pytest
import torch

from capsule_lib.stats import (exact_binomial_two_sided, holm, mcnemar, paired_difference,
                               sign_flip_test)


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
    standard_error = per_image.std(unbiased=False).item() / math.sqrt(200)
    assert math.isclose(result.difference, per_image.mean().item(), abs_tol=1e-12)
    assert math.isclose(result.high - result.difference, 1.959964 * standard_error,
                        rel_tol=1e-6)
    assert math.isclose(result.difference - result.low, result.high - result.difference,
                        rel_tol=1e-9)
    wider = paired_difference(first, second, confidence=1 - 0.05 / 6)
    assert math.isclose(wider.high - wider.difference, 2.638257 * standard_error, rel_tol=1e-6)


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
