"""Half precision: squash and routing stay finite and right for any length under float16 and
bfloat16, and a whole CapsNet trains a step under torch.autocast on the CPU (bfloat16)."""
import pytest
import torch

from capsule_lib import CapsNet, EfficientCapsNet, dynamic_routing, self_attention_routing
from capsule_lib.squash import efficient_squash, squash

HALF = [torch.float16, torch.bfloat16]


def unit_vectors(n: int = 5, dim: int = 16) -> torch.Tensor:
    vectors = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    return vectors / vectors.norm(dim=-1, keepdim=True)


def spread_unit_vectors(n: int = 5, dim: int = 16) -> torch.Tensor:
    """Unit vectors whose components all have size 1 / sqrt(dim), with random signs: at length
    1e5 every component (25,000) is still a float16 number (the largest is 65,504)."""
    signs = torch.randint(0, 2, (n, dim), generator=torch.Generator().manual_seed(0)) * 2 - 1
    return signs / dim ** 0.5


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("length", [1e3, 1e5])
@pytest.mark.parametrize("function", [squash, efficient_squash])
def test_squash_of_long_half_precision_vectors_has_length_one(function, length, dtype):
    s = (spread_unit_vectors() * length).to(dtype)    # float16 squares these lengths to inf
    assert torch.isfinite(s).all()
    v = function(s)
    assert v.dtype == dtype
    lengths = v.float().norm(dim=-1)
    assert torch.isfinite(lengths).all()
    torch.testing.assert_close(lengths, torch.ones(5), atol=1e-2, rtol=0)
    cosine = torch.nn.functional.cosine_similarity(v.float(), s.float(), dim=-1)
    assert (cosine > 0.99).all()                     # the direction is kept


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("function", [squash, efficient_squash])
def test_half_precision_squash_agrees_with_float32(function, dtype):
    s = torch.randn(64, 16, generator=torch.Generator().manual_seed(1)) * 3
    torch.testing.assert_close(function(s.to(dtype)).float(), function(s), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", HALF)
def test_dynamic_routing_of_coherent_half_precision_votes_is_finite(dtype):
    # 1,152 votes of length 5 that agree: with couplings 1/10, s_j has length 576, whose
    # square (331,776) overflows float16.
    direction = unit_vectors(10)                                          # [10, 16]
    votes = 5 * direction.expand(2, 1152, 10, 16).contiguous()            # [2, 1152, 10, 16]
    outputs, couplings = dynamic_routing(votes.to(dtype), iterations=3)
    assert outputs.dtype == dtype and torch.isfinite(outputs.float()).all()
    assert torch.isfinite(couplings.float()).all()
    reference = dynamic_routing(votes, iterations=3).outputs
    torch.testing.assert_close(outputs.float(), reference, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", HALF)
def test_self_attention_routing_of_long_half_precision_votes_is_finite(dtype):
    votes = 300 * torch.randn(2, 16, 10, 16, generator=torch.Generator().manual_seed(2))
    outputs, couplings = self_attention_routing(votes.to(dtype), torch.zeros(16, 10))
    assert torch.isfinite(outputs.float()).all() and torch.isfinite(couplings.float()).all()
    reference = self_attention_routing(votes, torch.zeros(16, 10)).outputs
    torch.testing.assert_close(outputs.float(), reference, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("make_model", [CapsNet, EfficientCapsNet])
def test_forward_and_backward_under_cpu_autocast_bfloat16(make_model):
    torch.manual_seed(0)
    model = make_model()
    images = torch.rand(4, 1, 28, 28)
    labels = torch.tensor([0, 3, 5, 9])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(images, labels)
        loss = model.loss(output, images, labels)
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    with torch.no_grad():
        reference = model.loss(model(images, labels), images, labels)
    assert abs(loss.item() - reference.item()) < 0.05 * reference.item() + 1e-3
