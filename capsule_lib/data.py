"""Data: the bundled MNIST sample, MNIST and Fashion-MNIST from disk, and the paper's transforms.

Every dataset is a TensorDataset(images float32 [N, 1, 28, 28] in [0, 1], labels int64 [N]).
Loading never touches the network unless download=True is passed.

Transforms work on batches [B, 1, H, W] and are deterministic given a torch.Generator:
random_shift (Sabour et al.'s augmentation); efficient_capsnet_augmentation (Mazzia et al.'s:
random_rotation, random_margin_shift, random_squish, random_erase); affine_transform /
random_affine / affine_test_set (affNIST-like robustness tests); make_multimnist and make_overlapping_pairs (two digits of
different classes overlaid).
"""
import gzip
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .checks import (CONVERT_HINT, check_finite, check_labels, check_pixels, check_tensor,
                     check_tensor_dataset, check_whole_number, describe)

DATASET_NAMES = ("mnist-sample", "mnist", "fashion-mnist")
SPLITS = ("train", "validation", "test")
# The validation split is carved out of each dataset's training images (seeded, stratified):
# every choice (recipe, epochs, thresholds) is made on it; the test split only reports.
VALIDATION_SIZE = {"mnist-sample": 500, "mnist": 5_000, "fashion-mnist": 5_000}
VALIDATION_SEED = 2017
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

IMAGE_SIZE = 28                 # MNIST and Fashion-MNIST digits are 28x28
N_CLASSES = 10
# IDX file stems of MNIST and Fashion-MNIST (the same names for both), per split
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not on this machine (and download=False)."""


def default_data_dir() -> Path:
    """Where "mnist" and "fashion-mnist" live: $CAPSULE_LIB_DATA, else ~/.cache/capsule_lib/data."""
    return Path(os.environ.get("CAPSULE_LIB_DATA", Path.home() / ".cache" / "capsule_lib" / "data"))


def load_dataset(name: str, split: str = "train", root: str | Path | None = None,
                 download: bool = False) -> TensorDataset:
    """Images float32 [N, 1, 28, 28] in [0, 1] and labels int64 [N] of a dataset split.

    "mnist-sample": 5,000 real MNIST digits bundled with capsule_lib (never downloads):
        "train" = 3,500 images (350 per class), "validation" = 500 (50 per class), both from
        the sample's 4,000 training digits; "test" = the 1,000 held out (100 per class).
    "mnist", "fashion-mnist": the full 60,000 / 10,000 images, read from the IDX files under
        `root` (default `default_data_dir()`), in torchvision's layout (root/MNIST/raw,
        root/FashionMNIST/raw) or directly in root; Fashion-MNIST is also found where Debian's
        package `dataset-fashion-mnist` installs it (/usr/share/datasets/fashion-mnist).
        "validation" = 5,000 of the 60,000 training images, "train" = the other 55,000.
        download=True fetches missing files with torchvision; download=False never uses the
        network and raises DatasetNotFoundError when the files are missing.
    The validation split is the same on every machine: `validation_indices` draws it, per class
    in proportion to the class's size, with the fixed seed VALIDATION_SEED.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASET_NAMES}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    file_split = "test" if split == "test" else "train"
    if name == "mnist-sample":
        images, labels = _read_mnist_sample(file_split)
    else:
        root = Path(root) if root is not None else default_data_dir()
        images, labels = _read_idx_dataset(name, file_split, root, download)
    if split != "test":
        if len(labels) <= VALIDATION_SIZE[name]:
            raise ValueError(f"the {name} training files hold {len(labels)} images, too few to "
                             f"hold out its {VALIDATION_SIZE[name]:,}-image validation split "
                             f"and train on the rest: are they the full {name} training set?")
        held_out = validation_indices(labels, VALIDATION_SIZE[name])
        keep = held_out if split == "validation" else np.setdiff1d(np.arange(len(labels)),
                                                                    held_out)
        images, labels = images[keep], labels[keep]
    images = torch.from_numpy(images).float().div_(255).unsqueeze(1)       # [N, 1, 28, 28]
    labels = torch.from_numpy(labels.astype(np.int64))                     # [N]
    return TensorDataset(images, labels)


def validation_indices(labels: np.ndarray, n: int, seed: int = VALIDATION_SEED) -> np.ndarray:
    """Sorted indices of a seeded, stratified draw of n of the labels [N].

    Each class gets n * (its share of the labels), rounded so that the counts add up to n
    (largest remainders first); within a class the images are drawn at random.
    """
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / counts.sum()
    quota = np.floor(exact).astype(int)
    quota[np.argsort(quota - exact, kind="stable")[: n - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
              for c, k in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def _read_mnist_sample(split: str) -> tuple[np.ndarray, np.ndarray]:
    sample = resources.files("capsule_lib") / "datasets" / "mnist_sample.npz"
    with sample.open("rb") as file, np.load(file) as arrays:
        return arrays[f"{split}_images"], arrays[f"{split}_labels"]


def read_idx(path: str | Path) -> np.ndarray:
    """An unsigned-byte IDX file (the format of MNIST and Fashion-MNIST), gzipped or not.

    A file that is truncated, corrupt or not IDX raises a ValueError naming the path."""
    path = Path(path)
    fix = "download it again (or delete it and use download=True)"
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path} is not a readable gzip file ({error}): it is truncated or "
                             f"corrupt; {fix}") from error
    if len(raw) < 4:
        raise ValueError(f"{path} is truncated: {len(raw)} bytes, shorter than the 4-byte IDX "
                         f"magic number; {fix}")
    zero, dtype_code, ndim = raw[0] * 256 + raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic bytes {raw[:4].hex()}, "
                         "expected 0000 08 <ndim>)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated inside its header ({len(raw)} bytes, the header "
                         f"of a {ndim}-dimensional IDX file has {header}); {fix}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != math.prod(shape):
        raise ValueError(f"{path} holds {data.size} values, its header says shape {shape} "
                         f"({math.prod(shape)} values): it is truncated or corrupt; {fix}")
    return data.reshape(shape).copy()


def _candidate_dirs(name: str, root: Path) -> list[Path]:
    dirs = [root / _TORCHVISION_FOLDER[name] / "raw", root]
    if name == "fashion-mnist":
        dirs.append(FASHION_MNIST_DEBIAN_DIR)
    return dirs


def _find_idx(stem: str, dirs: list[Path]) -> Path | None:
    for directory in dirs:
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _read_idx_dataset(name: str, split: str, root: Path,
                      download: bool) -> tuple[np.ndarray, np.ndarray]:
    dirs = _candidate_dirs(name, root)
    paths = [_find_idx(stem, dirs) for stem in _IDX_FILES[split]]
    if None in paths and download:
        _download_with_torchvision(name, root)
        paths = [_find_idx(stem, dirs) for stem in _IDX_FILES[split]]
    if None in paths:
        missing = [stem for stem, path in zip(_IDX_FILES[split], paths) if path is None]
        how = (f"Get them with load_dataset({name!r}, download=True) on a machine with internet, "
               "or set root= (or $CAPSULE_LIB_DATA) to a folder that holds them")
        if name == "fashion-mnist":
            how += ", or install Debian's package: apt install dataset-fashion-mnist"
        raise DatasetNotFoundError(
            f"{name} {split} split not found: no {missing} (.gz or not) in "
            f"{[str(d) for d in dirs]}. {how}. Offline, 'mnist-sample' is bundled with capsule_lib.")
    images, labels = read_idx(paths[0]), read_idx(paths[1])                # [N, 28, 28], [N]
    _check_idx_pair(images, labels, *paths)
    return images, labels


def _check_idx_pair(images: np.ndarray, labels: np.ndarray, images_path: Path,
                    labels_path: Path) -> None:
    """Raise unless the two files hold N 28x28 images and N labels in [0, 10)."""
    size = IMAGE_SIZE
    if images.ndim != 3 or images.shape[1:] != (size, size):
        raise ValueError(f"{images_path} holds an array of shape {images.shape}, expected "
                         f"[N, {size}, {size}] ({size}x{size} images); is it the images file "
                         f"of MNIST or Fashion-MNIST?")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path} holds an array of shape {labels.shape}, expected the "
                         f"labels [N] of a labels file")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels: {images_path} and "
                         f"{labels_path} do not belong together (a truncated download?)")
    if len(labels) and labels.max() >= N_CLASSES:
        raise ValueError(f"{labels_path} holds labels up to {labels.max()}, expected class "
                         f"indices in [0, {N_CLASSES})")


def _download_with_torchvision(name: str, root: Path) -> None:
    from torchvision import datasets
    dataset_class = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
    for train in (True, False):
        dataset_class(str(root), train=train, download=True)


def subset(dataset: TensorDataset, n: int, seed: int = 0) -> TensorDataset:
    """A seeded, class-balanced random subset of n examples, in random order.

    Classes are drawn round-robin (one random example of each class, then a second of each, ...),
    so every class gets n // n_classes or one more while it has examples left; a class that runs
    out leaves its share to the others.
    """
    images, labels = check_tensor_dataset(dataset, "subset")
    n = check_whole_number(n, "subset: n")
    seed = check_whole_number(seed, "subset: seed", minimum=0)
    if n > len(labels):
        raise ValueError(f"subset: n={n} is larger than the dataset ({len(labels)} examples); "
                         f"n must be between 1 and {len(labels)}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    shuffled = labels[order]
    rank_in_class = torch.empty_like(order)
    for label in shuffled.unique():
        positions = (shuffled == label).nonzero().squeeze(1)
        rank_in_class[positions] = torch.arange(len(positions))
    round_robin = torch.argsort(rank_in_class * len(labels) + torch.arange(len(labels)))
    chosen = order[round_robin[:n].sort().values]
    return TensorDataset(images[chosen], labels[chosen])


def _check_batch(images: torch.Tensor, what: str, float_only: bool = False) -> None:
    """Raise unless images is a tensor [B, C, H, W] (of floats, with float_only)."""
    check_tensor(images, "images [B, C, H, W]", what)
    if images.dim() != 4:
        raise ValueError(f"{what} expects images [B, C, H, W] (e.g. [B, 1, 28, 28]), got "
                         f"{tuple(images.shape)}; add a batch dimension with "
                         f"images.unsqueeze(0)")
    if float_only and not images.is_floating_point():
        raise TypeError(f"{what} resamples pixels and expects float images in [0, 1], got "
                        f"{describe(images)}; {CONVERT_HINT}")


# ---- translations ----------------------------------------------------------------------------

def shift_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move each image by whole pixels, filling with zeros (content leaving the frame is lost).

    images [B, C, H, W]; shifts int [B, 2] = (dy, dx): +dy moves the content down, +dx right.
    """
    _check_batch(images, "shift_images")
    b, c, h, w = images.shape
    shifts = torch.as_tensor(shifts, device=images.device)
    if shifts.shape != (b, 2):
        raise ValueError(f"shifts must be [B, 2] = (dy, dx) per image, got {tuple(shifts.shape)}")
    if shifts.is_floating_point() and not bool(
            (torch.isfinite(shifts) & (shifts == shifts.round())).all()):
        raise ValueError(f"shift_images moves images by whole numbers of pixels, got shifts "
                         f"{shifts.tolist()}; round them first (or use affine_transform's "
                         f"translate for sub-pixel moves)")
    # a shift of the image's size or more leaves nothing in the frame: clamping it there gives
    # the same (empty) image without padding by the whole shift
    shifts = shifts.long().clamp(-max(h, w), max(h, w))
    margin = int(shifts.abs().max()) if b else 0
    padded = F.pad(images, (margin, margin, margin, margin))              # [B, C, H+2m, W+2m]
    rows = margin - shifts[:, 0, None] + torch.arange(h, device=images.device)  # [B, H]
    cols = margin - shifts[:, 1, None] + torch.arange(w, device=images.device)  # [B, W]
    batch = torch.arange(b, device=images.device)[:, None, None]
    moved = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return moved.permute(0, 3, 1, 2)                                       # [B, C, H, W]


def random_shift(images: torch.Tensor, max_shift: int = 2,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Sabour et al.'s augmentation: shift each image by up to max_shift pixels, zero padding.

    dy and dx are independent integers drawn uniformly from [-max_shift, max_shift] per image
    (from `generator` when given, on the CPU). images [B, C, H, W] -> [B, C, H, W].
    """
    _check_batch(images, "random_shift")
    max_shift = check_whole_number(max_shift, "random_shift: max_shift (pixels)", minimum=0)
    shifts = torch.randint(-max_shift, max_shift + 1, (len(images), 2), generator=generator)
    return shift_images(images, shifts)


def pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre images [B, C, H, W] on a zero canvas [B, C, size, size] (extra pixel right/bottom)."""
    _check_batch(images, "pad_to")
    size = check_whole_number(size, "pad_to: size (pixels)")
    h, w = images.shape[-2:]
    if size < max(h, w):
        raise ValueError(f"pad_to size {size} is smaller than the images ({h}x{w}); it only pads")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


# ---- affine transformations ------------------------------------------------------------------

AFFNIST_MAX_ROTATION_DEG = 20.0
AFFNIST_MAX_SHEAR = 0.2         # shear factor; atan(0.2) = 11.3 degrees
AFFNIST_SCALE_RANGE = 0.2       # scale in [1 - 0.2, 1 + 0.2]
# the training shifts' range (Recipe.max_shift, Sabour et al.'s 2 px): test digits move no
# further than the training digits did, so the test measures the unseen transformations only
MAX_TRANSLATION_PX = 2.0


def affine_transform(images: torch.Tensor, rotation_deg=0.0, shear_deg=0.0, scale=1.0,
                     translate=(0.0, 0.0)) -> torch.Tensor:
    """Rotate, shear, scale and translate images [B, C, H, W] about their centre.

    The content is mapped by  x' = T + R(rotation) Shear(shear) Scale(scale) x  in pixel units,
    sampled bilinearly with zero padding (torch affine_grid / grid_sample). rotation_deg > 0
    turns the content counterclockwise as seen on screen (like torch.rot90 and torchvision's
    rotate); shear_deg tilts vertical strokes: x' = x - tan(shear) * y (y pointing down, so
    positive shear leans the top to the right); scale > 1 enlarges; translate = (tx, ty) pixels,
    +tx right, +ty down. Each parameter is a number or a tensor [B] (one value per image).
    With the defaults the result equals the input up to float rounding (about 1e-7: the
    identity is still resampled).
    """
    _check_batch(images, "affine_transform", float_only=True)
    b, _, h, w = images.shape

    def per_image(value, name: str) -> torch.Tensor:
        value = torch.as_tensor(value, dtype=torch.float64)
        if value.dim() > 1 or value.numel() not in (1, b):
            raise ValueError(f"affine_transform: {name} must be a number or a tensor [{b}], one "
                             f"per image, got shape {tuple(value.shape)}")
        check_finite(value, f"affine_transform: {name}")
        return value.expand(b)                                             # [B]

    rotation, shear_deg = per_image(rotation_deg, "rotation_deg"), per_image(shear_deg, "shear_deg")
    scale = per_image(scale, "scale")
    if (shear_deg.abs() >= 90).any():
        raise ValueError(f"affine_transform: shear_deg must lie strictly between -90 and 90 "
                         f"degrees (tan is infinite at 90), got {shear_deg.tolist()}")
    if (scale <= 0).any():
        raise ValueError(f"affine_transform: scale must be positive, got {scale.tolist()}")
    translate = torch.as_tensor(translate, dtype=torch.float64)
    if translate.shape not in ((2,), (b, 2)):
        raise ValueError(f"affine_transform: translate must be (tx, ty) pixels or a tensor "
                         f"[{b}, 2], got shape {tuple(translate.shape)}")
    check_finite(translate, "affine_transform: translate")
    translate = translate.expand(b, 2)                                     # [B, 2] (tx, ty)
    if b == 0:
        return images.clone()
    angle, shear = rotation.deg2rad(), shear_deg.deg2rad()
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.stack([torch.stack([cos, sin], -1),
                            torch.stack([-sin, cos], -1)], -2)             # [B, 2, 2], y down
    shearing = torch.eye(2, dtype=torch.float64).repeat(b, 1, 1)
    shearing[:, 0, 1] = -shear.tan()
    forward = rotation @ shearing * scale[:, None, None]                   # [B, 2, 2] pixels
    # affine_grid works in normalised coordinates [-1, 1]: x_norm = 2 x / W, y_norm = 2 y / H
    to_norm = torch.diag(torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64))
    forward_norm = to_norm @ forward @ torch.linalg.inv(to_norm)
    shift_norm = translate @ to_norm                                        # [B, 2]
    inverse = torch.linalg.inv(forward_norm)                               # output -> input
    theta = torch.cat([inverse, -(inverse @ shift_norm[:, :, None])], 2)  # [B, 2, 3]
    grid = F.affine_grid(theta.to(dtype=images.dtype, device=images.device),
                         list(images.shape), align_corners=False)          # [B, H, W, 2]
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)                              # [B, C, H, W]


def _check_ranges(ranges: dict, owner: str) -> dict:
    """The ranges of random_affine at strength 1, checked: finite numbers >= 0 (scale < 1)."""
    for name, value in ranges.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"{owner}: {name} must be a finite number >= 0, got {value!r}")
    if ranges["scale_range"] >= 1:
        raise ValueError(f"{owner}: scale_range must be below 1 (scales 1 - scale_range up to "
                         f"1 + scale_range must stay positive), got {ranges['scale_range']!r}")
    return {name: float(value) for name, value in ranges.items()}


def random_affine(images: torch.Tensor, strength: float,
                  generator: torch.Generator | None = None, *,
                  max_rotation_deg: float = AFFNIST_MAX_ROTATION_DEG,
                  max_shear: float = AFFNIST_MAX_SHEAR,
                  scale_range: float = AFFNIST_SCALE_RANGE,
                  max_translation: float = MAX_TRANSLATION_PX) -> torch.Tensor:
    """affNIST-like random affine transformation of each image, scaled by strength in [0, 1].

    Per image, uniformly and independently (from `generator`, on the CPU):
        rotation in +-max_rotation_deg * strength degrees (default 20),
        shear factor in +-max_shear * strength (default 0.2: shear angles up to 11.3 degrees),
        scale in [1 - scale_range * strength, 1 + scale_range * strength] (default 0.2),
        translation in +-max_translation * strength pixels in x and in y (default 2).
    The first three defaults are affNIST's ranges (Tieleman's affNIST). affNIST places the
    result on a 40x40 canvas; here the canvas stays 28x28 so CapsNet's input size holds, and
    translations stay within the training shifts (Recipe.max_shift = 2 pixels), so that a test
    asks for unseen rotations, shears and scales but not for unseen positions. Set a range to 0
    to leave that transformation out, e.g. translations only: max_rotation_deg=0, max_shear=0,
    scale_range=0. The four draws are made whatever the ranges, so a generator seeded alike
    moves each image in the same direction for any ranges and strength, only more or less far.
    strength 0 returns the images up to float rounding (see affine_transform).
    """
    _check_batch(images, "random_affine", float_only=True)
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.number)) \
            or not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1] (1 = affNIST's full ranges), got {strength}")
    ranges = _check_ranges({"max_rotation_deg": max_rotation_deg, "max_shear": max_shear,
                            "scale_range": scale_range, "max_translation": max_translation},
                           "random_affine")
    b = len(images)

    def uniform(size, limit) -> torch.Tensor:
        return (torch.rand(size, generator=generator, dtype=torch.float64) * 2 - 1) * limit

    rotation = uniform(b, ranges["max_rotation_deg"] * strength)
    shear = torch.rad2deg(torch.atan(uniform(b, ranges["max_shear"] * strength)))
    scale = 1 + uniform(b, ranges["scale_range"] * strength)
    translate = uniform((b, 2), ranges["max_translation"] * strength)
    return affine_transform(images, rotation, shear, scale, translate)


def affine_test_set(dataset: TensorDataset, strength: float, seed: int = 0,
                    **ranges) -> TensorDataset:
    """The dataset's images under random_affine(strength, **ranges), same labels; the same for
    a seed. ranges: random_affine's max_rotation_deg, max_shear, scale_range, max_translation."""
    images, labels = check_tensor_dataset(dataset, "affine_test_set")
    seed = check_whole_number(seed, "affine_test_set: seed", minimum=0)
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(random_affine(images, strength, generator, **ranges), labels)


# ---- Efficient-CapsNet's augmentation (Mazzia et al. 2021) -----------------------------------
# After the authors' utils/pre_process_mnist.py (EscVM/Efficient-CapsNet): every random amount
# is a draw of N(0, 0.33) clipped to (-0.9999, 0.9999) (its absolute value for sizes), and the
# training pipeline applies rotate -> shift -> squish -> erase to every training image.
EFFICIENT_SIGMA = 0.33
EFFICIENT_MAX_ROTATION_DEG = 30.0
EFFICIENT_ERASE_SIZE = 4                # the erased patch is 4x4 pixels ...
EFFICIENT_ERASE_FIRST = (4, 22)         # ... and starts at a row and a column in 4..22


def _clipped_normal(size, generator) -> torch.Tensor:
    """N(0, 0.33) clipped to (-0.9999, 0.9999), float64 on the CPU: the authors' random amount."""
    draw = torch.randn(size, generator=generator, dtype=torch.float64) * EFFICIENT_SIGMA
    return draw.clamp(-0.9999, 0.9999)


def random_rotation(images: torch.Tensor, generator: torch.Generator | None = None,
                    max_rotation_deg: float = EFFICIENT_MAX_ROTATION_DEG) -> torch.Tensor:
    """Rotate about half of the images by a clipped N(0, 0.33) x max_rotation_deg degrees.

    Per image two amounts a, b are drawn; the image turns by int(a x 30) degrees (truncated to
    whole degrees, as the authors' int(angle)) when b <= 0, else it is left as it is. Most
    angles are small: |angle| < 10 degrees for two thirds of the rotated images.
    images [B, C, H, W] floats -> [B, C, H, W].
    """
    _check_batch(images, "random_rotation", float_only=True)
    amounts = _clipped_normal((len(images), 2), generator)                  # [B, 2]
    angles = (amounts[:, 0] * max_rotation_deg).trunc()                     # [B] degrees
    turned = amounts[:, 1] <= 0                                             # [B] about half
    result = images.clone()
    if turned.any():
        result[turned] = affine_transform(images[turned], angles[turned])
    return result


def ink_margins(images: torch.Tensor) -> torch.Tensor:
    """The blank rows/columns around each image's ink: int64 [B, 4] = (top, bottom, left, right).

    A pixel is ink when it is > 0 in any channel; an image without ink has margins of 0."""
    _check_batch(images, "ink_margins")
    b, _, h, w = images.shape
    rows = images.gt(0).any(dim=1).any(dim=2)                               # [B, H]
    cols = images.gt(0).any(dim=1).any(dim=1)                               # [B, W]

    def first_and_last(ink: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(size, device=images.device).expand_as(ink)
        first = torch.where(ink, index, size).amin(dim=1)
        last = torch.where(ink, index, -1).amax(dim=1)
        empty = ~ink.any(dim=1)
        return first.masked_fill(empty, 0), (size - 1 - last).masked_fill(empty, 0)

    top, bottom = first_and_last(rows, h)
    left, right = first_and_last(cols, w)
    return torch.stack([top, bottom, left, right], dim=1)


def random_margin_shift(images: torch.Tensor,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image, on each axis, by a fraction |N(0, 0.33)| of the blank margin on a
    randomly chosen side, so that the ink never leaves the frame.

    Per axis: fraction a in [0, 0.9999] and a direction; the move is floor(a x (1 + margin)) pixels
    towards the bottom/right, or floor(-a x margin) towards the top/left (the authors' rounding;
    both stay within the margin). images [B, C, H, W] -> [B, C, H, W]."""
    _check_batch(images, "random_margin_shift")
    b = len(images)
    margins = ink_margins(images).cpu().double()                            # [B, 4]
    fractions = _clipped_normal((b, 2), generator).abs()                    # [B, 2] (dy, dx)
    forward = torch.rand((b, 2), generator=generator) < 0.5                 # down / right
    toward_end = (fractions * (1 + margins[:, [1, 3]])).floor()
    toward_start = (-fractions * margins[:, [0, 2]]).floor()
    shifts = torch.where(forward, toward_end, toward_start).long()          # [B, 2] (dy, dx)
    return shift_images(images, shifts.to(images.device))


def random_squish(images: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Squeeze each image horizontally by 1 to W/4 pixels, then put it back on a W-wide canvas.

    Per image: the width shrinks by floor(|a| x W/4) + 1 pixels (1-7 for MNIST; most often 1-3),
    resampled with antialiased bicubic interpolation (the authors use Lanczos, which torch lacks;
    the result is clipped to [0, 1]), and the narrower image is placed half the lost width from
    the left edge, plus 0 or 1 pixel. images [B, C, H, W] floats -> [B, C, H, W]."""
    _check_batch(images, "random_squish", float_only=True)
    b, c, h, w = images.shape
    amounts = _clipped_normal((b, 2), generator).abs()                      # [B, 2]
    lost = (amounts[:, 0] * (w / 4)).floor().long() + 1                     # [B] 1..W/4
    offsets = lost // 2 + (amounts[:, 1] * 2).floor().long()                # [B] left padding
    result = torch.zeros_like(images)
    for width_lost, offset in torch.stack([lost, offsets], 1).unique(dim=0).tolist():
        chosen = ((lost == width_lost) & (offsets == offset)).to(images.device)
        narrow = F.interpolate(images[chosen], size=(h, w - width_lost), mode="bicubic",
                               align_corners=False, antialias=True).clamp(0, 1)
        result[chosen, :, :, offset:offset + w - width_lost] = narrow[..., :w - offset]
    return result


def random_erase(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Set a 4x4 patch of each image to 0, its top-left corner at a row and a column drawn
    uniformly from 4..22 (so it lies within rows/columns 4-25 of a 28x28 digit).
    images [B, C, H, W] with H, W >= 26 -> [B, C, H, W]."""
    _check_batch(images, "random_erase")
    b, _, h, w = images.shape
    first, last = EFFICIENT_ERASE_FIRST
    if min(h, w) < last + EFFICIENT_ERASE_SIZE:
        raise ValueError(f"random_erase places its patch within rows/columns {first}-"
                         f"{last + EFFICIENT_ERASE_SIZE - 1}: images must be at least "
                         f"{last + EFFICIENT_ERASE_SIZE} pixels high and wide, got {h}x{w}")
    corners = torch.randint(first, last + 1, (b, 2), generator=generator)   # [B, 2] (row, col)
    corners = corners.to(images.device)
    rows = torch.arange(h, device=images.device) - corners[:, :1]           # [B, H]
    cols = torch.arange(w, device=images.device) - corners[:, 1:]           # [B, W]
    in_rows = (rows >= 0) & (rows < EFFICIENT_ERASE_SIZE)
    in_cols = (cols >= 0) & (cols < EFFICIENT_ERASE_SIZE)
    patch = in_rows[:, None, :, None] & in_cols[:, None, None, :]           # [B, 1, H, W]
    return images.masked_fill(patch, 0)


def efficient_capsnet_augmentation(images: torch.Tensor,
                                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Mazzia et al.'s training augmentation, in the authors' order: random_rotation,
    random_margin_shift, random_squish, random_erase. images [B, 1, 28, 28] -> same shape."""
    _check_batch(images, "efficient_capsnet_augmentation", float_only=True)
    for transform in (random_rotation, random_margin_shift, random_squish, random_erase):
        images = transform(images, generator)
    return images


# ---- two overlapping digits ------------------------------------------------------------------

@dataclass
class DigitPairs:
    """images [n, 1, S, S]: the two digits overlaid (pixel-wise maximum, clipped to [0, 1]);
    layers [n, 2, 1, S, S]: each digit alone, exactly where it sits in the overlay;
    labels int64 [n, 2]: the classes of the two digits (always different)."""
    images: torch.Tensor
    layers: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index) -> "DigitPairs":
        return DigitPairs(self.images[index], self.layers[index], self.labels[index])


def make_pairs_with_layers(images: torch.Tensor, labels: torch.Tensor, n: int,
                           max_shift: int = 2, canvas: int = 28, seed: int = 0) -> DigitPairs:
    """n images of two overlapping digits of different classes, each digit's layer kept.

    For each pair: a random first digit, a random digit of a different class, each centred on
    the canvas (pad_to) and shifted independently by integers in [-max_shift, max_shift] in x and
    y (zero padding), then combined by the pixel-wise maximum (clipped to [0, 1]). With the
    default 28x28 canvas and shifts of up to 2 pixels the two digits overlap heavily, and the
    result feeds a 28x28 model such as CapsNet directly.
    images [N, 1, H, W] in [0, 1], labels [N]. Seeded: the same seed gives the same pairs.
    """
    images, labels = _check_pair_digits(images, labels, "make_pairs_with_layers")
    n = check_whole_number(n, "n (pairs)")
    max_shift = check_whole_number(max_shift, "max_shift (pixels)", minimum=0)
    canvas = check_whole_number(canvas, "canvas (pixels)")
    seed = check_whole_number(seed, "seed", minimum=0)
    return _draw_pairs(images, labels, n, max_shift, canvas,
                       torch.Generator().manual_seed(seed))


def stream_pairs(images: torch.Tensor, labels: torch.Tensor, batch_size: int, batches: int,
                 max_shift: int = 2, canvas: int = 28, seed: int = 0) -> Iterator[DigitPairs]:
    """`batches` batches of batch_size fresh pairs, drawn as make_pairs_with_layers draws them,
    one batch at a time: memory stays that of one batch however many pairs are drawn in all
    (20,000 batches of 128 pairs on 28x28 would take about 24 GB at once). Seeded."""
    images, labels = _check_pair_digits(images, labels, "stream_pairs")
    batch_size = check_whole_number(batch_size, "batch_size (pairs)")
    batches = check_whole_number(batches, "batches")
    max_shift = check_whole_number(max_shift, "max_shift (pixels)", minimum=0)
    canvas = check_whole_number(canvas, "canvas (pixels)")
    generator = torch.Generator().manual_seed(check_whole_number(seed, "seed", minimum=0))
    for _ in range(batches):
        yield _draw_pairs(images, labels, batch_size, max_shift, canvas, generator)


def _check_pair_digits(images, labels, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """images [N, 1, H, W] in [0, 1] and labels [N] of at least two classes, labels as int64."""
    _check_batch(images, owner)
    check_pixels(images, owner)
    if images.shape[1] != 1:
        raise ValueError(f"{owner} expects one-channel digits [N, 1, H, W], got "
                         f"{tuple(images.shape)}")
    labels = torch.as_tensor(labels)
    check_labels(labels, len(images), owner)
    labels = labels.long()
    if len(labels.unique()) < 2:
        raise ValueError(f"{owner} needs digits of at least two classes")
    return images, labels


def _draw_pairs(images: torch.Tensor, labels: torch.Tensor, n: int, max_shift: int,
                canvas: int, generator: torch.Generator) -> DigitPairs:
    """The draw behind make_pairs_with_layers and stream_pairs (arguments already checked)."""
    classes = labels.unique()
    first = torch.randint(len(labels), (n,), generator=generator)          # [n] digit indices
    first_class = torch.searchsorted(classes, labels[first])               # [n] class positions
    offset = torch.randint(1, len(classes), (n,), generator=generator)
    second_class = (first_class + offset) % len(classes)                   # always different
    by_class = torch.argsort(labels, stable=True)
    counts = torch.bincount(torch.searchsorted(classes, labels), minlength=len(classes))
    starts = torch.cumsum(counts, 0) - counts
    pick = (torch.rand(n, generator=generator) * counts[second_class]).long()
    second = by_class[starts[second_class] + pick]                         # [n] digit indices
    layers = []
    for chosen in (first, second):
        digits = pad_to(images[chosen].float(), canvas)                    # [n, 1, S, S]
        shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
        layers.append(shift_images(digits, shifts).clamp(0, 1))
    combined = torch.maximum(layers[0], layers[1])                         # [n, 1, S, S]
    return DigitPairs(combined, torch.stack(layers, 1),                    # [n, 2, 1, S, S]
                      torch.stack([labels[first], labels[second]], 1))     # [n, 2]


def make_overlapping_pairs(images: torch.Tensor, labels: torch.Tensor, n: int,
                           max_shift: int = 2, canvas: int = 28,
                           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs of make_pairs_with_layers without the layers: images float32 [n, 1, canvas,
    canvas] and labels int64 [n, 2] (first digit, second digit)."""
    pairs = make_pairs_with_layers(images, labels, n, max_shift, canvas, seed)
    return pairs.images, pairs.labels


def make_multimnist(images: torch.Tensor, labels: torch.Tensor, n: int, max_shift: int = 4,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """MultiMNIST as in Sabour et al. (2017): two digits of different classes on 36x36.

    Each 28x28 digit is padded to 36x36 and shifted by up to 4 pixels in x and y, then the two
    are overlaid (pixel-wise maximum, clipped to [0, 1]; the paper does not say how pixels are
    combined). Returns images float32 [n, 1, 36, 36] and labels int64 [n, 2]. Seeded.
    """
    return make_overlapping_pairs(images, labels, n, max_shift=max_shift, canvas=36, seed=seed)
