"""Model names: build a model from its name and a plain configuration (what recipes and
checkpoints store)."""
from torch import nn

from .baseline_cnn import BaselineCNN, PoolingCNN
from .capsnet import CapsNet
from .deep_capsnet import DeepCapsNet
from .efficient_capsnet import EfficientCapsNet

MODEL_CLASSES = {
    "capsnet": CapsNet,
    "efficient-capsnet": EfficientCapsNet,
    "baseline-cnn": BaselineCNN,
    "pooling-cnn": PoolingCNN,
    "deep-capsnet": DeepCapsNet,
}
MODEL_NAMES = tuple(MODEL_CLASSES)


def build_model(name: str, **config) -> nn.Module:
    """build_model("capsnet", routing_iterations=1) -> CapsNet(routing_iterations=1)."""
    if name not in MODEL_CLASSES:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    model_class = MODEL_CLASSES[name]
    try:
        return model_class(**config)
    except TypeError as error:
        raise TypeError(f"bad configuration for {name!r} ({model_class.__name__}): "
                        f"{error}") from error
