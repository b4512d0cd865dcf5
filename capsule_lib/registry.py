"""Build a model from its name and a plain configuration (what recipes and checkpoints store)."""
from torch import nn

from .baseline_cnn import BaselineCNN
from .capsnet import CapsNet
from .deep_capsnet import DeepCapsNet
from .efficient_capsnet import EfficientCapsNet

MODELS = {
    "capsnet": CapsNet,
    "efficient-capsnet": EfficientCapsNet,
    "baseline-cnn": BaselineCNN,
    "deep-capsnet": DeepCapsNet,
}
MODEL_NAMES = tuple(MODELS)


def build_model(name: str, **config) -> nn.Module:
    """build_model("capsnet", routing_iterations=1) -> CapsNet(routing_iterations=1)."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    try:
        return MODELS[name](**config)
    except TypeError as error:
        raise TypeError(f"bad configuration for {name!r} ({MODELS[name].__name__}): {error}") from error
