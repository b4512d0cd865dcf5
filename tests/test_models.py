"""The models of capsule_lib: sizes pinned to the papers, shapes, masking, losses, errors."""
import pytest
import torch

from capsule_lib.baseline_cnn import BaselineCNN
from capsule_lib.capsnet import CapsNet, CapsuleDecoder, DigitCapsules, PrimaryCapsules
from capsule_lib.deep_capsnet import DeepCapsNet
from capsule_lib.fast_paths import (CPU_EXAMPLES_PER_CHUNK, MIN_CHANNELS_PER_TAP, CpuConv2d,
                                    digit_capsules_on_cpu)
from capsule_lib.efficient_capsnet import EfficientCapsNet
from capsule_lib.interfaces import Model, ModelOutput
from capsule_lib.losses import margin_loss
from capsule_lib.registry import MODEL_NAMES, build_model
from capsule_lib.routing import dynamic_routing
from capsule_lib.squash import efficient_squash


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_on_meta(make_model, **config) -> torch.nn.Module:
    """The model with shape-only (meta) parameters: instant to build, enough to count
    parameters or to check the input validation, which runs before any arithmetic."""
    with torch.device("meta"):
        return make_model(**config)


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
    ({"with_decoder": False, "learned_couplings": True}, 6_804_224 + 1152 * 10),
])
def test_capsnet_parameter_count(config, expected):
    assert n_parameters(build_on_meta(CapsNet, **config)) == expected


def test_capsnet_learned_couplings_start_uniform_and_learn(batch):
    images, labels = batch
    torch.manual_seed(0)
    model = CapsNet(learned_couplings=True)
    output = model(images, labels)
    assert tuple(output.couplings.shape) == (1, 3, 1152, 10)    # routing's layout, 1 iteration
    torch.testing.assert_close(output.couplings[0, 0], torch.full((1152, 10), 0.1))
    torch.manual_seed(0)
    uniform = CapsNet(routing_iterations=1)                      # same weights, same couplings
    torch.testing.assert_close(output.scores, uniform(images, labels).scores)
    model.loss(output, images, labels).backward()
    logits = model.digit_capsules.coupling_logits
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_coupling_logit_gain_moves_b_gain_times_faster(batch):
    """b = gain x parameter: one Adam step (about lr on the parameter) moves b by about
    gain x lr, and the softmax is taken of b."""
    images, labels = batch
    moves = {}
    for gain in (1.0, 10.0):
        torch.manual_seed(0)
        model = DeepCapsNet(hidden_layers=0, learned_couplings=True, coupling_logit_gain=gain)
        layer = model.capsule_layers[0]
        optimizer = torch.optim.Adam([layer.coupling_logits], lr=1e-3)
        model.loss(model(images, labels), images, labels).backward()
        optimizer.step()
        moves[gain] = layer.logits().detach().abs().max().item()
        torch.testing.assert_close(model(images).couplings[0][0, 0],
                                   torch.softmax(layer.logits(), dim=1))
    assert moves[1.0] == pytest.approx(1e-3, rel=0.01)    # Adam's first step: lr x sign
    assert moves[10.0] == pytest.approx(1e-2, rel=0.01)


@pytest.mark.parametrize("model_class", [CapsNet, DeepCapsNet])
def test_coupling_logit_gain_is_checked(model_class):
    with pytest.raises(ValueError, match="learned_couplings=True"):
        model_class(coupling_logit_gain=10)                     # routing has no logits to scale
    with pytest.raises(ValueError, match="logit_gain must be a finite number > 0"):
        model_class(learned_couplings=True, coupling_logit_gain=0)


def test_capsnet_layer_sizes():
    model = build_on_meta(CapsNet)
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
    torch.testing.assert_close(model.loss(output, images, labels),
                               margin_loss(output.scores, labels))


def test_capsnet_loss_is_margin_plus_reconstruction(batch):
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


def test_encode_primary_capsules_matches_conv1_then_primary_capsules(batch):
    images = batch[0]
    model = CapsNet()
    primary = model.encode_primary_capsules(images)
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
    (torch.zeros(2, 10, 16), torch.zeros(3, dtype=torch.long), r"mask_labels.*shape \[2\]"),
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


@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("through_all", [True, False])
def test_digit_capsules_on_cpu_give_the_reference_result_and_gradients(iterations, bias,
                                                                       through_all):
    torch.manual_seed(5)
    layer = DigitCapsules(in_caps=12, in_dim=8, out_caps=10, out_dim=16,
                          routing_iterations=iterations, bias=bias,
                          gradient_through_all_iterations=through_all)
    u = torch.randn(2 * CPU_EXAMPLES_PER_CHUNK + 1, 12, 8, requires_grad=True)  # ragged end
    fast, reference = layer(u), layer.route(u)           # forward takes the fast path
    assert type(fast.outputs.grad_fn).__name__ == "_DigitCapsulesOnCpuBackward"
    torch.testing.assert_close(fast.outputs, reference.outputs)
    torch.testing.assert_close(fast.couplings, reference.couplings)
    assert fast.couplings.shape == (iterations, len(u), 12, 10)
    grad_v = torch.randn_like(reference.outputs)
    wrt = (u, *layer.parameters())                       # u, W and the bias
    for fast_grad, reference_grad in zip(torch.autograd.grad(fast.outputs, wrt, grad_v),
                                         torch.autograd.grad(reference.outputs, wrt, grad_v)):
        torch.testing.assert_close(fast_grad, reference_grad, rtol=1e-4, atol=1e-5)


def test_digit_capsules_on_cpu_pass_gradcheck_in_float64():
    """The true gradient; without gradients through all iterations the reference's own
    (deliberately partial) gradient is matched in the test above."""
    torch.manual_seed(6)
    u = torch.randn(6, 5, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda u, weight, bias: digit_capsules_on_cpu(u, weight, bias, 3,
                                                      examples_per_chunk=4).outputs,
        (u, weight, bias))


def test_digit_capsules_keep_the_reference_path_outside_float32_on_the_cpu():
    layer = DigitCapsules(in_caps=12, in_dim=8, out_caps=10, out_dim=16).double()
    outputs = layer(torch.randn(2, 12, 8, dtype=torch.float64, requires_grad=True)).outputs
    assert type(outputs.grad_fn).__name__ != "_DigitCapsulesOnCpuBackward"


@pytest.mark.parametrize("in_channels, out_channels, kernel_size, stride, side", [
    (1, 16, 9, 1, 28),                      # Conv1's shape, fewer channels: one im2col product
    (MIN_CHANNELS_PER_TAP, 24, 9, 2, 20),   # PrimaryCaps' shape, narrower: one product per tap
    (MIN_CHANNELS_PER_TAP + 3, 5, 3, 2, 8),  # a last row and column that no window reaches
    (MIN_CHANNELS_PER_TAP, 4, 2, 3, 8),      # stride above the kernel: rows no tap reaches
])
def test_cpu_conv2d_gives_the_reference_result_and_gradients(in_channels, out_channels,
                                                               kernel_size, stride, side):
    torch.manual_seed(6)
    fast = CpuConv2d(in_channels, out_channels, kernel_size, stride=stride)
    reference = torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride)
    reference.load_state_dict(fast.state_dict())                 # same parameter names
    images = torch.randn(3, in_channels, side, side, requires_grad=True)
    grad_out = torch.randn_like(reference(images))
    fast_out, reference_out = fast(images), reference(images)
    assert torch.equal(fast_out, reference_out)                  # forward: nn.Conv2d's own
    wrt = (images, fast.weight, fast.bias)
    fast_grads = torch.autograd.grad(fast_out, wrt, grad_out)
    reference_grads = torch.autograd.grad(
        reference_out, (images, reference.weight, reference.bias), grad_out)
    for fast_grad, reference_grad in zip(fast_grads, reference_grads):
        assert fast_grad.shape == reference_grad.shape
        torch.testing.assert_close(fast_grad, reference_grad, rtol=1e-4, atol=1e-4)
    # images that need no gradient (the network's input) and a frozen bias
    fast.bias.requires_grad_(False)
    weight_grad, = torch.autograd.grad(fast(images.detach()), fast.weight, grad_out)
    torch.testing.assert_close(weight_grad, reference_grads[1], rtol=1e-4, atol=1e-4)


def test_cpu_conv2d_keeps_torchs_backward_between_one_and_the_tap_threshold():
    torch.manual_seed(7)
    fast = CpuConv2d(MIN_CHANNELS_PER_TAP // 2, 4, 3, stride=2)
    reference = torch.nn.Conv2d(MIN_CHANNELS_PER_TAP // 2, 4, 3, stride=2)
    reference.load_state_dict(fast.state_dict())
    images = torch.randn(2, MIN_CHANNELS_PER_TAP // 2, 7, 7)
    fast_grad, = torch.autograd.grad(fast(images).square().sum(), fast.weight)
    reference_grad, = torch.autograd.grad(reference(images).square().sum(), reference.weight)
    assert torch.equal(fast_grad, reference_grad)                # the very same computation


def test_capsnet_convolutions_use_the_cpu_fast_path():
    model = build_on_meta(CapsNet)
    assert isinstance(model.conv1[0], CpuConv2d)
    assert isinstance(model.primary_capsules.conv, CpuConv2d)
    assert "conv1.0.weight" in model.state_dict()                # checkpoints keep their keys


# ----------------------------------------------------------------------------------------------
# Efficient-CapsNet


def test_efficient_capsnet_parameter_counts():
    model = EfficientCapsNet()
    assert n_parameters(build_on_meta(EfficientCapsNet, with_decoder=False)) == 161_824
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
    assert model.encode_primary_capsules(images).shape == (3, 16, 8)
    assert model.features(images).shape == (3, 128, 9, 9)


@pytest.mark.parametrize("routing", ["uniform-prior", "uniform", "prior"])
def test_efficient_capsnet_routing_ablations_weigh_the_votes_as_documented(batch, routing):
    images, _ = batch
    torch.manual_seed(0)
    model = EfficientCapsNet(with_decoder=False, routing=routing).eval()
    layer = model.digit_capsules
    if layer.prior is not None:
        torch.nn.init.normal_(layer.prior, std=0.1)
    u = model.encode_primary_capsules(images)                              # [3, 16, 8]
    u_hat = torch.einsum("ijdk,bik->bijd", layer.weight, u)               # [3, 16, 10, 16]
    weights = {"uniform-prior": 0.1 + (layer.prior if layer.prior is not None else 0),
               "uniform": torch.full((16, 10), 0.1),
               "prior": layer.prior}[routing]
    expected = efficient_squash(torch.einsum("ij,bijd->bjd", weights, u_hat))
    torch.testing.assert_close(model(images).poses, expected)
    assert (layer.prior is None) == (routing == "uniform")
    assert n_parameters(model) == 161_824 - (160 if routing == "uniform" else 0)


def test_efficient_capsnet_attention_scale_input_divides_by_sqrt_8(batch):
    images, _ = batch
    torch.manual_seed(0)
    paper = EfficientCapsNet(with_decoder=False, attention_scale="input").eval()
    code = EfficientCapsNet(with_decoder=False).eval()
    code.load_state_dict(paper.state_dict())
    u_hat = torch.einsum("ijdk,bik->bijd", code.digit_capsules.weight,
                         code.encode_primary_capsules(images))
    agreement = (u_hat * u_hat.sum(dim=1, keepdim=True)).sum(-1)          # [3, 16, 10]
    torch.testing.assert_close(paper(images).couplings, torch.softmax(agreement / 8 ** 0.5, 2))
    torch.testing.assert_close(code(images).couplings, torch.softmax(agreement / 4, 2))
    with pytest.raises(ValueError, match="attention_scale must be one of"):
        EfficientCapsNet(attention_scale="both")
    with pytest.raises(ValueError, match="routing must be one of"):
        EfficientCapsNet(routing="dynamic")


def test_efficient_capsnet_loss_weight_is_0392_times_pixel_mean(batch):
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
# Baseline CNN


def test_baseline_cnn_has_the_papers_35_4m_parameters():
    assert n_parameters(build_on_meta(BaselineCNN)) == 35_445_522


def test_baseline_cnn_sizes_are_configurable():
    small = BaselineCNN(channels=[64, 64, 32], hidden=[256, 128])
    convs = (1 * 25 + 1) * 64 + (64 * 25 + 1) * 64 + (64 * 25 + 1) * 32
    fully_connected = (32 * 784 + 1) * 256 + (256 + 1) * 128 + (128 + 1) * 10
    assert n_parameters(small) == convs + fully_connected


def test_baseline_cnn_outputs_logits_and_cross_entropy(batch):
    images, labels = batch
    model = BaselineCNN(channels=(8, 8, 4), hidden=(16, 12))
    output = model(images, labels)
    assert output.scores.shape == (3, 10)
    assert output.poses is None and output.reconstructions is None and output.couplings is None
    loss = model.loss(output, images, labels)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(output.scores, labels))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_baseline_cnn_dropout_only_in_training(batch):
    images = batch[0]
    torch.manual_seed(6)
    model = BaselineCNN(channels=(8, 8, 4), hidden=(16, 12))
    assert not torch.allclose(model(images).scores, model(images).scores)
    model.eval()
    torch.testing.assert_close(model(images).scores, model(images).scores)


# ----------------------------------------------------------------------------------------------
# Deep CapsNet


@pytest.mark.parametrize("hidden_layers", [1, 2, 3])
def test_deep_capsnet_layers_couplings_and_gradients(batch, hidden_layers):
    images, labels = batch
    torch.manual_seed(7)
    model = DeepCapsNet(hidden_layers=hidden_layers, hidden_capsules=12, hidden_dim=6)
    layers = model.forward_layers(images)
    assert [tuple(capsules.shape) for capsules in layers] == (
        [(3, 288, 8)] + [(3, 12, 6)] * hidden_layers + [(3, 10, 16)])
    output = model(images, labels)
    torch.testing.assert_close(output.poses, layers[-1])
    assert output.scores.shape == (3, 10) and output.reconstructions is None
    assert ((output.scores >= 0) & (output.scores < 1)).all()
    assert [tuple(c.shape) for c in output.couplings] == (
        [(3, 3, 288, 12)] + [(3, 3, 12, 12)] * (hidden_layers - 1) + [(3, 3, 12, 10)])
    loss = model.loss(output, images, labels)
    assert torch.isfinite(loss)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name


def test_deep_capsnet_parameter_count_follows_the_configuration():
    model = build_on_meta(DeepCapsNet, hidden_layers=2, hidden_capsules=32, hidden_dim=8,
                          stem_channels=64, primary_types=8, primary_dim=8)
    stem = (81 + 1) * 64 + (64 * 81 + 1) * 64
    capsule_weights = 288 * 32 * 8 * 8 + 32 * 32 * 8 * 8 + 32 * 10 * 16 * 8
    assert n_parameters(model) == stem + capsule_weights
    assert n_parameters(build_on_meta(DeepCapsNet, hidden_layers=2, routing_bias=True)) == (
        stem + capsule_weights + 2 * 32 * 8 + 10 * 16)


def test_deep_capsnet_initial_activations_do_not_vanish(batch):
    """The scale-keeping initialisation: before training, 3 hidden layers still pass on
    capsules of a usable length, where every W drawn with the authors' std 0.1 would not."""
    from capsule_lib.capsnet import truncated_normal_
    torch.manual_seed(8)
    model = DeepCapsNet(hidden_layers=3)
    with torch.no_grad():
        assert all(capsules.norm(dim=-1).mean() > 0.1 for capsules in model.forward_layers(batch[0]))
        for layer in model.capsule_layers:
            truncated_normal_(layer.weight, std=0.1)
        assert model(batch[0]).scores.max() < 1e-6


def test_deep_capsnet_with_decoder_and_bad_configuration(batch):
    images, labels = batch
    output = DeepCapsNet(hidden_layers=0, with_decoder=True)(images, labels)
    assert output.reconstructions.shape == (3, 1, 28, 28) and len(output.couplings) == 1
    with pytest.raises(ValueError, match="hidden_layers must be a whole number >= 0"):
        DeepCapsNet(hidden_layers=-1)


# ----------------------------------------------------------------------------------------------
# Registry and every model


def test_registry_builds_every_model_with_its_configuration():
    assert MODEL_NAMES == ("capsnet", "efficient-capsnet", "baseline-cnn", "pooling-cnn",
                           "deep-capsnet")
    with torch.device("meta"):
        assert build_model("capsnet", with_decoder=False).decoder is None
        assert build_model("capsnet", routing_iterations=1).digit_capsules.routing_iterations == 1
    assert isinstance(build_model("efficient-capsnet"), EfficientCapsNet)
    assert isinstance(build_model("baseline-cnn", channels=[4, 4, 4], hidden=[8, 8]), BaselineCNN)
    assert len(build_model("deep-capsnet", hidden_layers=2).capsule_layers) == 3
    with torch.device("meta"):
        assert sum(p.numel() for p in build_model("pooling-cnn").parameters()) == 8_275_146


def test_capsnet_image_size_sets_the_primary_grid_and_the_decoder():
    with torch.device("meta"):
        model = build_model("capsnet", image_size=36)
    assert model.digit_capsules.in_caps == 32 * 10 * 10                    # 10x10 grid
    assert model.decoder.image_shape == (1, 36, 36)
    with pytest.raises(ValueError, match=r"shape \[batch, 1, 36, 36\]|36"):
        build_model("capsnet", image_size=36)(torch.zeros(2, 1, 28, 28))


def test_registry_names_the_valid_models_on_a_typo():
    with pytest.raises(ValueError, match="valid names: capsnet, efficient-capsnet, baseline-cnn, "
                                         "pooling-cnn, deep-capsnet"):
        build_model("caps-net")
    with pytest.raises(TypeError, match="bad configuration for 'capsnet'.*routing"):
        build_model("capsnet", routing=3)


ALL_MODELS = [CapsNet, EfficientCapsNet, lambda: BaselineCNN(channels=(4, 4, 4), hidden=(8, 8)),
              DeepCapsNet]


@pytest.mark.parametrize("make_model", ALL_MODELS)
@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3, 28, 28), (2, 28, 28), (1, 784)])
def test_wrong_image_shape_raises_a_clear_error(make_model, shape):
    model = build_on_meta(make_model)
    with pytest.raises(ValueError, match=r"expects images of shape \[batch, 1, 28, 28\]"):
        model(torch.zeros(shape))


@pytest.mark.parametrize("make_model", ALL_MODELS)
def test_eval_mode_is_deterministic(batch, make_model):
    model = make_model().eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch[0]).scores, model(batch[0]).scores)


# A small configuration of each registered model (the full ones are tested above).
SMALL_CONFIGS = {
    "capsnet": {},
    "efficient-capsnet": {},
    "baseline-cnn": {"channels": [4, 4, 4], "hidden": [8, 8]},
    "pooling-cnn": {"channels": [4, 4, 4], "hidden": 8},
    "deep-capsnet": {"hidden_layers": 1, "with_decoder": True},
}


def test_every_registered_model_has_a_small_configuration_here():
    assert set(SMALL_CONFIGS) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_registered_model_follows_the_model_contract(batch, name):
    """forward(images, labels=None) -> ModelOutput with the documented fields and shapes;
    loss(output, images, labels) -> a finite scalar that reaches every parameter."""
    images, labels = batch
    torch.manual_seed(0)
    model = build_model(name, **SMALL_CONFIGS[name])
    assert isinstance(model, Model)                    # interfaces.Model: forward and loss
    for given_labels in (labels, None):
        output = model(images, given_labels)
        assert isinstance(output, ModelOutput)
        assert output.scores.shape == (len(images), 10)
        if output.poses is not None:                   # capsule networks
            assert output.poses.shape[:2] == (len(images), 10)
            torch.testing.assert_close(output.scores, output.poses.norm(dim=-1))
        if output.reconstructions is not None:
            assert output.reconstructions.shape == images.shape
            assert 0 <= output.reconstructions.min() and output.reconstructions.max() <= 1
    loss = model.loss(model(images, labels), images, labels)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_registered_model_runs_on_the_meta_device(name):
    """Shapes and FLOP counts without memory (chapter 06 and the benchmark count MACs this
    way): forward must not read tensor values, and must not need autocast on that device."""
    with torch.device("meta"):
        model = build_model(name, **SMALL_CONFIGS[name]).eval()
        output = model(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
        assert output.scores.shape == (2, 10) and output.scores.device.type == "meta"
        model(torch.zeros(2, 1, 28, 28))                      # decoder masked by argmax


def test_deep_capsnet_weight_std_sets_every_capsule_layers_initial_std():
    torch.manual_seed(0)
    fixed = DeepCapsNet(hidden_layers=2, weight_std=0.1)
    for layer in fixed.capsule_layers:          # a normal truncated at 2 std has std 0.88 std
        assert 0.08 < layer.weight.std().item() < 0.095
    scale_keeping = DeepCapsNet(hidden_layers=2)
    assert scale_keeping.capsule_layers[1].weight.std().item() > 1.5   # 32 / sqrt(32 x 8) = 2
    with pytest.raises(ValueError, match="weight_std"):
        DeepCapsNet(weight_std=0)


def test_deep_capsnet_learned_couplings_are_a_softmax_of_a_parameter(batch):
    images, labels = batch
    torch.manual_seed(0)
    model = DeepCapsNet(hidden_layers=1, learned_couplings=True)
    output = model(images, labels)
    assert [tuple(c.shape) for c in output.couplings] == [(1, 3, 288, 32), (1, 3, 32, 10)]
    torch.testing.assert_close(output.couplings[1][0, 0], torch.full((32, 10), 0.1))
    model.loss(output, images, labels).backward()
    logits = model.capsule_layers[1].coupling_logits
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    with torch.no_grad():
        logits.add_(torch.randn_like(logits))
    couplings = model(images).couplings[1]
    torch.testing.assert_close(couplings[0, 2], torch.softmax(logits, dim=1))
    torch.testing.assert_close(couplings[0, 0], couplings[0, 2])    # the same for every image
