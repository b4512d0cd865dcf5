"""Figures the chapters reuse.

Every function returns the matplotlib Figure it drew on. Most accept `ax` (or `axes`) to draw
into an existing figure; without one they create a figure with pyplot, so in a notebook end the
line with `;` or assign the result (`fig = plot_...(...)`) to show it once. Nothing here calls
plt.show(), so all of it works under the non-interactive Agg backend.

Images may be given as [B, 1, 28, 28] or [B, 28, 28] tensors (or numpy arrays).
"""
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator
from torch import Tensor, nn

from .checks import check_tensor, check_whole_number
from .losses import M_MINUS, M_PLUS
# PAPER_DELTAS and perturbed_reconstructions are also imported from here by chapter 05.
from .perturbation import PAPER_DELTAS, perturb_capsule_dimensions, perturbed_reconstructions
from .squash import squash_curves



def _numpy(values) -> np.ndarray:
    """A tensor (on any device, with or without grad) or array-like -> numpy array."""
    return values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)


def _pictures(images) -> np.ndarray:
    """[B, 1, H, W] or [B, H, W] images -> [B, H, W] float numpy array."""
    array = _numpy(images).astype(np.float32)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise ValueError(f"images must have shape [batch, 1, H, W] or [batch, H, W], got "
                         f"{tuple(array.shape)}. For a single image, add the batch dimension "
                         f"with image.unsqueeze(0).")
    if len(array) == 0:
        raise ValueError("there are no images to draw (the batch is empty)")
    return array


def _numbers(values, name: str, count: int, n_classes: int | None = None) -> np.ndarray | None:
    """Labels/predictions as an integer numpy array of `count` class indices in
    [0, n_classes) (None stays None)."""
    if values is None:
        return None
    array = _numpy(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of class indices, got shape {array.shape}")
    if len(array) != count:
        raise ValueError(f"{name} must have one per example ({count}), got {len(array)}")
    if n_classes is not None and len(array) and not 0 <= array.min() <= array.max() < n_classes:
        raise ValueError(f"{name} must be class indices in [0, {n_classes}), got values from "
                         f"{array.min()} to {array.max()}")
    return array.astype(int)


def _class_names(class_names, n_classes: int) -> list[str]:
    """The given class names (one per class), or the class indices as text."""
    if class_names is None:
        return [str(k) for k in range(n_classes)]
    if len(class_names) != n_classes:
        raise ValueError(f"class_names must name all {n_classes} classes, got "
                         f"{len(class_names)}: {list(class_names)}")
    return list(class_names)


def _hide_ticks(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _new_axes(axes, nrows: int, ncols: int, figsize, **kwargs) -> tuple[Figure, np.ndarray]:
    """Create a [nrows, ncols] grid of axes, or check that the caller's `axes` has that size."""
    if axes is None:
        fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False,
                                 layout="constrained", **kwargs)
        return fig, axes
    axes = np.asarray(axes, dtype=object)
    if axes.size != nrows * ncols:
        raise ValueError(f"expected {nrows * ncols} axes ({nrows} x {ncols}), got {axes.size}")
    return axes.flat[0].figure, axes.reshape(nrows, ncols)


# ----------------------------------------------------------------------------------------------
# Squash

def plot_squash_curves(max_norm: float = 5.0, axes=None) -> Figure:
    """Two panels: output length vs input length, and its derivative, for both squashes."""
    curves = squash_curves(max_norm)
    fig, axes = _new_axes(axes, 1, 2, figsize=(9, 3.6))
    length_ax, slope_ax = axes.flat
    r = curves["input_length"].numpy()
    styles = {"squash": ("squash (Sabour et al.)", "C0"),
              "efficient_squash": ("efficient squash (Mazzia et al.)", "C1")}
    for name, (label, color) in styles.items():
        length_ax.plot(r, curves[name].numpy(), color=color, label=label)
        slope_ax.plot(r, curves[f"{name}_slope"].numpy(), color=color, label=label)
    length_ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
    length_ax.set(title="Output length", xlabel="input length ||s||", ylabel="output length ||v||",
                  ylim=(0, 1.05), xlim=(0, max_norm))
    slope_ax.set(title="Slope (autograd)", xlabel="input length ||s||",
                 ylabel="d||v|| / d||s||", xlim=(0, max_norm), ylim=(0, 1.05))
    length_ax.legend(loc="lower right")
    slope_ax.legend(loc="upper right")
    return fig


# ----------------------------------------------------------------------------------------------
# Reconstructions

def plot_reconstructions(images, reconstructions, labels=None, predictions=None, n: int = 8,
                         axes=None) -> Figure:
    """Inputs on the top row, the decoder's reconstructions under them (first n examples).

    Titles give the label and/or the prediction; a wrong prediction is titled in red.
    """
    images, reconstructions = _pictures(images), _pictures(reconstructions)
    if images.shape != reconstructions.shape:
        raise ValueError(f"images {images.shape} and reconstructions {reconstructions.shape} "
                         f"must have the same shape")
    labels = _numbers(labels, "labels", len(images))
    predictions = _numbers(predictions, "predictions", len(images))
    n = min(check_whole_number(n, "plot_reconstructions: n (examples to draw)"), len(images))
    fig, axes = _new_axes(axes, 2, n, figsize=(1.25 * n + 0.6, 3.2))
    for column in range(n):
        top, bottom = axes[0, column], axes[1, column]
        top.imshow(images[column], cmap="gray", vmin=0, vmax=1)
        bottom.imshow(reconstructions[column], cmap="gray", vmin=0, vmax=1)
        _hide_ticks(top)
        _hide_ticks(bottom)
        parts = []
        if labels is not None:
            parts.append(f"label {labels[column]}")
        if predictions is not None:
            parts.append(f"pred {predictions[column]}")
        wrong = (labels is not None and predictions is not None
                 and labels[column] != predictions[column])
        top.set_title("\n".join(parts), fontsize=9, color="red" if wrong else "black")
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("reconstruction")
    return fig


def plot_dimension_perturbations(model: nn.Module, images: Tensor, labels=None, dims=range(16),
                                 deltas=PAPER_DELTAS, ax: Axes | None = None) -> Figure:
    """The perturbation grid for one image: rows = pose dimensions, columns = deltas.

    images: one image ([28, 28], [1, 28, 28] or [1, 1, 28, 28]); labels: its label (int or
    1-element tensor) or None for the predicted class. The delta = 0 column, the unperturbed
    reconstruction, is outlined.
    """
    label = None if labels is None else int(torch.as_tensor(labels).flatten()[0])
    dims, deltas = list(dims), torch.as_tensor(deltas, dtype=torch.float32).flatten()
    grid, capsule = perturb_capsule_dimensions(model, images, label, dims, deltas)     # [D, K, H, W]
    n_dims, n_deltas, height, width = grid.shape
    gap = 2
    mosaic = np.full((n_dims * (height + gap) - gap, n_deltas * (width + gap) - gap), np.nan)
    for row in range(n_dims):
        for column in range(n_deltas):
            top, left = row * (height + gap), column * (width + gap)
            mosaic[top:top + height, left:left + width] = grid[row, column].numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(0.55 * n_deltas + 1.2, 0.55 * n_dims + 1.0),
                             layout="constrained")
    ax.imshow(mosaic, cmap=plt.get_cmap("gray").with_extremes(bad="white"), vmin=0, vmax=1)
    ax.set_xticks([c * (width + gap) + width / 2 - 0.5 for c in range(n_deltas)],
                  [f"{d:+.2f}" if abs(d) > 1e-6 else "0" for d in deltas.tolist()],
                  rotation=90, fontsize=8)
    ax.set_yticks([r * (height + gap) + height / 2 - 0.5 for r in range(n_dims)],
                  [str(d) for d in dims], fontsize=8)
    ax.set_xlabel("perturbation delta")
    ax.set_ylabel("pose dimension")
    zero = int(deltas.abs().argmin())
    if abs(float(deltas[zero])) < 1e-6:
        ax.add_patch(Rectangle((zero * (width + gap) - 1.5, -1.5), width + 2, mosaic.shape[0] + 2,
                               fill=False, edgecolor="C1", linewidth=2, clip_on=False))
    source = "label" if label is not None else "prediction"
    ax.set_title(f"Tweaking one dimension of capsule {capsule} ({source})")
    return ax.figure


# ----------------------------------------------------------------------------------------------
# Couplings

def _mark_uniform(colorbar, n_out: int) -> None:
    """Dashed line at the uniform coupling 1/n_out on the colorbar, when it is in range."""
    low, high = colorbar.mappable.get_clim()
    if low <= 1 / n_out <= high:
        colorbar.ax.axhline(1 / n_out, color="white", linestyle="--", linewidth=1.5)
        colorbar.set_label(f"{colorbar.ax.get_ylabel()}; dashed: uniform 1/{n_out}")


def plot_coupling_heatmap(couplings: Tensor, ax: Axes | None = None,
                          input_label: str = "input capsule i",
                          output_label: str = "output capsule j",
                          title: str = "Coupling coefficients c_ij",
                          vmin: float | None = 0.0, vmax: float | None = None) -> Figure:
    """Heatmap of a coupling matrix [n_in, n_out] with a colorbar; 1/n_out (uniform) is marked.

    The colour scale starts at vmin = 0, so near-uniform couplings look flat, as they are;
    vmin=None zooms the scale onto the values' own range. vmax=1 gives several panels one scale.
    For a batch or for dynamic routing's stack, pick or average first, e.g.
    couplings[-1].mean(0) for the last iteration averaged over the batch.
    """
    check_tensor(couplings, "couplings [n_in, n_out]", "plot_coupling_heatmap")
    if couplings.dim() == 2 and couplings.numel() == 0:
        raise ValueError(f"couplings hold no input capsules (shape {tuple(couplings.shape)})")
    if couplings.dim() != 2:
        raise ValueError(f"couplings must be [n_in, n_out], got {tuple(couplings.shape)}; "
                         f"reduce first, e.g. couplings[-1].mean(0) for dynamic routing's "
                         f"[iterations, B, n_in, n_out] or couplings.mean(0) for [B, n_in, n_out]")
    values = couplings.detach().cpu().float().numpy()
    n_in, n_out = values.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(min(2 + 0.45 * n_out, 10), min(2 + 0.3 * n_in, 7)),
                             layout="constrained")
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax,
                      interpolation="nearest")
    colorbar = ax.figure.colorbar(image, ax=ax, label="coupling")
    _mark_uniform(colorbar, n_out)
    if n_out <= 20:
        ax.set_xticks(range(n_out))
    if n_in <= 20:
        ax.set_yticks(range(n_in))
    ax.set(xlabel=output_label, ylabel=input_label, title=title)
    return ax.figure


def plot_primary_coupling_maps(couplings: Tensor, n_types: int = 32, grid_size: int = 6,
                               class_names=None, axes=None) -> Figure:
    """CapsNet's primary-to-digit couplings as one spatial map per output class.

    couplings: [n_types * grid_size**2, n_classes] (CapsNet: [1152, 10]), primary capsules
    ordered (type, row, column), as CapsNet flattens them. For every class, each pixel is the
    coupling of the capsules at that grid position averaged over the 32 types. Small multiples
    share one colour scale; the colorbar marks uniform couplings 1/n_classes.
    """
    check_tensor(couplings, "couplings", "plot_primary_coupling_maps")
    n_capsules = n_types * grid_size ** 2
    if couplings.dim() != 2 or couplings.shape[0] != n_capsules:
        raise ValueError(f"couplings must be [{n_capsules}, n_classes] ({n_types} types x "
                         f"{grid_size}x{grid_size} positions), got {tuple(couplings.shape)}; "
                         f"for one example of dynamic routing's output use couplings[-1, b]")
    n_classes = couplings.shape[1]
    maps = couplings.detach().cpu().float().reshape(n_types, grid_size, grid_size, n_classes)
    maps = maps.mean(dim=0).permute(2, 0, 1).numpy()                 # [n_classes, 6, 6]
    names = _class_names(class_names, n_classes)
    ncols = min(n_classes, 5)
    nrows = -(-n_classes // ncols)
    fig, axes = _new_axes(axes, nrows, ncols, figsize=(1.7 * ncols + 1.2, 1.8 * nrows + 0.5))
    low, high = float(maps.min()), float(maps.max())
    for k, ax in enumerate(axes.flat):
        if k >= n_classes:
            ax.axis("off")
            continue
        image = ax.imshow(maps[k], cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(f"class {names[k]}", fontsize=10)
        _hide_ticks(ax)
    colorbar = fig.colorbar(image, ax=list(axes.flat), label="mean coupling over types")
    _mark_uniform(colorbar, n_classes)
    fig.suptitle(f"Where each digit capsule takes its input from ({grid_size}x{grid_size} "
                 f"primary grid)")
    return fig


# ----------------------------------------------------------------------------------------------
# Training

def _series(history, *keys: str) -> list | None:
    """The first non-empty list among `keys` in a dict or an object's attributes."""
    for key in keys:
        values = history.get(key) if isinstance(history, dict) else getattr(history, key, None)
        if values is not None and len(values) > 0:
            return list(values)
    return None


def plot_training_curves(history, axes=None) -> Figure:
    """Loss and accuracy per epoch: train, and validation where the history has it.

    history: capsule_lib.training.History (lists loss, accuracy, validation_accuracy), its
    to_dict(), or any dict/object with lists train_loss and train_accuracy and optionally
    validation_loss and validation_accuracy; one entry per epoch.
    """
    curves = {"train_loss": _series(history, "train_loss", "loss"),
              "validation_loss": _series(history, "validation_loss"),
              "train_accuracy": _series(history, "train_accuracy", "accuracy"),
              "validation_accuracy": _series(history, "validation_accuracy")}
    missing = [key for key in ("train_loss", "train_accuracy") if curves[key] is None]
    if missing:
        raise ValueError(f"history has no per-epoch {' or '.join(missing)}: expected non-empty "
                         f"lists loss/train_loss and accuracy/train_accuracy")
    fig, axes = _new_axes(axes, 1, 2, figsize=(9, 3.4))
    for ax, quantity in zip(axes.flat, ("loss", "accuracy")):
        for split, style in (("train", "-o"), ("validation", "--s")):
            values = curves[f"{split}_{quantity}"]
            if values is not None:
                ax.plot(range(1, len(values) + 1), values, style, markersize=3,
                        label="train" if split == "train" else "validation")
        ax.set(xlabel="epoch", ylabel=quantity, title=quantity.capitalize())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    return fig


# ----------------------------------------------------------------------------------------------
# Capsule lengths

def _length_bars(ax: Axes, lengths: np.ndarray, label: int | None, prediction: int,
                 names: list[str]) -> None:
    """One bar chart of capsule lengths: true class green, a wrong prediction red."""
    colors = ["lightgray"] * len(lengths)
    if label is not None and label != prediction:
        colors[prediction] = "tab:red"
    if label is not None:
        colors[label] = "tab:green"
    else:
        colors[prediction] = "tab:blue"
    ax.bar(range(len(lengths)), lengths, color=colors, edgecolor="black", linewidth=0.5)
    ax.axhline(M_PLUS, color="gray", linestyle=":", linewidth=1)
    ax.axhline(M_MINUS, color="gray", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(lengths)), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("length ||v||")


def _bar_legend(fig: Figure, with_labels: bool) -> None:
    """One legend for all bar panels, above them."""
    handles = ([Patch(color="tab:green", label="true class"),
                Patch(color="tab:red", label="wrong prediction")] if with_labels
               else [Patch(color="tab:blue", label="prediction")])
    handles.append(Line2D([], [], color="gray", linestyle=":",
                          label=f"margins m+ = {M_PLUS}, m- = {M_MINUS}"))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=9,
               frameon=False)


def _lengths_array(lengths) -> np.ndarray:
    array = _numpy(lengths).astype(np.float32)
    array = array[None] if array.ndim == 1 else array
    if array.ndim != 2:
        raise ValueError(f"lengths must be [n_capsules] or [n_examples, n_capsules], "
                         f"got {array.shape}")
    if len(array) == 0:
        raise ValueError(f"lengths hold no examples to draw (shape {array.shape})")
    return array


def plot_capsule_lengths(lengths, labels=None, class_names=None, axes=None) -> Figure:
    """Bar charts of the class-capsule lengths, one panel per example.

    lengths: [n_caps] or [N, n_caps]. The true class (labels) is green and a wrong prediction
    (the longest capsule) red; without labels the prediction is blue. Dotted lines: the margin
    loss's targets m+ = 0.9 and m- = 0.1.
    """
    lengths = _lengths_array(lengths)
    labels = _numbers(labels, "labels", len(lengths), lengths.shape[1])
    names = _class_names(class_names, lengths.shape[1])
    fig, axes = _new_axes(axes, len(lengths), 1, figsize=(5, 1.8 * len(lengths) + 0.4))
    for row, ax in enumerate(axes.flat):
        prediction = int(lengths[row].argmax())
        label = None if labels is None else int(labels[row])
        _length_bars(ax, lengths[row], label, prediction, names)
        ax.set_title(f"predicted {names[prediction]}"
                     + ("" if label is None else f", label {names[label]}"), fontsize=10)
    axes.flat[-1].set_xlabel("class capsule")
    _bar_legend(fig, with_labels=labels is not None)
    return fig


def plot_digits_with_lengths(images, lengths, labels, predictions=None, class_names=None,
                             axes=None) -> Figure:
    """Each digit next to the bar chart of its class-capsule lengths (e.g. misclassified ones).

    images [N, 1, 28, 28], lengths [N, n_caps], labels [N]; predictions default to the
    longest capsule.
    """
    pictures, lengths = _pictures(images), _lengths_array(lengths)
    if len(pictures) != len(lengths):
        raise ValueError(f"images and lengths must have the same number of examples, got "
                         f"{len(pictures)} and {len(lengths)}")
    n_classes = lengths.shape[1]
    labels = _numbers(labels, "labels", len(lengths), n_classes)
    predictions = _numbers(predictions, "predictions", len(lengths), n_classes)
    if predictions is None:
        predictions = lengths.argmax(axis=1)
    names = _class_names(class_names, n_classes)
    fig, axes = _new_axes(axes, len(pictures), 2, figsize=(6, 1.6 * len(pictures) + 0.3),
                          width_ratios=[1, 3.2])
    for row in range(len(pictures)):
        image_ax, bar_ax = axes[row]
        image_ax.imshow(pictures[row], cmap="gray", vmin=0, vmax=1)
        _hide_ticks(image_ax)
        wrong = labels[row] != predictions[row]
        image_ax.set_title(f"label {names[labels[row]]}\npred {names[predictions[row]]}",
                           fontsize=9, color="red" if wrong else "black")
        _length_bars(bar_ax, lengths[row], int(labels[row]), int(predictions[row]), names)
    axes[-1, 1].set_xlabel("class capsule")
    _bar_legend(fig, with_labels=True)
    return fig
