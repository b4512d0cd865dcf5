"""Efficient-CapsNet of Mazzia, Salvetti & Chiaberge (2021), the MNIST model.

    images [B, 1, 28, 28]
      -> Conv 32 5x5, 64 3x3, 64 3x3, 128 3x3 stride 2 (valid; ReLU then BatchNorm)
                                                             [B, 128, 9, 9]
      -> depthwise 9x9 conv (128 groups)                     [B, 128, 1, 1]
      -> 16 primary capsules x 8D, efficient_squash          [B, 16, 8]
      -> FCCaps: W_ij (8 -> 16) + self-attention routing     [B, 10, 16]
      -> scores = capsule lengths                            [B, 10]
      -> CapsuleDecoder (as CapsNet's)                       [B, 1, 28, 28]

161,824 trainable parameters without the decoder (the decoder adds 1,411,344).
Details follow the authors' Keras code (EscVM/Efficient-CapsNet): ReLU comes before
BatchNorm; BatchNorm keeps Keras' defaults (momentum 0.99, i.e. PyTorch momentum 0.01, and
eps 1e-3); the convolutions and W use Keras' he_normal initialisation, the depthwise
convolution Keras' default glorot_uniform, biases and the routing prior b start at zero.
The decoder keeps PyTorch's default initialisation of nn.Linear.
"""
import math

import torch
from torch import Tensor, nn

from .checks import check_images
from .layers import CapsuleClassifier, CapsuleDecoder
from .routing import RoutingResult, self_attention_routing
from .squash import efficient_squash


def keras_he_normal_(tensor: Tensor, fan_in: int) -> Tensor:
    """In place: Keras' he_normal, a normal truncated at two standard deviations whose std
    sqrt(2 / fan_in) is divided by 0.8796 so that the truncated draw keeps that variance."""
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


def conv_relu_batchnorm(in_channels: int, out_channels: int, kernel_size: int,
                        stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride)
    keras_he_normal_(conv.weight, fan_in=in_channels * kernel_size ** 2)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.ReLU(), nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.01))


class EfficientPrimaryCapsules(nn.Module):
    """Depthwise conv over the whole 9x9 map, each channel alone; the 128 outputs are read as
    16 capsules of 8 consecutive channels, then efficient_squash."""

    def __init__(self, channels: int = 128, kernel_size: int = 9, n_capsules: int = 16,
                 capsule_dim: int = 8):
        super().__init__()
        if n_capsules * capsule_dim != channels:
            raise ValueError(f"n_capsules x capsule_dim must equal channels ({channels}), got "
                             f"{n_capsules} x {capsule_dim}")
        self.n_capsules, self.capsule_dim = n_capsules, capsule_dim
        self.depthwise = nn.Conv2d(channels, channels, kernel_size, groups=channels)
        nn.init.xavier_uniform_(self.depthwise.weight)
        nn.init.zeros_(self.depthwise.bias)

    def forward(self, features: Tensor) -> Tensor:
        x = self.depthwise(features)                                  # [B, 128, 1, 1]
        x = x.view(x.shape[0], self.n_capsules, self.capsule_dim)     # [B, 16, 8]
        return efficient_squash(x)


# How FCCaps weighs the votes: s_j = sum_i w_ij u_hat_j|i with
#   "self-attention"   w_ij = c_ij + b_ij   (the paper: couplings from the votes' agreement)
#   "uniform-prior"    w_ij = 1/n_out + b_ij  (no agreement: each input's votes count alike)
#   "uniform"          w_ij = 1/n_out       (no agreement, no learned prior)
#   "prior"            w_ij = b_ij          (the learned prior alone)
ROUTINGS = ("self-attention", "uniform-prior", "uniform", "prior")
# which capsule size scales the agreement: the authors' code divides by sqrt(out_dim = 16), the
# paper's formula by sqrt(in_dim = 8) (issue #18 on their repository)
ATTENTION_SCALES = ("output", "input")
# The routing ablation of chapter 07 (and benchmarks/efficient_capsnet_ablation_seeds.py): a
# name for each variant, and the EfficientCapsNet options that make it.
ROUTING_ABLATION = {"self-attention": {},
                    "paper's scale sqrt(8)": {"attention_scale": "input"},
                    "uniform + prior": {"routing": "uniform-prior"},
                    "uniform": {"routing": "uniform"},
                    "prior alone": {"routing": "prior"}}


class FullyConnectedCapsules(nn.Module):
    """FCCaps: votes u_hat_j|i = W_ij u_i, then self-attention routing with a learned prior
    b_ij (zero at start). weight: [in_caps, out_caps, out_dim, in_dim]; prior: [in_caps, out_caps]
    (absent with routing="uniform"). routing and attention_scale: see ROUTINGS and
    ATTENTION_SCALES; the defaults are the authors' model."""

    def __init__(self, in_caps: int = 16, in_dim: int = 8, out_caps: int = 10, out_dim: int = 16,
                 routing: str = "self-attention", attention_scale: str = "output"):
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        if attention_scale not in ATTENTION_SCALES:
            raise ValueError(f"attention_scale must be one of {ATTENTION_SCALES}, got "
                             f"{attention_scale!r}")
        self.in_caps, self.in_dim, self.out_caps = in_caps, in_dim, out_caps
        self.routing = routing
        self.scale_dim = out_dim if attention_scale == "output" else in_dim
        self.weight = nn.Parameter(torch.empty(in_caps, out_caps, out_dim, in_dim))
        # Keras computes he_normal's fan-in of the authors' [out, in, in_dim, out_dim] weight
        # as in_dim x out x in (= 1,280 here), treating the first two axes as a kernel window.
        keras_he_normal_(self.weight, fan_in=in_dim * out_caps * in_caps)
        self.prior = None if routing == "uniform" else nn.Parameter(
            torch.zeros(in_caps, out_caps))

    def forward(self, u: Tensor) -> RoutingResult:
        if u.dim() != 3 or u.shape[1:] != (self.in_caps, self.in_dim):
            raise ValueError(f"input capsules must have shape [batch, {self.in_caps}, "
                             f"{self.in_dim}], got {tuple(u.shape)}")
        u_hat = torch.einsum("ijdk,bik->bijd", self.weight, u)       # [B, 16, 10, 16]
        if self.routing == "self-attention":                          # v [B, 10, 16], c [B, 16, 10]
            return self_attention_routing(u_hat, self.prior, self.scale_dim)
        uniform = u_hat.new_full(u_hat.shape[:3], 1 / self.out_caps)  # [B, 16, 10]
        if self.routing == "uniform-prior":
            weights = uniform + self.prior
        elif self.routing == "prior":
            weights = self.prior.expand_as(uniform)
        else:                                                         # "uniform"
            weights = uniform
        s = torch.einsum("bij,bijd->bjd", weights, u_hat)            # [B, 10, 16]
        return RoutingResult(efficient_squash(s), uniform)


class EfficientCapsNet(CapsuleClassifier):
    """Mazzia et al.'s MNIST Efficient-CapsNet; forward returns couplings [B, 16, 10].

    routing and attention_scale change how FCCaps routes (see ROUTINGS, ATTENTION_SCALES) for
    the ablations of chapter 07; the defaults are the paper's model.

    forward and loss are CapsuleClassifier's (layers.py); the reconstruction term is the
    authors' 0.392 x pixel-mean squared error (= 0.0005 x the sum over 784 pixels).
    """
    RECONSTRUCTION_WEIGHT = 0.392 / 784

    def __init__(self, with_decoder: bool = True, routing: str = "self-attention",
                 attention_scale: str = "output"):
        super().__init__()
        self.features = nn.Sequential(
            conv_relu_batchnorm(1, 32, 5),                            # [B, 32, 24, 24]
            conv_relu_batchnorm(32, 64, 3),                           # [B, 64, 22, 22]
            conv_relu_batchnorm(64, 64, 3),                           # [B, 64, 20, 20]
            conv_relu_batchnorm(64, 128, 3, stride=2))                # [B, 128, 9, 9]
        self.primary_capsules = EfficientPrimaryCapsules(128, 9, 16, 8)
        self.digit_capsules = FullyConnectedCapsules(16, 8, 10, 16, routing, attention_scale)
        self.decoder = CapsuleDecoder(10, 16) if with_decoder else None

    def encode_primary_capsules(self, images: Tensor) -> Tensor:
        """The squashed primary capsules of a batch: [B, 1, 28, 28] -> [B, 16, 8]."""
        check_images(images, self.image_shape, type(self).__name__)
        return self.primary_capsules(self.features(images))

    def capsules(self, images: Tensor) -> RoutingResult:
        """images [B, 1, 28, 28] -> poses v_j [B, 10, 16], couplings [B, 16, 10]."""
        return self.digit_capsules(self.encode_primary_capsules(images))
