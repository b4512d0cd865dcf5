"""save_checkpoint / load_checkpoint round trip and every way a checkpoint can be unusable."""
import pytest
import torch

from capsule_lib import checkpoint
from capsule_lib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from capsule_lib.registry import build_model
from capsule_lib.training import History, Recipe

RECIPE = Recipe(model="efficient-capsnet", data="mnist-sample", epochs=1, batch_size=16,
                learning_rate=1e-3)
HISTORY = History(loss=[0.5], accuracy=[0.8], validation_loss=[0.4], validation_accuracy=[0.85],
                  learning_rate=[1e-3], seconds=[2.0], samples_per_second=[100.0])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_model(RECIPE.model, **RECIPE.model_config)
    with torch.no_grad():                     # move the batch-norm statistics off their defaults
        model.train()(torch.rand(8, 1, 28, 28))
    return model.eval()


@pytest.fixture
def saved(model, tmp_path):
    return save_checkpoint(tmp_path / "model.pt", model, RECIPE, HISTORY)


def rewrite(path, change):
    """Load the raw payload, let `change` edit it, write it back."""
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def test_round_trip_gives_identical_outputs(model, saved):
    loaded, info = load_checkpoint(saved)
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        expected, got = model(images), loaded.eval()(images)
    assert torch.equal(expected.scores, got.scores)
    assert torch.equal(expected.reconstructions, got.reconstructions)
    assert info.model_name == "efficient-capsnet"
    assert info.recipe == RECIPE
    assert info.history == HISTORY
    assert not list(saved.parent.glob("*.partial"))


def test_history_is_optional(model, tmp_path):
    _, info = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model, RECIPE))
    assert info.history is None


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint file at .*--save"):
        load_checkpoint(tmp_path / "absent.pt")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", bytes(range(256))])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint.*Delete the file"):
        load_checkpoint(path)


def test_truncated_checkpoint(saved):
    saved.write_bytes(saved.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(saved)


def test_torch_file_that_is_not_a_capsule_lib_checkpoint(model, tmp_path):
    path = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="not a capsule_lib checkpoint.*save_checkpoint"):
        load_checkpoint(path)


def test_other_library_version(model, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "__version__", "0.0.1")
    path = save_checkpoint(tmp_path / "old.pt", model, RECIPE)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="saved by capsule_lib 0.0.1.*retrain"):
        load_checkpoint(path)


def test_other_model_than_expected(saved):
    with pytest.raises(CheckpointError, match="holds a 'efficient-capsnet' model, expected "
                                              "'capsnet'"):
        load_checkpoint(saved, expected_model="capsnet")


def test_weights_of_a_different_model(saved):
    rewrite(saved, lambda payload: payload.update(model_name="capsnet"))
    with pytest.raises(CheckpointError, match="do not fit the 'capsnet' model.*missing keys"):
        load_checkpoint(saved)


def test_mismatched_shapes(saved):
    def widen_first_weight(payload):
        state = payload["state_dict"]
        key = next(key for key, value in state.items() if value.dim() > 1)
        state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    rewrite(saved, widen_first_weight)
    with pytest.raises(CheckpointError, match=r"do not fit.*file \(\d+"):
        load_checkpoint(saved)


def test_model_the_library_cannot_build(saved):
    rewrite(saved, lambda payload: payload.update(model_name="resnet-50"))
    with pytest.raises(CheckpointError, match="'resnet-50'.*cannot build"):
        load_checkpoint(saved)
