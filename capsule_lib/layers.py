"""The parts every capsule model of the library shares: initialisation, capsule lengths, the
reconstruction decoder and its mask, and `CapsuleClassifier`, the forward pass and loss that
CapsNet, Efficient-CapsNet and DeepCapsNet have in common.

A CapsuleClassifier subclass only says how images become output capsules:

    capsules(images [B, 1, 28, 28]) -> (poses v_j [B, n_classes, d], couplings)

and the shared forward turns that into scores = ||v_j||, reconstructions from the masked poses,
and a ModelOutput; the shared loss is the margin loss plus the weighted reconstruction error.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_images, check_label_range, check_labels, labels_are_cheap_to_read
from .interfaces import ModelOutput
from .losses import margin_loss, reconstruction_loss


def truncated_normal_(tensor: Tensor, std: float) -> Tensor:
    """In place: normal(0, std) restricted to two standard deviations either side, the
    distribution of TensorFlow's truncated_normal_initializer (std not rescaled)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


def capsule_lengths(poses: Tensor) -> Tensor:
    """||v_j|| over the last dimension: [B, n, d] -> [B, n] (computed in float32 at least,
    so that half-precision poses of any length give a finite length)."""
    dtype = torch.promote_types(poses.dtype, torch.float32)
    return torch.linalg.vector_norm(poses, dim=-1, dtype=dtype).to(poses.dtype)


def decoder_mask(scores: Tensor, labels: Tensor | None) -> Tensor:
    """Which capsule the decoder sees: the true label when given, else the longest capsule."""
    return labels if labels is not None else scores.argmax(dim=1)


class CapsuleDecoder(nn.Module):
    """FC 160 -> 512 ReLU -> 1024 ReLU -> 784 sigmoid, on the poses with all but one capsule
    set to zero. decoder(poses [B, 10, 16], mask_labels [B]) -> images [B, 1, 28, 28]."""

    def __init__(self, n_classes: int = 10, capsule_dim: int = 16,
                 image_shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        self.n_classes, self.capsule_dim, self.image_shape = n_classes, capsule_dim, image_shape
        n_pixels = image_shape[0] * image_shape[1] * image_shape[2]
        self.layers = nn.Sequential(
            nn.Linear(n_classes * capsule_dim, 512), nn.ReLU(),
            nn.Linear(512, 1024), nn.ReLU(),
            nn.Linear(1024, n_pixels), nn.Sigmoid())

    def forward(self, poses: Tensor, mask_labels: Tensor) -> Tensor:
        if not isinstance(poses, Tensor) or poses.dim() != 3 or \
                tuple(poses.shape[1:]) != (self.n_classes, self.capsule_dim):
            shape = tuple(poses.shape) if isinstance(poses, Tensor) else type(poses).__name__
            raise ValueError(f"poses must have shape [batch, {self.n_classes}, "
                             f"{self.capsule_dim}], got {shape}")
        check_labels(mask_labels, poses.shape[0], "CapsuleDecoder (mask_labels)", self.n_classes)
        if labels_are_cheap_to_read(mask_labels):
            check_label_range(mask_labels, self.n_classes, "CapsuleDecoder (mask_labels)")
        keep = F.one_hot(mask_labels.long(), self.n_classes).to(poses.dtype)  # [B, 10]
        masked = (poses * keep.unsqueeze(-1)).flatten(1)                # [B, 160]
        return self.layers(masked).view(-1, *self.image_shape)          # [B, 1, 28, 28]


class CapsuleClassifier(nn.Module):
    """Base class of the capsule models: subclasses set `self.decoder` (a CapsuleDecoder or
    None) and define `capsules(images) -> (poses [B, n_classes, d], couplings)`.

    RECONSTRUCTION_WEIGHT multiplies the summed squared pixel error (Sabour et al.: 0.0005).
    image_shape: the [channels, height, width] of the images the model takes.
    """
    image_shape: tuple[int, int, int] = (1, 28, 28)
    RECONSTRUCTION_WEIGHT = 0.0005
    decoder: CapsuleDecoder | None

    def capsules(self, images: Tensor):
        raise NotImplementedError

    def forward(self, images: Tensor, labels: Tensor | None = None) -> ModelOutput:
        """images [B, *image_shape] float in [0, 1]; labels [B] (int64) or None. With labels the
        decoder reconstructs from the true class's capsule, else from the longest one."""
        name = type(self).__name__
        check_images(images, self.image_shape, name)
        if labels is not None:
            check_labels(labels, images.shape[0], f"{name}.forward", 10)
        poses, couplings = self.capsules(images)                      # [B, 10, 16], ...
        scores = capsule_lengths(poses)                               # [B, 10]
        reconstructions = None
        if self.decoder is not None:
            reconstructions = self.decoder(poses, decoder_mask(scores, labels))  # [B, 1, H, W]
        return ModelOutput(scores, poses, reconstructions, couplings)

    def loss(self, output: ModelOutput, images: Tensor, labels: Tensor) -> Tensor:
        """Margin loss + RECONSTRUCTION_WEIGHT x summed squared reconstruction error (with a
        decoder)."""
        loss = margin_loss(output.scores, labels)
        if output.reconstructions is not None:
            loss = loss + reconstruction_loss(output.reconstructions, images,
                                              weight=self.RECONSTRUCTION_WEIGHT)
        return loss
