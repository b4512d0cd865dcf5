"""A CapsNet made deeper: stacked fully connected capsule layers with dynamic routing.

Built for the depth experiments of the critique chapters, after Mitterreiter, Koch, Giesen &
Laue (AAAI 2023), who report that deeper CapsNets starve capsules of gradient. The sizes are
our choice, small enough to train on a CPU:

    images [B, 1, 28, 28]
      -> conv stem_channels 9x9, ReLU                                [B, 64, 20, 20]
      -> PrimaryCapsules: primary_types x primary_dim, 9x9 stride 2  [B, 8*6*6 = 288, 8]
      -> hidden_layers x DigitCapsules (routing) to hidden_capsules  [B, 32, 8] each
      -> DigitCapsules (routing) to 10 class capsules                [B, 10, 16]

Every capsule layer is CapsNet's DigitCapsules (W_ij per pair, dynamic routing, optional
bias on s_j); the conv stem is initialised as CapsNet's. W starts as a truncated normal with
std n_out / sqrt(n_in x d_in): with uniform couplings 1/n_out, s_j then has the per-component
variance of the input capsules, so that before training no layer shrinks or grows the vectors
it passes on (the squash still shrinks short ones). For CapsNet's digit layer this rule gives
10 / sqrt(1152 x 8) = 0.104, close to the authors' 0.1. weight_std=0.1 instead draws every
capsule layer's W with the authors' fixed std 0.1, which shrinks the capsules of every hidden
layer of 32 inputs (chapter 08 compares the two).

learned_couplings=True replaces routing by couplings c_ij = softmax_j(b_ij) with b a learned
parameter [n_in, n_out] per capsule layer, the same for every image (LearnedCouplingCapsules).
"""
import math

import torch
from torch import Tensor, nn

from .capsnet import (DigitCapsules, LearnedCouplingCapsules, PrimaryCapsules,
                      check_gain_needs_learned_couplings)
from .checks import check_images, check_positive_number, check_whole_number
from .layers import CapsuleClassifier, CapsuleDecoder, truncated_normal_


class DeepCapsNet(CapsuleClassifier):
    """forward -> ModelOutput(couplings = [each routing layer's couplings
    [iterations, B, n_in, n_out]], input to output); forward_layers -> every layer's capsules.

    weight_std: None (default) draws each capsule layer's W with the scale-keeping std
    n_out / sqrt(n_in x d_in); a number uses that std for every capsule layer (the authors'
    code: 0.1). learned_couplings: see LearnedCouplingCapsules (routing_iterations is then
    unused); coupling_logit_gain: their logit_gain (only with learned_couplings)."""

    def __init__(self, hidden_layers: int = 1, hidden_capsules: int = 32, hidden_dim: int = 8,
                 stem_channels: int = 64, primary_types: int = 8, primary_dim: int = 8,
                 routing_iterations: int = 3, routing_bias: bool = False,
                 with_decoder: bool = False, weight_std: float | None = None,
                 learned_couplings: bool = False, coupling_logit_gain: float = 1.0):
        super().__init__()
        check_gain_needs_learned_couplings(coupling_logit_gain, learned_couplings,
                                           "DeepCapsNet")
        hidden_layers = check_whole_number(hidden_layers, "hidden_layers", minimum=0)
        for name, value in (("hidden_capsules", hidden_capsules), ("hidden_dim", hidden_dim),
                            ("stem_channels", stem_channels), ("primary_types", primary_types),
                            ("primary_dim", primary_dim)):
            check_whole_number(value, f"DeepCapsNet: {name}")
        self.conv1 = nn.Sequential(nn.Conv2d(1, stem_channels, kernel_size=9), nn.ReLU())
        truncated_normal_(self.conv1[0].weight, std=0.05)
        nn.init.constant_(self.conv1[0].bias, 0.1)
        self.primary_capsules = PrimaryCapsules(stem_channels, primary_types, primary_dim)
        truncated_normal_(self.primary_capsules.conv.weight, std=0.1)
        nn.init.constant_(self.primary_capsules.conv.bias, 0.1)
        if weight_std is not None:
            check_positive_number(weight_std, "DeepCapsNet: weight_std (or None for the "
                                  "scale-keeping std of each layer)")
        sizes = ([(primary_types * 6 * 6, primary_dim)]
                 + [(hidden_capsules, hidden_dim)] * hidden_layers + [(10, 16)])
        layers = []
        for (n_in, d_in), (n_out, d_out) in zip(sizes[:-1], sizes[1:]):
            std = n_out / math.sqrt(n_in * d_in) if weight_std is None else weight_std
            if learned_couplings:
                layers.append(LearnedCouplingCapsules(n_in, d_in, n_out, d_out, routing_bias,
                                                      weight_std=std,
                                                      logit_gain=coupling_logit_gain))
            else:
                layers.append(DigitCapsules(n_in, d_in, n_out, d_out, routing_iterations,
                                            routing_bias, weight_std=std))
        self.capsule_layers = nn.ModuleList(layers)
        self.decoder = CapsuleDecoder(10, 16) if with_decoder else None

    def _capsules_and_couplings(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        check_images(images, self.image_shape, type(self).__name__)
        capsules = [self.primary_capsules(self.conv1(images))]       # [B, 288, 8]
        couplings = []
        for layer in self.capsule_layers:
            v, c = layer(capsules[-1])                                # [B, n_out, d_out]
            capsules.append(v)
            couplings.append(c)                                       # [iters, B, n_in, n_out]
        return capsules, couplings

    def forward_layers(self, images: Tensor) -> list[Tensor]:
        """Every capsule layer's output, input to output: primary [B, 288, 8], each hidden
        layer [B, hidden_capsules, hidden_dim], the class capsules [B, 10, 16]."""
        return self._capsules_and_couplings(images)[0]

    def capsules(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """images [B, 1, 28, 28] -> class capsules [B, 10, 16] and every routing layer's
        couplings. forward and loss are CapsuleClassifier's (layers.py)."""
        capsules, couplings = self._capsules_and_couplings(images)
        return capsules[-1], couplings
