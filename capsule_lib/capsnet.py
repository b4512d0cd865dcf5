"""CapsNet of Sabour, Frosst & Hinton (2017), "Dynamic Routing Between Capsules".

    images [B, 1, 28, 28]
      -> Conv1: 256 channels, 9x9, stride 1, ReLU                   [B, 256, 20, 20]
      -> PrimaryCapsules: 32 types x 8D, 9x9, stride 2, squash       [B, 1152, 8]
      -> DigitCapsules: W_ij (8 -> 16) per pair, dynamic routing     [B, 10, 16]
      -> scores = capsule lengths ||v_j||                            [B, 10]
      -> CapsuleDecoder on the poses masked to one capsule           [B, 1, 28, 28]

Weight initialisation follows the authors' TensorFlow code (Sarasra/models, research/capsules):
weights are drawn from a normal distribution truncated at two standard deviations, with
std 0.05 for Conv1 and the default std 0.1 for the primary-capsule convolution and the W_ij;
biases start at 0.1. The decoder keeps PyTorch's default initialisation of nn.Linear.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .interfaces import ModelOutput, check_images
from .losses import margin_loss, reconstruction_loss
from .routing import RoutingResult, dynamic_routing
from .squash import squash


def truncated_normal_(tensor: Tensor, std: float) -> Tensor:
    """In place: normal(0, std) restricted to two standard deviations either side, the
    distribution of TensorFlow's truncated_normal_initializer (std not rescaled)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


class PrimaryCapsules(nn.Module):
    """A convolution whose output channels are read as capsules, then squashed.

    The conv has n_types * capsule_dim channels. One capsule is the capsule_dim channels of one
    type at one spatial position: channel t * capsule_dim + k at (row, col) is component k of
    the capsule of type t at (row, col). Capsules are flattened in (type, row, column) order.
    A plain .view(B, -1, capsule_dim) of the channels-first conv output would instead gather
    8 neighbouring positions of a single channel into one "capsule".
    """

    def __init__(self, in_channels: int = 256, n_types: int = 32, capsule_dim: int = 8,
                 kernel_size: int = 9, stride: int = 2):
        super().__init__()
        self.n_types, self.capsule_dim = n_types, capsule_dim
        self.conv = nn.Conv2d(in_channels, n_types * capsule_dim, kernel_size, stride=stride)

    def forward(self, features: Tensor) -> Tensor:
        x = self.conv(features)                                       # [B, 32*8, 6, 6]
        batch, _, height, width = x.shape
        x = x.view(batch, self.n_types, self.capsule_dim, height, width)    # [B, 32, 8, 6, 6]
        x = x.permute(0, 1, 3, 4, 2)                                  # [B, 32, 6, 6, 8]
        x = x.reshape(batch, self.n_types * height * width, self.capsule_dim)  # [B, 1152, 8]
        return squash(x)


class DigitCapsules(nn.Module):
    """Fully connected capsule layer: one matrix W_ij (in_dim -> out_dim) for every pair of
    input capsule i and output capsule j, then routing by agreement.

    Votes u_hat_j|i = W_ij u_i are computed with one batched matrix product; weight has
    shape [in_caps, out_caps, out_dim, in_dim] (W_ij = weight[i, j]). bias: the
    out_caps x out_dim bias the authors' code adds to s_j (the paper has none), starting at 0.1.
    weight_std: W starts as a normal truncated at two stds; 0.1 is the authors' value.
    """
    CPU_EXAMPLES_PER_CHUNK = 4   # see forward; measured by benchmarks/throughput.py

    def __init__(self, in_caps: int = 1152, in_dim: int = 8, out_caps: int = 10,
                 out_dim: int = 16, routing_iterations: int = 3, bias: bool = False,
                 gradient_through_all_iterations: bool = True, weight_std: float = 0.1):
        super().__init__()
        if routing_iterations < 1:
            raise ValueError(f"routing_iterations must be at least 1, got {routing_iterations}")
        self.in_caps, self.in_dim, self.out_caps, self.out_dim = in_caps, in_dim, out_caps, out_dim
        self.routing_iterations = routing_iterations
        self.gradient_through_all_iterations = gradient_through_all_iterations
        self.weight = nn.Parameter(truncated_normal_(torch.empty(in_caps, out_caps, out_dim,
                                                                 in_dim), std=weight_std))
        self.bias = nn.Parameter(torch.full((out_caps, out_dim), 0.1)) if bias else None

    def votes(self, u: Tensor) -> Tensor:
        """u_hat[b, i, j] = W_ij u[b, i]:  [B, in_caps, in_dim] -> [B, in_caps, out_caps, out_dim]."""
        if u.dim() != 3 or u.shape[1:] != (self.in_caps, self.in_dim):
            raise ValueError(f"input capsules must have shape [batch, {self.in_caps}, "
                             f"{self.in_dim}], got {tuple(u.shape)}")
        return torch.einsum("ijdk,bik->bijd", self.weight, u)        # one bmm over i

    def forward(self, u: Tensor) -> RoutingResult:
        """v [B, out_caps, out_dim] and couplings [iterations, B, in_caps, out_caps].

        On a CPU the examples are routed a few at a time. Routing reads every vote 2 x
        iterations - 1 times forward and again backward; one example's votes (0.7 MB for the
        MNIST CapsNet) stay in the processor's cache for all of that, a batch of 64 (47 MB) does
        not, and its routing then waits on main memory. Routing 4 examples at a time halved the
        time of this layer on a 2-core AMD EPYC (training step 0.75 -> 0.94 of the matmul
        roofline at batch 64); on a 2-core Intel Xeon a training step took the same time with
        chunks of 4, 8 and 32. Examples never interact in routing, so the result is the same
        either way. A GPU routes the whole batch at once.
        """
        examples_per_chunk = self.CPU_EXAMPLES_PER_CHUNK if u.device.type == "cpu" else len(u)
        chunks = [dynamic_routing(self.votes(part), self.routing_iterations, self.bias,
                                  self.gradient_through_all_iterations)
                  for part in u.split(examples_per_chunk)]              # votes [b, 1152, 10, 16]
        return RoutingResult(torch.cat([chunk.outputs for chunk in chunks]),
                             torch.cat([chunk.couplings for chunk in chunks], dim=1))


class CapsuleDecoder(nn.Module):
    """FC 160 -> 512 ReLU -> 1024 ReLU -> 784 sigmoid, on the poses with all but one capsule
    set to zero. decoder(poses [B, 10, 16], mask_labels [B]) -> images [B, 1, 28, 28]."""

    def __init__(self, n_classes: int = 10, capsule_dim: int = 16,
                 image_shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        self.n_classes, self.image_shape = n_classes, image_shape
        n_pixels = image_shape[0] * image_shape[1] * image_shape[2]
        self.layers = nn.Sequential(
            nn.Linear(n_classes * capsule_dim, 512), nn.ReLU(),
            nn.Linear(512, 1024), nn.ReLU(),
            nn.Linear(1024, n_pixels), nn.Sigmoid())

    def forward(self, poses: Tensor, mask_labels: Tensor) -> Tensor:
        if poses.dim() != 3 or poses.shape[1] != self.n_classes:
            raise ValueError(f"poses must have shape [batch, {self.n_classes}, capsule_dim], "
                             f"got {tuple(poses.shape)}")
        if mask_labels.shape != poses.shape[:1]:
            raise ValueError(f"mask_labels must have shape [batch] = [{poses.shape[0]}], "
                             f"got {tuple(mask_labels.shape)}")
        keep = F.one_hot(mask_labels, self.n_classes).to(poses.dtype)   # [B, 10]
        masked = (poses * keep.unsqueeze(-1)).flatten(1)                # [B, 160]
        return self.layers(masked).view(-1, *self.image_shape)          # [B, 1, 28, 28]


def capsule_lengths(poses: Tensor) -> Tensor:
    """||v_j|| over the last dimension: [B, n, d] -> [B, n]."""
    return torch.linalg.vector_norm(poses, dim=-1)


def decoder_mask(scores: Tensor, labels: Tensor | None) -> Tensor:
    """Which capsule the decoder sees: the true label when given, else the longest capsule."""
    return labels if labels is not None else scores.argmax(dim=1)


class CapsNet(nn.Module):
    """Sabour et al.'s MNIST CapsNet (6,804,224 parameters; 8,215,568 with the decoder;
    +160 with output_bias=True, the 10x16 bias of the authors' code).

    routing_iterations: 3 in the paper; 1 gives uniform couplings 1/10, the paper's
    "no routing" variant. gradient_through_all_iterations: see `dynamic_routing`.
    """

    def __init__(self, routing_iterations: int = 3, with_decoder: bool = True,
                 output_bias: bool = False, gradient_through_all_iterations: bool = True):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 256, kernel_size=9), nn.ReLU())  # ReLU included
        truncated_normal_(self.conv1[0].weight, std=0.05)
        nn.init.constant_(self.conv1[0].bias, 0.1)
        self.primary_capsules = PrimaryCapsules(256, n_types=32, capsule_dim=8)
        truncated_normal_(self.primary_capsules.conv.weight, std=0.1)
        nn.init.constant_(self.primary_capsules.conv.bias, 0.1)
        self.digit_capsules = DigitCapsules(32 * 6 * 6, 8, 10, 16, routing_iterations,
                                            output_bias, gradient_through_all_iterations)
        self.decoder = CapsuleDecoder(10, 16) if with_decoder else None

    def primary_capsules_of(self, images: Tensor) -> Tensor:
        """The squashed primary capsules of a batch: [B, 1, 28, 28] -> [B, 1152, 8]."""
        check_images(images, (1, 28, 28), type(self).__name__)
        return self.primary_capsules(self.conv1(images))               # [B, 256, 20, 20] inside

    def forward(self, images: Tensor, labels: Tensor | None = None) -> ModelOutput:
        primary = self.primary_capsules_of(images)                     # [B, 1152, 8]
        poses, couplings = self.digit_capsules(primary)                # [B, 10, 16], [it, B, 1152, 10]
        scores = capsule_lengths(poses)                                # [B, 10]
        reconstructions = None
        if self.decoder is not None:
            reconstructions = self.decoder(poses, decoder_mask(scores, labels))  # [B, 1, 28, 28]
        return ModelOutput(scores, poses, reconstructions, couplings)

    def loss(self, output: ModelOutput, images: Tensor, labels: Tensor) -> Tensor:
        """Margin loss + 0.0005 x summed squared reconstruction error (with a decoder)."""
        loss = margin_loss(output.scores, labels)
        if output.reconstructions is not None:
            loss = loss + reconstruction_loss(output.reconstructions, images)
        return loss
