"""What every model in capsule_lib takes and returns."""
from dataclasses import dataclass

from torch import Tensor


@dataclass
class ModelOutput:
    """One forward pass.

    scores:           [B, n_classes] class scores: capsule lengths ||v_j|| for capsule
                      networks (in [0, 1)), logits for the baseline CNN. argmax = prediction.
    poses:            [B, n_classes, d] output capsule vectors v_j (None for the CNN).
    reconstructions:  [B, 1, 28, 28] decoder output in [0, 1] (None without a decoder).
    couplings:        coupling coefficients of the last routing, as the routing function
                      returned them (None where there is no routing).
    """
    scores: Tensor
    poses: Tensor | None = None
    reconstructions: Tensor | None = None
    couplings: Tensor | None = None


def check_images(images: Tensor, expected: tuple[int, int, int], model_name: str) -> None:
    """Raise a ValueError naming the expected shape unless images is [B, *expected]."""
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(expected):
        c, h, w = expected
        raise ValueError(
            f"{model_name} expects images of shape [batch, {c}, {h}, {w}] "
            f"({c}-channel {h}x{w}), got {tuple(images.shape)}. "
            + ("Add the channel dimension with images.unsqueeze(1). "
               if images.dim() == 3 and tuple(images.shape[1:]) == (h, w) else "")
            + ("This model is built for MNIST-sized digits: resize or crop the input to "
               f"{h}x{w} and use {c} channel(s)." if images.dim() == 4 else ""))
