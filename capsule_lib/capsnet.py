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
from torch import Tensor, nn

from .checks import check_images, check_positive_number, check_tensor, check_whole_number
from .fast_paths import CpuConv2d, digit_capsules_on_cpu
from .layers import CapsuleClassifier, CapsuleDecoder, truncated_normal_
from .routing import RoutingResult, dynamic_routing
from .squash import squash


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
        # nn.Conv2d with a faster backward on the CPU (fast_paths.CpuConv2d)
        self.conv = CpuConv2d(in_channels, n_types * capsule_dim, kernel_size, stride=stride)

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
    def __init__(self, in_caps: int = 1152, in_dim: int = 8, out_caps: int = 10,
                 out_dim: int = 16, routing_iterations: int = 3, bias: bool = False,
                 gradient_through_all_iterations: bool = True, weight_std: float = 0.1):
        super().__init__()
        routing_iterations = check_whole_number(routing_iterations, "routing_iterations")
        self.in_caps, self.in_dim, self.out_caps, self.out_dim = in_caps, in_dim, out_caps, out_dim
        self.routing_iterations = routing_iterations
        self.gradient_through_all_iterations = gradient_through_all_iterations
        self.weight = nn.Parameter(truncated_normal_(torch.empty(in_caps, out_caps, out_dim,
                                                                 in_dim), std=weight_std))
        self.bias = nn.Parameter(torch.full((out_caps, out_dim), 0.1)) if bias else None

    def check_input_capsules(self, u: Tensor) -> None:
        """A clear error unless u is a float tensor [batch, in_caps, in_dim]."""
        check_tensor(u, f"input capsules [batch, {self.in_caps}, {self.in_dim}]",
                     "DigitCapsules")
        if u.dim() != 3 or u.shape[1:] != (self.in_caps, self.in_dim):
            raise ValueError(f"input capsules must have shape [batch, {self.in_caps}, "
                             f"{self.in_dim}], got {tuple(u.shape)}")

    def votes(self, u: Tensor) -> Tensor:
        """u_hat[b, i, j] = W_ij u[b, i]:  [B, in_caps, in_dim] -> [B, in_caps, out_caps, out_dim]."""
        self.check_input_capsules(u)
        return torch.einsum("ijdk,bik->bijd", self.weight, u)        # one bmm over i

    def route(self, u: Tensor) -> RoutingResult:
        """The reference computation: votes for the whole batch, then dynamic routing.
        u [B, in_caps, in_dim] -> v [B, out_caps, out_dim], couplings [iterations, B, in_caps,
        out_caps]."""
        return dynamic_routing(self.votes(u), self.routing_iterations, self.bias,
                               self.gradient_through_all_iterations)

    def forward(self, u: Tensor) -> RoutingResult:
        """self.route(u); on a CPU, in float32 and outside autocast, computed by
        fast_paths.digit_capsules_on_cpu, which gives the same result faster."""
        self.check_input_capsules(u)
        if (u.device.type == "cpu" and u.dtype == self.weight.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu")):
            return digit_capsules_on_cpu(u, self.weight, self.bias, self.routing_iterations,
                                         self.gradient_through_all_iterations)
        return self.route(u)


class LearnedCouplingCapsules(DigitCapsules):
    """DigitCapsules without routing: the couplings c_ij = softmax_j(b_ij) come from learned
    logits b [in_caps, out_caps], trained by backpropagation with the weights and the same for
    every image. b starts at zero, i.e. at uniform couplings 1/out_caps (what routing with one
    iteration uses). s_j = sum_i c_ij W_ij u_i (+ bias), v_j = squash(s_j). The couplings are
    returned as [1, B, in_caps, out_caps], routing's layout for one iteration.

    logit_gain: b = logit_gain x the parameter `coupling_logits`. Adam's step is about the
    learning rate whatever the gradient's size, so b moves about logit_gain times faster than
    the weights: a learning rate of its own, without a second optimizer group.
    """

    def __init__(self, in_caps: int, in_dim: int, out_caps: int, out_dim: int,
                 bias: bool = False, weight_std: float = 0.1, logit_gain: float = 1.0):
        super().__init__(in_caps, in_dim, out_caps, out_dim, routing_iterations=1, bias=bias,
                         weight_std=weight_std)
        self.logit_gain = check_positive_number(logit_gain, f"{type(self).__name__}: logit_gain")
        self.coupling_logits = nn.Parameter(torch.zeros(in_caps, out_caps))

    def logits(self) -> Tensor:
        """b = logit_gain x coupling_logits: [in_caps, out_caps]."""
        return self.logit_gain * self.coupling_logits

    def couplings(self) -> Tensor:
        """c = softmax over the output capsules of b: [in_caps, out_caps], rows summing to 1."""
        return torch.softmax(self.logits(), dim=1)

    def forward(self, u: Tensor) -> RoutingResult:
        return self.route(u)

    def route(self, u: Tensor) -> RoutingResult:
        u_hat = self.votes(u)                                          # [B, n_in, n_out, d]
        c = self.couplings().to(u_hat.dtype)                           # [n_in, n_out]
        s = torch.einsum("ij,bijd->bjd", c, u_hat)                     # [B, n_out, d]
        if self.bias is not None:
            s = s + self.bias
        return RoutingResult(squash(s), c.expand(1, len(u), *c.shape))


def check_gain_needs_learned_couplings(gain, learned_couplings: bool, owner: str) -> None:
    """A coupling_logit_gain other than 1 means nothing without learned couplings: say so."""
    if gain != 1 and not learned_couplings:
        raise ValueError(f"{owner}: coupling_logit_gain={gain!r} scales learned couplings' "
                         f"logits; pass learned_couplings=True with it (routing has none)")


class CapsNet(CapsuleClassifier):
    """Sabour et al.'s MNIST CapsNet (6,804,224 parameters; 8,215,568 with the decoder;
    +160 with output_bias=True, the 10x16 bias of the authors' code).

    routing_iterations: 3 in the paper; 1 gives uniform couplings 1/10, the paper's
    "no routing" variant. learned_couplings=True replaces routing by couplings
    c_ij = softmax_j(b_ij) learned by backpropagation, the same for every image
    (LearnedCouplingCapsules; +11,520 parameters, routing_iterations is then unused);
    coupling_logit_gain: their logit_gain (only with learned_couplings).
    gradient_through_all_iterations: see `dynamic_routing`.
    image_size: the side of the square input images. The primary-capsule grid follows from it,
    side (image_size - 8 - 9) // 2 + 1: 6x6 for MNIST's 28 (1,152 primary capsules), 10x10 for
    the paper's 36x36 MultiMNIST (3,200), with one W_ij per primary capsule and digit capsule;
    the decoder draws image_size x image_size pixels.
    """

    def __init__(self, routing_iterations: int = 3, with_decoder: bool = True,
                 output_bias: bool = False, gradient_through_all_iterations: bool = True,
                 image_size: int = 28, learned_couplings: bool = False,
                 coupling_logit_gain: float = 1.0):
        super().__init__()
        image_size = check_whole_number(image_size, "CapsNet: image_size", minimum=17)
        check_gain_needs_learned_couplings(coupling_logit_gain, learned_couplings, "CapsNet")
        self.image_shape = (1, image_size, image_size)
        grid = self.primary_grid_side(image_size)
        self.conv1 = nn.Sequential(CpuConv2d(1, 256, kernel_size=9), nn.ReLU())  # ReLU included
        truncated_normal_(self.conv1[0].weight, std=0.05)
        nn.init.constant_(self.conv1[0].bias, 0.1)
        self.primary_capsules = PrimaryCapsules(256, n_types=32, capsule_dim=8)
        truncated_normal_(self.primary_capsules.conv.weight, std=0.1)
        nn.init.constant_(self.primary_capsules.conv.bias, 0.1)
        if learned_couplings:
            self.digit_capsules = LearnedCouplingCapsules(32 * grid * grid, 8, 10, 16,
                                                          output_bias,
                                                          logit_gain=coupling_logit_gain)
        else:
            self.digit_capsules = DigitCapsules(32 * grid * grid, 8, 10, 16,
                                                routing_iterations, output_bias,
                                                gradient_through_all_iterations)
        self.decoder = CapsuleDecoder(10, 16, self.image_shape) if with_decoder else None

    @staticmethod
    def primary_grid_side(image_size: int) -> int:
        """Side of the primary-capsule grid: Conv1 (9x9, stride 1) then 9x9, stride 2."""
        return (image_size - 8 - 9) // 2 + 1

    def encode_primary_capsules(self, images: Tensor) -> Tensor:
        """The squashed primary capsules of a batch: [B, 1, 28, 28] -> [B, 1152, 8]
        ([B, 1, 36, 36] -> [B, 3200, 8] with image_size=36)."""
        check_images(images, self.image_shape, type(self).__name__)
        return self.primary_capsules(self.conv1(images))               # [B, 256, 20, 20] inside

    def capsules(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [B, 1, 28, 28] -> poses v_j [B, 10, 16], couplings [iterations, B, 1152, 10].
        forward and loss are CapsuleClassifier's (layers.py): scores = ||v_j||, decoder on the
        masked poses, margin loss + 0.0005 x summed squared reconstruction error."""
        return self.digit_capsules(self.encode_primary_capsules(images))
