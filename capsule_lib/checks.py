"""Input checks shared by the library: each raises an error that says what was expected, what
was given, and how to fix it.

Two kinds, kept apart on purpose:
- cheap checks of type, dtype and shape (`check_images`, `check_labels`), which models call
  in forward: they never read tensor values, so they cost no device sync and do not break
  torch.compile graphs, and chapters can still feed unusual values (negated images, say);
- checks that read values (`check_dataset`: NaN, range, label range), which the entry points
  call once per dataset: fit, evaluate, the loaders and the command line.
"""
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

CONVERT_HINT = "convert with images.float() / 255 (uint8 pixels) or images.float() (float64)"


def describe(value) -> str:
    """A short description of a value for error messages: its type, and shape and dtype."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a numpy array ({value.dtype}) of shape {value.shape}"
    return f"a {type(value).__name__}"


def check_tensor(value, name: str, owner: str) -> Tensor:
    """value, if it is a torch tensor; a TypeError that says how to make one otherwise."""
    if not isinstance(value, Tensor):
        hint = ("torch.from_numpy(array)" if isinstance(value, np.ndarray)
                else "torch.as_tensor(values)")
        raise TypeError(f"{owner} expects {name} as a torch tensor, got {describe(value)}; "
                        f"convert with {hint}")
    return value


def check_not_empty(batch: int, owner: str) -> None:
    """Raise unless a batch has at least one example (means over 0 examples are NaN)."""
    if batch == 0:
        raise ValueError(f"{owner} got an empty batch (0 examples): its mean is undefined; "
                         f"pass at least one example")


def check_model(model, owner: str) -> None:
    """Raise unless model is a capsule_lib-style model: an nn.Module with a loss method."""
    if not (isinstance(model, nn.Module) and callable(getattr(model, "loss", None))):
        raise TypeError(f"{owner} expects a capsule_lib model (an nn.Module with "
                        f"forward(images, labels) and loss(output, images, labels)), got "
                        f"{type(model).__name__}")


def check_images(images, expected: tuple[int, int, int], owner: str) -> None:
    """Raise unless images is a float32 (or half/bfloat16) tensor [B, *expected].

    Cheap: type, dtype and shape only (see the module docstring)."""
    c, h, w = expected
    if not isinstance(images, Tensor):
        hint = (" Wrap it with torch.from_numpy(array).float() (and divide uint8 pixels by 255)."
                if isinstance(images, np.ndarray) else "")
        raise TypeError(f"{owner} expects images as a torch tensor [batch, {c}, {h}, {w}], got "
                        f"{describe(images)}.{hint}")
    if images.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{owner} expects float32 images with pixels in [0, 1], got "
                        f"{describe(images)}; {CONVERT_HINT}")
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(expected):
        raise ValueError(
            f"{owner} expects images of shape [batch, {c}, {h}, {w}] "
            f"({c}-channel {h}x{w}), got {tuple(images.shape)}. "
            + ("Add the channel dimension with images.unsqueeze(1). "
               if images.dim() == 3 and tuple(images.shape[1:]) == (h, w) else "")
            + ("Add the batch dimension with image.unsqueeze(0). "
               if tuple(images.shape) == tuple(expected) else "")
            + ("This model is built for MNIST-sized digits: resize or crop the input to "
               f"{h}x{w} and use {c} channel(s)." if images.dim() == 4 else ""))


def check_labels(labels, batch: int, owner: str, n_classes: int | None = None,
                 digits_per_image: bool = False) -> None:
    """Raise unless labels is an integer tensor [batch] (or [batch, m] with digits_per_image).

    Cheap: type, dtype and shape; n_classes is only used in the message (the range is read by
    check_dataset at the entry points, and by torch's one_hot where it is used)."""
    shape = f"[{batch}, digits per image]" if digits_per_image else f"[{batch}]"
    if not isinstance(labels, Tensor):
        raise TypeError(f"{owner} expects labels as an int64 tensor {shape}, got "
                        f"{describe(labels)}; use torch.as_tensor(labels)")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        classes = f" in [0, {n_classes})" if n_classes else ""
        raise TypeError(f"{owner} expects integer class indices{classes} (int64), got "
                        f"{describe(labels)}; convert with labels.long()")
    want_dim = 2 if digits_per_image else 1
    if labels.dim() != want_dim or labels.shape[0] != batch:
        raise ValueError(f"{owner} expects labels of shape {shape}, one per image, got "
                         f"{tuple(labels.shape)}")


def labels_are_cheap_to_read(labels: Tensor) -> bool:
    """Whether forward and the losses may read the labels' values to check their range: only
    for CPU tensors outside torch.compile. There torch's one_hot reads them anyway, so the check
    costs nothing; on a GPU it would cost a host sync per step, and meta tensors have no values
    (fit and evaluate check every label once per dataset instead)."""
    return labels.device.type == "cpu" and not torch.compiler.is_compiling()


def check_label_range(labels: Tensor, n_classes: int, owner: str) -> None:
    """Raise unless every label lies in [0, n_classes) (reads the values)."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"{owner}: labels must be class indices in [0, {n_classes}), got "
                         f"values from {int(labels.min())} to {int(labels.max())}")


def check_tensor_dataset(dataset, owner: str) -> tuple[Tensor, Tensor]:
    """(images, labels) of a TensorDataset of two tensors; no values are read."""
    if not (isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2):
        raise TypeError(f"{owner} expects a TensorDataset(images [N, 1, 28, 28], labels [N]) "
                        f"as load_dataset returns, got {describe(dataset)}; wrap tensors with "
                        f"torch.utils.data.TensorDataset(images, labels)")
    return dataset.tensors


def check_dataset(dataset, owner: str, n_classes: int = 10) -> tuple[Tensor, Tensor]:
    """(images, labels) of a TensorDataset, after checking the values an entry point relies on:
    at least one example, float images [N, C, H, W] that are finite and in [0, 1], int64-like
    labels [N] in [0, n_classes)."""
    images, labels = check_tensor_dataset(dataset, owner)
    if len(labels) == 0:
        raise ValueError(f"{owner} got an empty dataset (0 examples)")
    if images.dim() != 4:
        raise ValueError(f"{owner} expects images [N, C, H, W], got {tuple(images.shape)}")
    check_labels(labels, len(images), owner, n_classes)
    check_pixels(images, owner)
    check_label_range(labels, n_classes, owner)
    return images, labels


def check_pixels(images: Tensor, owner: str) -> None:
    """Raise unless images [N, ...] are floats, finite, and in [0, 1] (reads the values)."""
    if not images.is_floating_point():
        raise TypeError(f"{owner} expects float images with pixels in [0, 1], got "
                        f"{describe(images)}; {CONVERT_HINT}")
    if images.numel() == 0:
        return
    if not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
        raise ValueError(f"{owner}: {bad} image(s) contain NaN or infinite pixels; remove or "
                         f"repair them")
    low, high = float(images.min()), float(images.max())
    if low < -1e-4 or high > 1 + 1e-4:
        hint = " They look like 0-255 pixels: divide by 255." if high > 1.5 else ""
        raise ValueError(f"{owner} expects pixels in [0, 1], got values from {low:.4g} to "
                         f"{high:.4g}.{hint}")


def check_whole_number(value, name: str, minimum: int = 1) -> int:
    """value as an int, if it is a whole number >= minimum (an int, not a bool or float)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        extra = (f"; write {int(value)}" if isinstance(value, float) and math.isfinite(value)
                 and value.is_integer() else "")
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}{extra}")
    return int(value)


def check_positive_number(value, name: str) -> float:
    """value as a float, if it is a finite number > 0 (an int or float, not a bool)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not 0 < value < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_finite(value, name: str) -> None:
    """Raise unless value (a number or a tensor) is real and finite everywhere (no NaN, no
    infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number, Tensor)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not bool(torch.isfinite(torch.as_tensor(value)).all()):
        raise ValueError(f"{name} must be finite, got {value!r}")


def check_writable(path: str | Path, name: str) -> Path:
    """path, once a file can be created in its folder (made if missing); a ValueError that says
    why not otherwise. Call it before a long computation whose result is saved there."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name} {path} is a directory; give a file name such as "
                         f"{path / 'model.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as error:
        reason = f"{error.strerror}: {error.filename}" if error.strerror else str(error)
        raise ValueError(f"{name} {path}: cannot write a file there ({reason}); pick a path in a "
                         f"writable folder") from error
    return path


def check_device(device, name: str = "device") -> torch.device:
    """device as a torch.device; a ValueError for a name torch does not know, or for a GPU that
    is not there (which would otherwise fail deep inside torch, or later)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{name} must name a torch device such as 'cpu' or 'cuda', got "
                         f"{device!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={str(device)!r} asks for a GPU, but torch sees none here; "
                         f"use 'cpu'")
    return device
