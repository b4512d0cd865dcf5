"""Helpers for the assignments' autograder tests.

Every assignment folder holds an identical copy of this file (otter assign only ships files from
the notebook's own folder; tests/test_assignments.py checks that the copies agree). Each
assignment config lists it under `files:`, so `otter assign` puts it next to the student notebook
and into the autograder zip: the tests import it on a student's machine, in Colab and in
`otter run` alike.
It holds no solutions.
"""
from contextlib import contextmanager
from typing import Callable, Iterator

import torch


def _stand_in(*args, **kwargs):
    raise RuntimeError(
        f"capsule_lib.{__import__('sys')._getframe().f_code.co_name} was called while your code "
        "ran. This question asks you to write it yourself with torch operations.")


@contextmanager
def library_disabled(*functions: Callable) -> Iterator[None]:
    """Inside the block, calling any of `functions` raises RuntimeError naming it.

    The functions' code is swapped for a stand-in that raises, so every name bound to them stops
    working, however it was imported (`from capsule_lib import squash as s` included); the real
    code is put back when the block ends. Tests compute the library's answer first, then call the
    student's function inside this block: a submission that only calls the library fails.
    """
    saved = [function.__code__ for function in functions]
    try:
        for function in functions:
            function.__code__ = _stand_in.__code__.replace(co_name=function.__name__)
        yield
    finally:
        for function, code in zip(functions, saved):
            function.__code__ = code


def require_function(function, name: str) -> None:
    """Fail with a clear message unless the notebook defined `name` as a function."""
    assert callable(function), (
        f"`{name}` is not defined as a function yet (found {type(function).__name__}): run the "
        f"cell that defines it, with that exact name, before checking.")


def random_vectors(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian vectors whose lengths spread from about 0.01 to about 20 times the typical one,
    so that short, medium and long inputs all occur."""
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(*shape, generator=generator, dtype=torch.float64)
    scales = torch.logspace(-2, 1.3, shape[0], dtype=torch.float64)
    scales = scales.view(-1, *([1] * (len(shape) - 1)))
    return (vectors * scales).to(dtype)


def describe_difference(actual: torch.Tensor, expected: torch.Tensor) -> str:
    """'largest difference 0.31 at index (2, 5): got 0.1, expected 0.41'."""
    difference = (actual.double() - expected.double()).abs()
    flat_index = int(torch.nan_to_num(difference, nan=float("inf")).argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), difference.shape))
    return (f"largest difference {float(difference[index]):.3g} at index {index}: got "
            f"{float(actual[index]):.6g}, expected {float(expected[index]):.6g}")


def check_tensor(result, expected_shape: tuple[int, ...], call: str) -> torch.Tensor:
    """Fail unless `result` is a finite tensor of `expected_shape`; `call` names what made it."""
    assert result is not None, f"{call} returned None: the function has no `return` yet"
    assert isinstance(result, torch.Tensor), (
        f"{call} returned {type(result).__name__}, expected a torch.Tensor")
    assert tuple(result.shape) == tuple(expected_shape), (
        f"{call} returned shape {tuple(result.shape)}, expected {tuple(expected_shape)}")
    assert torch.isfinite(result).all(), (
        f"{call} returned {int((~torch.isfinite(result)).sum())} NaN or infinite value(s)")
    return result


def check_close(actual: torch.Tensor, expected: torch.Tensor, call: str, what: str,
                tolerance: float = 1e-5) -> None:
    """Fail unless actual and expected agree to `tolerance` (relative and absolute)."""
    assert torch.allclose(actual.double(), expected.double(), rtol=tolerance, atol=tolerance), (
        f"{call}: {what} differs from capsule_lib's; {describe_difference(actual, expected)}")
