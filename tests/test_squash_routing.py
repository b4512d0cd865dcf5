"""squash, efficient_squash, dynamic_routing and self_attention_routing: formulas, gradients
(gradcheck in float64), the properties the papers rely on, and shape errors."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from capsule_lib.routing import dynamic_routing, self_attention_routing
from capsule_lib.squash import efficient_squash, squash

SQUASHES = [squash, efficient_squash]


def textbook_squash(s):
    norm = s.norm(dim=-1, keepdim=True)
    return norm ** 2 / (1 + norm ** 2) * s / norm


def textbook_efficient_squash(s):
    norm = s.norm(dim=-1, keepdim=True)
    return (1 - 1 / torch.exp(norm)) * s / norm


# ----------------------------------------------------------------------------------------------
# squash


@pytest.mark.parametrize("function, reference", [(squash, textbook_squash),
                                                 (efficient_squash, textbook_efficient_squash)])
def test_squash_matches_the_papers_formula_away_from_zero(function, reference):
    torch.manual_seed(0)
    s = torch.randn(50, 16, dtype=torch.float64) * torch.logspace(-3, 2, 50, dtype=torch.float64)[:, None]
    torch.testing.assert_close(function(s), reference(s))


@pytest.mark.parametrize("function", SQUASHES)
def test_squash_gradcheck_in_float64(function):
    torch.manual_seed(1)
    s = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(function, (s,))
    assert torch.autograd.gradgradcheck(function, (s,))


@pytest.mark.parametrize("function", SQUASHES)
@pytest.mark.parametrize("scale", [0.0, 1e-12, 1e-7, 1e-4])
def test_squash_gradcheck_at_and_near_zero(function, scale):
    torch.manual_seed(2)
    s = (scale * torch.randn(3, 4, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(function, (s,), eps=1e-8, atol=1e-6)


@pytest.mark.parametrize("function, expected_jacobian", [(squash, 0.0), (efficient_squash, 1.0)])
def test_zero_vector_gives_zero_output_and_the_limit_gradient(function, expected_jacobian):
    """At s = 0 squash is flat (v ~ ||s|| s) and efficient_squash is the identity."""
    for dtype in (torch.float32, torch.float64):
        s = torch.zeros(2, 8, dtype=dtype, requires_grad=True)
        v = function(s)
        assert torch.equal(v, torch.zeros_like(v))
        jacobian = torch.autograd.functional.jacobian(function, s[0].detach())
        torch.testing.assert_close(jacobian, expected_jacobian * torch.eye(8, dtype=dtype))
        v.sum().backward()
        assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("function", SQUASHES)
def test_squash_works_on_the_requested_dimension(function):
    torch.manual_seed(3)
    s = torch.randn(2, 8, 5)
    torch.testing.assert_close(function(s, dim=1), function(s.transpose(1, 2)).transpose(1, 2))


# components 0 or of magnitude 1e-30 .. 1e3: far smaller ones make the test's own ||v||
# underflow (squash(s) ~ ||s|| s), which says nothing about the squash
component = st.one_of(st.just(0.0), st.floats(1e-30, 1e3), st.floats(-1e3, -1e-30))
vectors = st.lists(component, min_size=1, max_size=16)


@settings(max_examples=200, deadline=None)
@given(values=vectors)
def test_squash_properties_hold_for_any_vector(values):
    s = torch.tensor(values, dtype=torch.float64)
    norm = s.norm()
    for function in SQUASHES:
        v = function(s)
        assert torch.isfinite(v).all()
        assert v.norm() <= 1 + 1e-15                                # length below 1 (up to
        if norm < 30:                                               # rounding), strictly where
            assert v.norm() < 1                                     # float64 tells 1 - e^-30 from 1
        if norm > 0:
            assert torch.dot(v, s) >= 0                             # same direction:
            torch.testing.assert_close(v / v.norm(), s / norm)      # v is a positive multiple of s
    expected_length = norm ** 2 / (1 + norm ** 2)
    torch.testing.assert_close(squash(s).norm(), expected_length)
    torch.testing.assert_close(efficient_squash(s).norm(), -torch.expm1(-norm))


@settings(max_examples=100, deadline=None)
@given(short=st.floats(0, 10), long=st.floats(0, 10))
def test_squash_length_grows_with_the_input_length(short, long):
    short, long = sorted((short, long))
    direction = torch.tensor([0.6, 0.8], dtype=torch.float64)
    for function in SQUASHES:
        assert function(short * direction).norm() <= function(long * direction).norm()


# ----------------------------------------------------------------------------------------------
# dynamic routing


def reference_dynamic_routing(u_hat, iterations, bias=None):
    """Procedure 1 of Sabour et al., written with explicit loops over capsules."""
    batch, n_in, n_out, dim = u_hat.shape
    b = torch.zeros(batch, n_in, n_out, dtype=u_hat.dtype)
    for _ in range(iterations):
        c = torch.zeros_like(b)
        for i in range(n_in):
            c[:, i] = torch.exp(b[:, i]) / torch.exp(b[:, i]).sum(dim=-1, keepdim=True)
        s = torch.zeros(batch, n_out, dim, dtype=u_hat.dtype)
        for j in range(n_out):
            for i in range(n_in):
                s[:, j] += c[:, i, j, None] * u_hat[:, i, j]
        if bias is not None:
            s = s + bias
        v = textbook_squash(s)
        for i in range(n_in):
            for j in range(n_out):
                b[:, i, j] += (u_hat[:, i, j] * v[:, j]).sum(dim=-1)
    return v, c


@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
@pytest.mark.parametrize("with_bias", [False, True])
def test_dynamic_routing_matches_procedure_1(iterations, with_bias):
    torch.manual_seed(4)
    u_hat = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    bias = torch.randn(3, 4, dtype=torch.float64) if with_bias else None
    outputs, couplings = dynamic_routing(u_hat, iterations, bias)
    expected_outputs, expected_last_couplings = reference_dynamic_routing(u_hat, iterations, bias)
    torch.testing.assert_close(outputs, expected_outputs)
    torch.testing.assert_close(couplings[-1], expected_last_couplings)
    assert couplings.shape == (iterations, 2, 5, 3)


def test_dynamic_routing_couplings_start_uniform_and_sum_to_one_over_outputs():
    torch.manual_seed(5)
    u_hat = torch.randn(3, 7, 4, 6)
    couplings = dynamic_routing(u_hat, iterations=4).couplings        # [4, 3, 7, 4]
    torch.testing.assert_close(couplings[0], torch.full((3, 7, 4), 0.25))   # b_ij = 0 at start
    torch.testing.assert_close(couplings.sum(dim=-1), torch.ones(4, 3, 7))  # over outputs j
    assert not torch.allclose(couplings.sum(dim=2), torch.ones(4, 3, 4))   # not over inputs i
    assert not torch.allclose(couplings[-1], couplings[0])             # routing changed them


def test_one_routing_iteration_is_the_uniform_average_of_the_votes():
    torch.manual_seed(6)
    u_hat = torch.randn(2, 9, 10, 16)
    outputs, couplings = dynamic_routing(u_hat, iterations=1)
    torch.testing.assert_close(couplings, torch.full((1, 2, 9, 10), 0.1))
    torch.testing.assert_close(outputs, squash(u_hat.mean(dim=1) * 9 / 10))


def test_routing_state_is_per_call_not_learned():
    torch.manual_seed(7)
    u_hat = torch.randn(2, 5, 3, 4)
    first = dynamic_routing(u_hat, 3)
    torch.testing.assert_close(dynamic_routing(u_hat, 3).outputs, first.outputs)
    torch.testing.assert_close(dynamic_routing(u_hat[:1], 3).outputs, first.outputs[:1])


def test_dynamic_routing_gradcheck_in_float64():
    """The gradient through all iterations is the true gradient of the routing (with
    gradient_through_all_iterations=False it deliberately is not: see the next test)."""
    torch.manual_seed(8)
    u_hat = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, b: dynamic_routing(u, 3, b).outputs, (u_hat, bias))


def test_gradient_through_all_iterations_false_treats_couplings_as_constants():
    """With False, the gradient equals that of s_j = sum_i c_ij u_hat_j|i with the final c_ij
    frozen; with True it also flows through the couplings and differs."""
    torch.manual_seed(9)
    u_hat = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    weights = torch.randn(2, 3, 4, dtype=torch.float64)

    def gradient(function):
        votes = u_hat.clone().requires_grad_()
        (function(votes) * weights).sum().backward()
        return votes.grad

    frozen = dynamic_routing(u_hat, 3).couplings[-1]
    by_hand = gradient(lambda votes: squash(torch.einsum("bij,bijd->bjd", frozen, votes)))
    cut = gradient(lambda votes: dynamic_routing(votes, 3, gradient_through_all_iterations=False).outputs)
    full = gradient(lambda votes: dynamic_routing(votes, 3).outputs)
    torch.testing.assert_close(cut, by_hand)
    assert not torch.allclose(full, cut)
    torch.testing.assert_close(dynamic_routing(u_hat, 3, gradient_through_all_iterations=False).outputs,
                               dynamic_routing(u_hat, 3).outputs)


@pytest.mark.parametrize("shape", [(5, 3, 4), (2, 5, 3, 4, 1), (20,)])
def test_routings_reject_votes_of_the_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"votes u_hat must be a float tensor of shape \[batch, n_in, n_out, d_out\]"):
        dynamic_routing(torch.zeros(shape))
    with pytest.raises(ValueError, match=r"votes u_hat must be a float tensor of shape"):
        self_attention_routing(torch.zeros(shape), torch.zeros(5, 3))


def test_dynamic_routing_rejects_zero_iterations():
    with pytest.raises(ValueError, match="iterations must be a whole number >= 1"):
        dynamic_routing(torch.zeros(1, 2, 3, 4), iterations=0)


# ----------------------------------------------------------------------------------------------
# self-attention routing


def reference_self_attention_routing(u_hat, prior):
    """Mazzia et al.'s routing with explicit loops: A_ij = u_hat_j|i . sum_k u_hat_j|k."""
    batch, n_in, n_out, dim = u_hat.shape
    agreement = torch.zeros(batch, n_in, n_out, dtype=u_hat.dtype)
    for i in range(n_in):
        for j in range(n_out):
            for k in range(n_in):
                agreement[:, i, j] += (u_hat[:, i, j] * u_hat[:, k, j]).sum(dim=-1)
    couplings = torch.softmax(agreement / math.sqrt(dim), dim=2)
    s = torch.zeros(batch, n_out, dim, dtype=u_hat.dtype)
    for i in range(n_in):
        for j in range(n_out):
            s[:, j] += (couplings[:, i, j, None] + prior[i, j]) * u_hat[:, i, j]
    return textbook_efficient_squash(s), couplings


def test_self_attention_routing_matches_the_authors_formula():
    torch.manual_seed(10)
    u_hat = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    prior = torch.randn(5, 3, dtype=torch.float64)
    outputs, couplings = self_attention_routing(u_hat, prior)
    expected_outputs, expected_couplings = reference_self_attention_routing(u_hat, prior)
    torch.testing.assert_close(outputs, expected_outputs)
    torch.testing.assert_close(couplings, expected_couplings)
    torch.testing.assert_close(couplings.sum(dim=-1), torch.ones(2, 5, dtype=torch.float64))


def test_self_attention_routing_gradcheck_in_float64():
    torch.manual_seed(11)
    u_hat = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    prior = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, b: self_attention_routing(u, b).outputs, (u_hat, prior))


def test_self_attention_routing_with_zero_votes_is_uniform_and_finite():
    u_hat = torch.zeros(1, 4, 10, 16, requires_grad=True)
    outputs, couplings = self_attention_routing(u_hat, torch.zeros(4, 10))
    torch.testing.assert_close(couplings, torch.full((1, 4, 10), 0.1))
    outputs.sum().backward()
    assert torch.isfinite(outputs).all() and torch.isfinite(u_hat.grad).all()


def test_self_attention_routing_rejects_a_prior_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"prior must have shape \[n_in, n_out\] = \[4, 3\]"):
        self_attention_routing(torch.zeros(1, 4, 3, 2), torch.zeros(3, 4))
