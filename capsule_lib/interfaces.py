"""What every model in capsule_lib takes and returns: `ModelOutput` and the `Model` contract.

Every registered model (registry.MODEL_CLASSES) follows `Model`, so the training loop,
evaluation, checkpoints and the chapters can treat them alike; tests/test_models.py checks it
for each one.
"""
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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
    couplings: Any = None


@runtime_checkable
class Model(Protocol):
    """The contract of a capsule_lib model (an nn.Module):

    forward(images [B, 1, 28, 28] float in [0, 1], labels [B] int64 or None) -> ModelOutput
        labels, when given, choose the capsule the decoder reconstructs from (training);
        models without a decoder ignore them.
    loss(output, images, labels) -> scalar Tensor
        the model's own training loss, averaged over the batch.
    """

    def forward(self, images: Tensor, labels: Tensor | None = None) -> ModelOutput: ...

    def loss(self, output: ModelOutput, images: Tensor, labels: Tensor) -> Tensor: ...
