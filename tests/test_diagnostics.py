import math

import pytest
import torch
from torch import nn

from capsule_lib import dynamic_routing, margin_loss, reconstruction_loss, squash
from capsule_lib.diagnostics import (ACTIVE_THRESHOLD, capsule_activation_stats,
                                     collect_capsule_lengths, coupling_entropy,
                                     dead_capsule_fraction, gradient_norms, mean_coupling_entropy)
from capsule_lib.interfaces import ModelOutput


class TinyCapsNet(nn.Module):
    """A small model with CapsNet's submodule names and contract (6x6 grid, 2 types, 4D)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 9)                                   # 28 -> 20
        self.primary_capsules = nn.Sequential(nn.Conv2d(8, 2 * 4, 9, stride=2))   # 20 -> 6
        self.digit_capsules = nn.Linear(4, 10 * 16, bias=False)
        self.decoder_net = nn.Sequential(nn.Linear(160, 784), nn.Sigmoid())

    def decoder(self, poses, mask_labels):
        mask = nn.functional.one_hot(mask_labels, 10).to(poses.dtype)[:, :, None]
        return self.decoder_net((poses * mask).flatten(1)).view(-1, 1, 28, 28)

    def forward(self, images, labels=None):
        primary = self.primary_capsules_of(images)                        # [B, 72, 4]
        votes = self.digit_capsules(primary).view(len(images), -1, 10, 16)
        poses, couplings = dynamic_routing(votes)
        scores = poses.norm(dim=-1)
        mask = labels if labels is not None else scores.argmax(1)
        return ModelOutput(scores, poses, self.decoder(poses, mask), couplings)

    def primary_capsules_of(self, images):
        features = self.primary_capsules(self.conv1(images))             # [B, 8, 6, 6]
        return squash(features.view(len(images), 2, 4, 36).transpose(2, 3).flatten(1, 2))

    def loss(self, output, images, labels):
        return (margin_loss(output.scores, labels)
                + reconstruction_loss(output.reconstructions, images))


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
    assert torch.allclose(coupling_entropy(uniform, normalized=False), torch.full((5,), math.log(10)))
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


def test_collect_capsule_lengths_from_tensor_and_loader():
    torch.manual_seed(0)
    model = TinyCapsNet()
    images = torch.rand(5, 1, 28, 28)
    dataset = torch.utils.data.TensorDataset(images, torch.arange(5))

    def layers(model, images):
        return {"primary": model.primary_capsules_of(images).norm(dim=-1),
                "digit": model(images).scores}

    from_tensor = collect_capsule_lengths(model, images, layers, batch_size=2)
    from_dataset = collect_capsule_lengths(model, dataset, layers, batch_size=3)
    assert from_tensor["primary"].shape == (5, 72) and from_tensor["digit"].shape == (5, 10)
    assert torch.allclose(from_tensor["digit"], from_dataset["digit"], atol=1e-6)
    assert model.training                                              # mode restored


def test_gradient_norms_are_ordered_and_finite():
    torch.manual_seed(0)
    model = TinyCapsNet()
    norms = gradient_norms(model, torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3]))
    assert list(norms) == ["conv1", "primary_capsules.0", "digit_capsules", "decoder_net.0"]
    assert all(math.isfinite(v) and v > 0 for v in norms.values())
    assert all(p.grad is None for p in model.parameters())


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
