"""The models of capsule_lib: sizes pinned to the papers, shapes, masking, losses, errors."""
import pytest
import torch

from capsule_lib.capsnet import CapsNet, CapsuleDecoder, PrimaryCapsules
from capsule_lib.efficient_capsnet import EfficientCapsNet


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return torch.rand(3, 1, 28, 28), torch.tensor([4, 0, 7])


# ----------------------------------------------------------------------------------------------
# CapsNet


@pytest.mark.parametrize("config, expected", [
    ({}, 8_215_568),
    ({"with_decoder": False}, 6_804_224),
    ({"output_bias": True}, 8_215_568 + 160),
    ({"with_decoder": False, "output_bias": True}, 6_804_224 + 160),
])
def test_capsnet_parameter_count(config, expected):
    assert n_parameters(CapsNet(**config)) == expected


def test_capsnet_layer_sizes():
    model = CapsNet()
    assert tuple(model.digit_capsules.weight.shape) == (1152, 10, 16, 8)
    assert model.digit_capsules.weight.numel() == 1_474_560
    assert n_parameters(model.decoder) == 1_411_344


@pytest.mark.parametrize("iterations", [1, 3])
def test_capsnet_output_shapes_and_ranges(batch, iterations):
    images, labels = batch
    output = CapsNet(routing_iterations=iterations)(images, labels)
    assert output.scores.shape == (3, 10)
    assert output.poses.shape == (3, 10, 16)
    assert output.reconstructions.shape == (3, 1, 28, 28)
    assert output.couplings.shape == (iterations, 3, 1152, 10)
    assert ((output.scores >= 0) & (output.scores < 1)).all()
    assert ((output.reconstructions >= 0) & (output.reconstructions <= 1)).all()
    torch.testing.assert_close(output.scores, output.poses.norm(dim=-1))
    torch.testing.assert_close(output.couplings.sum(dim=-1), torch.ones(iterations, 3, 1152))


def test_capsnet_one_iteration_is_uniform_coupling(batch):
    output = CapsNet(routing_iterations=1)(batch[0])
    torch.testing.assert_close(output.couplings, torch.full_like(output.couplings, 0.1))


def test_capsnet_without_decoder_returns_no_reconstructions(batch):
    images, labels = batch
    model = CapsNet(with_decoder=False)
    output = model(images, labels)
    assert model.decoder is None and output.reconstructions is None
    from capsule_lib.losses import margin_loss
    torch.testing.assert_close(model.loss(output, images, labels),
                               margin_loss(output.scores, labels))


def test_capsnet_loss_is_margin_plus_reconstruction(batch):
    from capsule_lib.losses import margin_loss
    images, labels = batch
    model = CapsNet()
    output = model(images, labels)
    expected = (margin_loss(output.scores, labels)
                + 0.0005 * ((output.reconstructions - images) ** 2).sum() / len(images))
    torch.testing.assert_close(model.loss(output, images, labels), expected)


@pytest.mark.parametrize("make_model", [CapsNet, EfficientCapsNet,
                                        lambda: CapsNet(output_bias=True,
                                                        gradient_through_all_iterations=False)])
def test_loss_is_finite_and_every_parameter_gets_a_finite_gradient(batch, make_model):
    torch.manual_seed(1)
    images, labels = batch
    model = make_model()
    loss = model.loss(model(images, labels), images, labels)
    assert torch.isfinite(loss)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_primary_capsules_of_matches_conv1_then_primary_capsules(batch):
    images = batch[0]
    model = CapsNet()
    primary = model.primary_capsules_of(images)
    assert primary.shape == (3, 1152, 8)
    torch.testing.assert_close(primary, model.primary_capsules(model.conv1(images)))
    assert (primary.norm(dim=-1) < 1).all()


def test_primary_capsule_holds_the_channels_of_one_type_at_one_position():
    """Conv output channel 8 t + k at (row, col) is component k of the capsule of type t at
    (row, col). Fill it with (k + 1) x id / 1000, where id = 1 + 36 t + 6 row + col numbers the
    capsules in (type, row, column) order; un-squashed, capsule number id - 1 must be
    id / 1000 x (1, ..., 8). A channels-first .view(B, 1152, 8) would put 8 positions of one
    channel into a capsule instead."""
    layer = PrimaryCapsules(in_channels=1, n_types=32, capsule_dim=8, kernel_size=1)
    layer.conv = torch.nn.Identity()                                   # feed the conv output in
    ids = torch.arange(1, 1153, dtype=torch.float64).view(32, 1, 6, 6)  # [type, 1, row, col]
    component = torch.arange(1, 9, dtype=torch.float64).view(1, 8, 1, 1)
    conv_output = (ids * component / 1000).reshape(1, 256, 6, 6)       # channel = 8 type + k
    v = layer(conv_output)[0]                                          # [1152, 8] squashed
    length = v.norm(dim=-1, keepdim=True)
    unsquashed = v / length * (length / (1 - length)).sqrt()           # ||s|| from ||v||
    expected = torch.arange(1, 1153, dtype=torch.float64).view(1152, 1) * torch.arange(1, 9) / 1000
    torch.testing.assert_close(unsquashed, expected.to(torch.float64))


def test_decoder_masks_true_label_when_given_and_longest_capsule_otherwise(batch):
    images, labels = batch
    torch.manual_seed(2)
    model = CapsNet()
    with_labels = model(images, labels)
    without_labels = model(images)
    longest = with_labels.scores.argmax(dim=1)
    torch.testing.assert_close(with_labels.reconstructions, model.decoder(with_labels.poses, labels))
    torch.testing.assert_close(without_labels.reconstructions,
                               model.decoder(with_labels.poses, longest))
    assert not torch.equal(labels, longest)           # so the two masks above really differ
    assert not torch.allclose(with_labels.reconstructions, without_labels.reconstructions)


def test_decoder_sees_only_the_masked_capsule():
    torch.manual_seed(3)
    decoder = CapsuleDecoder()
    poses = torch.randn(2, 10, 16)
    mask = torch.tensor([3, 8])
    changed = poses.clone()
    changed[0, 0] += 5.0                               # capsules other than the kept one
    changed[1, 3] -= 5.0
    torch.testing.assert_close(decoder(poses, mask), decoder(changed, mask))
    changed[0, 3] += 1.0                               # the kept capsule of example 0
    assert not torch.allclose(decoder(poses, mask)[0], decoder(changed, mask)[0])
    assert decoder(poses, mask).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("poses, mask, message", [
    (torch.zeros(2, 160), torch.zeros(2, dtype=torch.long), r"poses must have shape"),
    (torch.zeros(2, 10, 16), torch.zeros(3, dtype=torch.long), r"mask_labels must have shape"),
])
def test_decoder_rejects_bad_shapes(poses, mask, message):
    with pytest.raises(ValueError, match=message):
        CapsuleDecoder()(poses, mask)


def test_gradient_through_all_iterations_changes_gradients_not_outputs(batch):
    images, labels = batch
    torch.manual_seed(4)
    full = CapsNet(with_decoder=False)
    cut = CapsNet(with_decoder=False, gradient_through_all_iterations=False)
    cut.load_state_dict(full.state_dict())
    grads = []
    for model in (full, cut):
        output = model(images)
        model.loss(output, images, labels).backward()
        grads.append(model.digit_capsules.weight.grad)
    torch.testing.assert_close(full(images).scores, cut(images).scores)
    assert not torch.allclose(grads[0], grads[1])


# ----------------------------------------------------------------------------------------------
# Efficient-CapsNet


def test_efficient_capsnet_parameter_counts():
    model = EfficientCapsNet()
    assert n_parameters(EfficientCapsNet(with_decoder=False)) == 161_824
    assert n_parameters(model.decoder) == 1_411_344
    assert n_parameters(model) == 161_824 + 1_411_344
    assert n_parameters(model.digit_capsules) == 20_480 + 160
    assert torch.equal(model.digit_capsules.prior, torch.zeros(16, 10))


def test_efficient_capsnet_shapes_and_ranges(batch):
    images, labels = batch
    model = EfficientCapsNet()
    output = model(images, labels)
    assert output.scores.shape == (3, 10)
    assert output.poses.shape == (3, 10, 16)
    assert output.reconstructions.shape == (3, 1, 28, 28)
    assert output.couplings.shape == (3, 16, 10)
    assert ((output.scores >= 0) & (output.scores < 1)).all()
    torch.testing.assert_close(output.couplings.sum(dim=-1), torch.ones(3, 16))
    assert model.primary_capsules_of(images).shape == (3, 16, 8)
    assert model.features(images).shape == (3, 128, 9, 9)


def test_efficient_capsnet_loss_weight_is_0392_times_pixel_mean(batch):
    from capsule_lib.losses import margin_loss
    images, labels = batch
    model = EfficientCapsNet()
    output = model(images, labels)
    expected = (margin_loss(output.scores, labels)
                + 0.392 * ((output.reconstructions - images) ** 2).mean(dim=(1, 2, 3)).mean())
    torch.testing.assert_close(model.loss(output, images, labels), expected)


def test_efficient_capsnet_eval_mode_uses_running_batchnorm_statistics(batch):
    images, _ = batch
    torch.manual_seed(5)
    model = EfficientCapsNet()
    train_scores = model(images).scores            # batch statistics (and updates the running ones)
    model.eval()
    eval_scores = model(images).scores
    assert not torch.allclose(train_scores, eval_scores)
    torch.testing.assert_close(model(images[:1]).scores, eval_scores[:1])   # per-example in eval


# ----------------------------------------------------------------------------------------------
# Every model


@pytest.mark.parametrize("make_model", [CapsNet, EfficientCapsNet])
@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3, 28, 28), (2, 28, 28), (1, 784)])
def test_wrong_image_shape_raises_a_clear_error(make_model, shape):
    with pytest.raises(ValueError, match=r"expects images of shape \[batch, 1, 28, 28\]"):
        make_model()(torch.zeros(shape))


@pytest.mark.parametrize("make_model", [CapsNet, EfficientCapsNet])
def test_eval_mode_is_deterministic(batch, make_model):
    model = make_model().eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch[0]).scores, model(batch[0]).scores)
