"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), read offline from the Debian package.

Fashion-MNIST: 70,000 grey-scale 28 x 28 images of clothing in 10 classes, 60,000 for
training and 10,000 for testing, in the IDX format of the original MNIST files (LeCun
et al.). Licence: MIT (Expat). The Debian package ``dataset-fashion-mnist`` installs the
four gzipped files under ``/usr/share/datasets/fashion-mnist``::

    train-images-idx3-ubyte.gz   (60000, 28, 28) uint8
    train-labels-idx1-ubyte.gz   (60000,) uint8, class ids 0..9
    t10k-images-idx3-ubyte.gz    (10000, 28, 28) uint8
    t10k-labels-idx1-ubyte.gz    (10000,) uint8

IDX format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number ``0x00 0x00 T N``
(``T`` the element type, ``0x08`` = unsigned byte, ``N`` the number of dimensions), then
``N`` big-endian int32 sizes, then the elements in C order (multi-byte types big-endian).
:func:`read_idx` parses it with numpy (no framework reads it without adding a
dependency: torchvision is not one of attnlab's); :func:`write_idx` writes it, for test
fixtures.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_PACKAGE",
    "FASHION_MNIST_FILES",
    "CLASSES",
    "MEAN",
    "STD",
    "ImageSet",
    "read_idx",
    "write_idx",
    "load_fashion_mnist",
    "normalize_images",
]

FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: split -> (images file, labels file)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: Class names in label order (the dataset's README).
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: Pixel mean and standard deviation of the 60,000 training images, on the [0, 1] scale
#: (measured on the Debian package's files: 0.2860, 0.3530).
MEAN = 0.2860
STD = 0.3530

# IDX element type code -> numpy dtype (big-endian for the multi-byte ones).
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_TYPE_CODES = {dt.newbyteorder("=") if dt.itemsize > 1 else dt: code for code, dt in _IDX_TYPES.items()}


class ImageSet(NamedTuple):
    """``images`` (N, H, W) uint8 array, ``labels`` (N,) int64 array of class ids."""

    images: np.ndarray
    labels: np.ndarray


def _open(path: Path):
    # The gzip magic decides, not the suffix, so a decompressed copy reads the same.
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array of its own shape and type.

    Args:
        path: an IDX file, e.g. ``train-images-idx3-ubyte.gz``.

    Shape:
        returns the array of the sizes in the header, e.g. ``(N, 28, 28)`` uint8.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not an IDX file (bad magic number, unknown element type, or a body
            shorter or longer than the header says); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} not found")
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read it as a (gzipped) IDX file: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (its magic number must start with two zero bytes, got {data[:4]!r})")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        valid = ", ".join(f"0x{c:02X}" for c in _IDX_TYPES)
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02X}; valid types: {valid}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header declares {ndim} dimensions but the file ends after {len(data)} bytes")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: IDX header says shape {shape} of {dtype.name} ({expected} bytes of data), "
            f"but the file holds {len(data) - header} bytes after the header"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)  # native order, writable


def write_idx(array, path: str | os.PathLike) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``).

    Supported dtypes: uint8, int8, int16, int32, float32, float64 (the IDX types).
    """
    arr = np.asarray(array)
    native = arr.dtype.newbyteorder("=") if arr.dtype.itemsize > 1 else arr.dtype
    if native not in _TYPE_CODES:
        raise TypeError(
            f"array must have an IDX dtype (uint8, int8, int16, int32, float32, float64), got {arr.dtype}"
        )
    if arr.ndim > 255:
        raise ValueError(f"array has {arr.ndim} dimensions; IDX allows at most 255")
    code = _TYPE_CODES[native]
    big = arr.astype(_IDX_TYPES[code], copy=False)
    payload = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes() + big.tobytes(order="C")
    path = Path(path)
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    from .._io import write_bytes_atomic

    return write_bytes_atomic(payload, path)


@functools.lru_cache(maxsize=4)
def _cached_split(images_path: str, labels_path: str, mtimes: tuple) -> ImageSet:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{images_path}: images must be an IDX array of shape (N, H, W) uint8, "
            f"got shape {images.shape} {images.dtype}"
        )
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: labels must be an IDX array of shape (N,), got shape {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels"
        )
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(
            f"{labels_path}: labels must be class ids in [0, {len(CLASSES)}), got range "
            f"[{labels.min()}, {labels.max()}]"
        )
    images.flags.writeable = False  # shared by every caller of the cache
    labels.flags.writeable = False
    return ImageSet(images, labels)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> ImageSet:
    """The Fashion-MNIST ``split`` ("train": 60,000 images, "test": 10,000).

    Args:
        split: "train" or "test".
        root: folder holding the four ``*-ubyte.gz`` files. ``None``: the Debian
            package's folder, installed on demand by
            :func:`attnlab.data.debian.ensure_debian_package` (as root; otherwise the
            error says which command to run).

    Shape:
        returns :class:`ImageSet` with images ``(N, 28, 28)`` uint8 (read-only, cached
        per process) and labels ``(N,)`` int64.

    Raises:
        ValueError: unknown ``split``, or files that are not IDX or do not agree.
        FileNotFoundError: a file is missing (``DebianPackageMissing`` for the default root).
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(FASHION_MNIST_FILES)}")
    if root is None:
        from .debian import ensure_debian_package

        folder = Path(FASHION_MNIST_DIR)
        ensure_debian_package(FASHION_MNIST_PACKAGE, folder / FASHION_MNIST_FILES[split][0])
    else:
        folder = Path(root)
        if not folder.is_dir():
            raise FileNotFoundError(f"Fashion-MNIST folder {str(folder)!r} does not exist")
    paths = [folder / name for name in FASHION_MNIST_FILES[split]]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found; a Fashion-MNIST folder holds {', '.join(n for f in FASHION_MNIST_FILES.values() for n in f)}"
            )
    mtimes = tuple(p.stat().st_mtime_ns for p in paths)
    return _cached_split(str(paths[0]), str(paths[1]), mtimes)


def normalize_images(images, mean: float = MEAN, std: float = STD):
    """uint8 images -> float32 tensor with one channel, standardized: ``(x / 255 - mean) / std``.

    Shape:
        ``(N, H, W)`` uint8 array or tensor -> ``(N, 1, H, W)`` float32 tensor.
    """
    import torch

    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.dtype != torch.uint8 or x.dim() != 3:
        raise ValueError(f"images must be (N, H, W) uint8, got shape {tuple(x.shape)} {x.dtype}")
    return ((x.to(torch.float32) / 255.0 - mean) / std).unsqueeze(1)  # (N, 1, H, W)
