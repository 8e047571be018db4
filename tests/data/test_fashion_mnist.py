"""Fashion-MNIST IDX reader and loader, on fixtures written in the real idx-ubyte.gz format."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab.data import fashion_mnist as fm
from attnlab.data.debian import DebianPackageMissing
from attnlab.data.fashion_mnist import (
    CLASSES,
    FASHION_MNIST_FILES,
    load_fashion_mnist,
    normalize_images,
    read_idx,
    write_idx,
)


def idx_bytes(arr: np.ndarray, code: int) -> bytes:
    """An IDX file written by hand from the format description (independent of write_idx)."""
    big = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return header + arr.astype(big).tobytes()


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    img_name, lab_name = FASHION_MNIST_FILES[split]
    (folder / img_name).write_bytes(gzip.compress(idx_bytes(images, 0x08)))
    (folder / lab_name).write_bytes(gzip.compress(idx_bytes(labels, 0x08)))


def make_dataset(folder: Path, n_train: int = 11, n_test: int = 7, size: int = 28) -> dict:
    rng = np.random.default_rng(3)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_split(folder, split, images, labels)
        data[split] = (images, labels)
    return data


def test_read_idx_gzipped_and_plain(tmp_path):
    arr = np.arange(3 * 5 * 7, dtype=np.uint8).reshape(3, 5, 7)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr, 0x08)))
    (tmp_path / "a").write_bytes(idx_bytes(arr, 0x08))
    for name in ("a.gz", "a"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (3, 5, 7)
        np.testing.assert_array_equal(out, arr)
        out[0, 0, 0] = 9  # a writable copy


@pytest.mark.parametrize("code,dtype", [(0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32),
                                        (0x0E, np.float64)])
def test_read_idx_multibyte_types_are_big_endian(tmp_path, code, dtype):
    arr = (np.arange(11, dtype=np.float64) * 3 - 7).astype(dtype).reshape(11)
    (tmp_path / "x").write_bytes(idx_bytes(arr, code))
    out = read_idx(tmp_path / "x")
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32])
def test_write_idx_matches_the_hand_written_format(tmp_path, dtype):
    arr = (np.arange(5 * 3) % 100).astype(dtype).reshape(5, 3)
    code = {np.uint8: 0x08, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}[dtype]
    write_idx(arr, tmp_path / "w.gz")
    assert gzip.decompress((tmp_path / "w.gz").read_bytes()) == idx_bytes(arr, code)
    write_idx(arr, tmp_path / "w")
    assert (tmp_path / "w").read_bytes() == idx_bytes(arr, code)
    np.testing.assert_array_equal(read_idx(tmp_path / "w.gz"), arr)


def test_write_idx_rejects_other_dtypes(tmp_path):
    with pytest.raises(TypeError, match="array must have an IDX dtype"):
        write_idx(np.zeros(3, dtype=np.int64), tmp_path / "x")


def test_read_idx_bad_files(tmp_path):
    arr = np.zeros((2, 3), dtype=np.uint8)
    good = idx_bytes(arr, 0x08)
    cases = {
        "magic": (b"\x01" + good[1:], "not an IDX file"),
        "type": (good[:2] + b"\x07" + good[3:], "unknown IDX element type 0x07; valid types"),
        "short": (good[:-1], r"IDX header says shape \(2, 3\)"),
        "long": (good + b"\x00", "holds 7 bytes after the header"),
        "header": (good[:6], "declares 2 dimensions but the file ends"),
        "gzip": (b"\x1f\x8b" + b"garbage", "cannot read it as a"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=message):
            read_idx(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.gz"):
        read_idx(tmp_path / "missing.gz")


def test_load_fixture_dataset(tmp_path):
    data = make_dataset(tmp_path)
    for split in ("train", "test"):
        s = load_fashion_mnist(split, tmp_path)
        assert s.images.shape == data[split][0].shape and s.images.dtype == np.uint8
        assert s.labels.dtype == np.int64
        np.testing.assert_array_equal(s.images, data[split][0])
        np.testing.assert_array_equal(s.labels, data[split][1])
        assert not s.images.flags.writeable  # shared through the cache


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'valid'; valid splits: train, test"):
        load_fashion_mnist("valid", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_fashion_mnist("train", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz not found"):
        load_fashion_mnist("train", tmp_path)
    imgs = np.zeros((5, 28, 28), dtype=np.uint8)
    write_split(tmp_path, "train", imgs, np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="holds 5 images but .* holds 3 labels"):
        load_fashion_mnist("train", tmp_path)
    write_split(tmp_path, "train", imgs, np.array([0, 1, 2, 10, 3], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 10\)"):
        load_fashion_mnist("train", tmp_path)
    write_split(tmp_path, "train", np.zeros((5, 28), dtype=np.uint8), np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"images must be an IDX array of shape \(N, H, W\)"):
        load_fashion_mnist("train", tmp_path)


def test_default_root_goes_through_the_debian_package(monkeypatch):
    calls = []

    def missing(package, path):
        calls.append((package, str(path)))
        raise DebianPackageMissing(f"{path} not found; it is shipped by the Debian package {package!r}")

    monkeypatch.setattr("attnlab.data.debian.ensure_debian_package", missing)
    with pytest.raises(DebianPackageMissing, match="dataset-fashion-mnist"):
        load_fashion_mnist("test")
    assert calls == [("dataset-fashion-mnist", f"{fm.FASHION_MNIST_DIR}/t10k-images-idx3-ubyte.gz")]


def test_normalize_images():
    imgs = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)  # (1, 2, 2)
    x = normalize_images(imgs)
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    expected = (np.array([[0, 1], [0.2, 0.4]]) - fm.MEAN) / fm.STD
    np.testing.assert_allclose(x[0, 0].numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"images must be \(N, H, W\) uint8"):
        normalize_images(np.zeros((2, 2), dtype=np.uint8))


REAL = Path(fm.FASHION_MNIST_DIR)


@pytest.mark.skipif(not (REAL / "t10k-labels-idx1-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_real_test_split():
    s = load_fashion_mnist("test")
    assert s.images.shape == (10000, 28, 28) and s.labels.shape == (10000,)
    assert np.bincount(s.labels).tolist() == [1000] * len(CLASSES)
