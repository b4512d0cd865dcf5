"""bf16 mixed precision: asked for where the hardware has no bf16 arithmetic it warns and trains
in fp32 (the same weights as fp32); where it has (forced here), a CapsNet step runs under bf16
autocast with fp32 weights and a finite loss; unknown precisions are refused."""
import warnings

import pytest
import torch

from capsule_lib import precision
from capsule_lib.capsnet import CapsNet
from capsule_lib.precision import resolve_precision
from capsule_lib.training import fit
from test_training import TinyCapsules, stripes, tiny_recipe


def trained_weights(precision_name: str) -> torch.Tensor:
    torch.manual_seed(123)
    model = TinyCapsules()
    fit(model, stripes(64), tiny_recipe(epochs=1), device="cpu", progress=False,
        precision=precision_name)
    return model.votes.weight.detach().clone()


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp32.*bf16"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision"):
        fit(TinyCapsules(), stripes(16), tiny_recipe(epochs=1), device="cpu", progress=False,
            precision="half")


def test_bf16_without_bf16_hardware_warns_and_trains_in_fp32(monkeypatch):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    with pytest.warns(UserWarning, match="no bf16 arithmetic.*fp32"):
        assert resolve_precision("bf16", torch.device("cpu")) == "fp32"
    with pytest.warns(UserWarning, match="fp32 instead"):
        fallen_back = trained_weights("bf16")
    assert torch.equal(fallen_back, trained_weights("fp32"))


def test_fp32_never_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_bf16_training_step_runs_under_autocast(monkeypatch):
    # bf16 autocast works on any CPU (emulated where there is no bf16 hardware): the path is
    # tested everywhere, its speed only where bf16_supported is really true
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)
    seen = []
    model = CapsNet()
    model.primary_capsules.conv.register_forward_hook(
        lambda module, inputs, output: seen.append(output.dtype))
    images = torch.rand(4, 1, 28, 28)
    labels = torch.arange(4)
    recipe = tiny_recipe(model="capsnet", epochs=1, batch_size=4, learning_rate=1e-3)
    history = fit(model, torch.utils.data.TensorDataset(images, labels), recipe, device="cpu",
                  progress=False, precision="bf16")
    assert seen == [torch.bfloat16]                    # the convolution ran in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(torch.tensor(history.loss)).all()


def test_bf16_support_is_a_yes_or_no_for_each_device():
    assert isinstance(precision.bf16_supported(torch.device("cpu")), bool)
    assert precision.bf16_supported(torch.device("meta")) is False
