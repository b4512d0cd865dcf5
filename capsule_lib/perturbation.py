"""What a capsule's dimensions encode: decode one capsule with one pose dimension tweaked
(Sabour et al. 2017, section 5.1 and figure 4). plotting.plot_dimension_perturbations draws
the result."""
import torch
from torch import Tensor, nn

from .checks import check_finite, check_tensor

# Sabour et al. (2017), section 5.1: each dimension of the winning capsule is tweaked
# "by intervals of 0.05 in the range [-0.25, 0.25]": 11 values, 0 included.
PAPER_DELTAS = torch.arange(-5, 6) * 0.05                 # 0 exactly in the middle


def _one_image(image: Tensor) -> Tensor:
    """[28, 28], [1, 28, 28] or [1, 1, 28, 28] -> [1, 1, 28, 28]."""
    check_tensor(image, "one image [28, 28]", "perturbed_reconstructions")
    if image.dim() == 4 and image.shape[0] == 1:
        return image
    if image.dim() == 3 and image.shape[0] == 1:
        return image.unsqueeze(0)
    if image.dim() == 2:
        return image[None, None]
    raise ValueError(f"expected ONE image of shape [28, 28], [1, 28, 28] or [1, 1, 28, 28], "
                     f"got {tuple(image.shape)}; pick one with images[i]")


@torch.no_grad()
def perturb_capsule_dimensions(model: nn.Module, image: Tensor, label, dims,
                               deltas) -> tuple[Tensor, int]:
    """(decoded grid [len(dims), len(deltas), H, W], index of the perturbed capsule): see
    perturbed_reconstructions, which returns the grid alone."""
    if getattr(model, "decoder", None) is None:
        raise ValueError(f"{type(model).__name__} has no decoder: the perturbation experiment "
                         f"needs a model with one (CapsNet, EfficientCapsNet)")
    dims = [int(d) for d in dims]
    deltas = torch.as_tensor(deltas, dtype=torch.float32).flatten()
    if not dims or not len(deltas):
        raise ValueError(f"dims and deltas must each hold at least one value, got dims={dims} "
                         f"and {len(deltas)} deltas")
    check_finite(deltas, "deltas")
    image = _one_image(image)
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters())
        image = image.to(parameter.device, parameter.dtype)
        label_tensor = None if label is None else torch.as_tensor([int(label)], device=image.device)
        output = model(image, label_tensor)
        poses = output.poses                                        # [1, n_classes, d]
        n_classes, pose_dim = poses.shape[1:]
        capsule = int(output.scores.argmax(1)) if label is None else int(label)
        if not all(0 <= d < pose_dim for d in dims):
            raise ValueError(f"dims must lie in [0, {pose_dim}), got {dims}")
        offsets = torch.zeros(len(dims), len(deltas), n_classes, pose_dim, device=poses.device)
        for row, d in enumerate(dims):
            offsets[row, :, capsule, d] = deltas.to(poses.device)
        tweaked = (poses + offsets).reshape(-1, n_classes, pose_dim)  # [D*K, n_classes, d]
        mask = torch.full((len(tweaked),), capsule, device=poses.device)
        decoded = model.decoder(tweaked, mask)                      # [D*K, 1, H, W]
    finally:
        model.train(was_training)
    return decoded.reshape(len(dims), len(deltas), *decoded.shape[-2:]).cpu(), capsule


def perturbed_reconstructions(model: nn.Module, image: Tensor, label=None, dims=range(16),
                              deltas=PAPER_DELTAS) -> Tensor:
    """Decode one image's capsule with one dimension tweaked (Sabour et al. 2017, fig. 4).

    The capsule is that of `label`, or the longest one when label is None. For every d in
    dims and delta in deltas, pose dimension d of that capsule gets + delta and the decoder
    (masked to that capsule) draws the result. Returns [len(dims), len(deltas), 28, 28].
    """
    return perturb_capsule_dimensions(model, image, label, dims, deltas)[0]
