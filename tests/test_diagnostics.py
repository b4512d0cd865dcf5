import math

import pytest
import torch
from torch import nn

from capsule_lib import dynamic_routing
from capsule_lib.capsnet import CapsNet
from capsule_lib.deep_capsnet import DeepCapsNet
from capsule_lib.efficient_capsnet import EfficientCapsNet
from capsule_lib.diagnostics import (ACTIVE_THRESHOLD, capsule_activation_stats,
                                     collect_capsule_lengths, collect_top_coupling_counts,
                                     coupling_entropy, dead_capsule_fraction, gradient_norms,
                                     mean_coupling_entropy, starved_parent_fraction,
                                     top_coupling_counts)
from capsule_lib.interfaces import ModelOutput


@pytest.fixture(scope="module")
def capsnet():
    torch.manual_seed(0)
    return CapsNet()


def test_activation_stats_on_constructed_lengths():
    lengths = torch.tensor([[0.0, 0.5, 0.05],
                            [0.2, 0.5, 0.02]])
    stats = capsule_activation_stats(lengths)
    assert torch.allclose(stats.mean, torch.tensor([0.1, 0.5, 0.035]))
    assert torch.allclose(stats.std, torch.tensor([0.1, 0.0, 0.015]))
    assert torch.allclose(stats.max, torch.tensor([0.2, 0.5, 0.05]))
    assert torch.equal(stats.active_fraction, torch.tensor([0.5, 1.0, 0.0]))


def test_dead_capsule_fraction():
    lengths = torch.full((100, 8), 0.01)
    lengths[3, 0] = 0.9            # active once: not dead
    lengths[:, 1] = 0.3            # always active
    lengths[:, 2] = ACTIVE_THRESHOLD   # exactly at the threshold: not above it, so dead
    assert dead_capsule_fraction(lengths) == pytest.approx(6 / 8)
    assert dead_capsule_fraction(lengths, threshold=0.5) == pytest.approx(7 / 8)
    assert dead_capsule_fraction(lengths, threshold=0.0) == 0.0


def test_lengths_shape_is_checked():
    with pytest.raises(ValueError, match="unsqueeze"):
        dead_capsule_fraction(torch.rand(10))


def test_entropy_of_uniform_and_one_hot():
    uniform = torch.full((5, 10), 0.1)
    one_hot = nn.functional.one_hot(torch.arange(5) % 10, 10).float()
    assert torch.allclose(coupling_entropy(uniform), torch.ones(5))
    in_nats = coupling_entropy(uniform, normalized=False)
    assert torch.allclose(in_nats, torch.full((5,), math.log(10)))
    assert torch.equal(coupling_entropy(one_hot), torch.zeros(5))
    half = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert coupling_entropy(half).item() == pytest.approx(0.5)


def test_entropy_per_iteration_of_dynamic_routing():
    torch.manual_seed(0)
    votes = torch.randn(3, 20, 10, 16)
    couplings = dynamic_routing(votes, iterations=3).couplings        # [3, B, 20, 10]
    per_iteration = mean_coupling_entropy(couplings)
    assert per_iteration.shape == (3,)
    assert per_iteration[0].item() == pytest.approx(1.0)             # b_ij = 0: uniform
    assert per_iteration[2] < per_iteration[0]                        # routing sharpens
    assert mean_coupling_entropy(couplings[-1]).dim() == 0


def test_collect_capsnet_lengths_from_tensor_and_dataset(capsnet):
    images = torch.rand(3, 1, 28, 28)
    dataset = torch.utils.data.TensorDataset(images, torch.arange(3))
    from_tensor = collect_capsule_lengths(capsnet, images, batch_size=2)
    from_dataset = collect_capsule_lengths(capsnet, dataset, batch_size=3)
    assert from_tensor["primary"].shape == (3, 1152) and from_tensor["digit"].shape == (3, 10)
    capsnet.eval()
    with torch.no_grad():
        assert torch.allclose(from_dataset["digit"], capsnet(images).scores, atol=1e-5)
        primary = capsnet.encode_primary_capsules(images).norm(dim=-1)
    capsnet.train()
    assert torch.allclose(from_tensor["primary"], primary, atol=1e-5)
    assert capsnet.training                                            # mode restored


def test_collect_lengths_with_a_layer_function_and_loader(capsnet):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        torch.rand(4, 1, 28, 28), torch.arange(4)), batch_size=3)
    lengths = collect_capsule_lengths(capsnet, loader, lambda m, x: {"digit": m(x).scores})
    assert list(lengths) == ["digit"] and lengths["digit"].shape == (4, 10)
    with pytest.raises(ValueError, match="layer_fn"):
        collect_capsule_lengths(nn.Linear(2, 2), torch.rand(2, 2))


def test_capsnet_gradient_norms_are_ordered_and_finite(capsnet):
    norms = gradient_norms(capsnet, torch.rand(2, 1, 28, 28), torch.tensor([1, 2]))
    assert list(norms) == ["conv1.0", "primary_capsules.conv", "digit_capsules",
                           "decoder.layers.0", "decoder.layers.2", "decoder.layers.4"]
    assert all(math.isfinite(v) and v > 0 for v in norms.values())
    assert all(p.grad is None for p in capsnet.parameters())


def test_gradient_norms_follow_execution_not_registration_order():
    class Backwards(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 3)      # registered first, runs last
            self.body = nn.Linear(2, 4)

        def forward(self, x, labels=None):
            return ModelOutput(self.head(torch.relu(self.body(x))))

        def loss(self, output, images, labels):
            return nn.functional.cross_entropy(output.scores, labels)

    norms = gradient_norms(Backwards(), torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))
    assert list(norms) == ["body", "head"]


def test_deep_capsnet_lengths_and_gradient_norms():
    torch.manual_seed(0)
    model = DeepCapsNet(hidden_layers=2)
    images, labels = torch.rand(3, 1, 28, 28), torch.tensor([0, 5, 9])
    lengths = collect_capsule_lengths(model, images)
    assert list(lengths) == ["primary", "hidden1", "hidden2", "class"]
    assert lengths["primary"].shape == (3, 288) and lengths["class"].shape == (3, 10)
    norms = gradient_norms(model, images, labels)
    assert list(norms) == ["conv1.0", "primary_capsules.conv", "capsule_layers.0",
                           "capsule_layers.1", "capsule_layers.2"]
    assert all(math.isfinite(v) and v > 0 for v in norms.values())


def test_efficient_capsnet_lengths():
    torch.manual_seed(0)
    lengths = collect_capsule_lengths(EfficientCapsNet(), torch.rand(3, 1, 28, 28))
    assert lengths["primary"].shape == (3, 16) and lengths["digit"].shape == (3, 10)
    assert (lengths["primary"] < 1).all()


# ----------------------------------------------------------------------------------------------
# Starvation: parents that receive no child's largest coupling

def test_top_coupling_counts_count_each_rows_largest_parent():
    couplings = torch.tensor([[[0.7, 0.2, 0.1, 0.0],
                               [0.1, 0.6, 0.3, 0.0]],
                              [[0.8, 0.1, 0.1, 0.0],
                               [0.2, 0.2, 0.5, 0.1]]])              # [B=2, n_in=2, n_out=4]
    counts = top_coupling_counts(couplings)
    assert counts.tolist() == [2, 1, 1, 0]
    assert starved_parent_fraction(counts) == 0.25
    # counts add up over batches as over one larger batch
    torch.testing.assert_close(top_coupling_counts(couplings[:1])
                               + top_coupling_counts(couplings[1:]), counts)


def test_uniform_couplings_starve_no_parent_and_one_hot_couplings_can():
    uniform = torch.full((5, 7, 3), 1 / 3)
    assert top_coupling_counts(uniform).tolist() == [35, 35, 35]
    assert starved_parent_fraction(top_coupling_counts(uniform)) == 0.0
    one_hot = torch.nn.functional.one_hot(torch.zeros(5, 7, dtype=torch.long), 3).float()
    assert top_coupling_counts(one_hot).tolist() == [35, 0, 0]
    assert starved_parent_fraction(top_coupling_counts(one_hot)) == pytest.approx(2 / 3)


def test_top_coupling_counts_reject_what_is_not_couplings():
    with pytest.raises(ValueError, match="sum to 1"):
        top_coupling_counts(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="n_out"):
        starved_parent_fraction(torch.tensor([[1, 2]]))


def test_collect_top_coupling_counts_names_the_parent_layers():
    torch.manual_seed(0)
    images = torch.rand(3, 1, 28, 28)
    counts = collect_top_coupling_counts(DeepCapsNet(hidden_layers=2), images, batch_size=2)
    assert list(counts) == ["hidden1", "hidden2", "class"]
    # every input capsule of every image gives at least one count
    assert counts["hidden1"].sum() >= 3 * 288 and counts["class"].sum() >= 3 * 32
    assert list(collect_top_coupling_counts(
        DeepCapsNet(hidden_layers=0, learned_couplings=True), images)) == ["class"]
