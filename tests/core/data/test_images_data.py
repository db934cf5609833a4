"""Tests for difflab.data.images: IDX / CIFAR parsing on tiny files written in the exact formats, digits."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.data.images import (
    IMAGE_DATASETS,
    DatasetError,
    DatasetNotFoundError,
    ImageData,
    dataset_shape,
    load_image_data,
    load_image_dataset,
    load_image_labels,
    random_hflip,
    read_idx,
)


def _idx_bytes(arr: np.ndarray) -> bytes:
    magic = 0x0800 | arr.ndim  # unsigned byte, ndim dims -> 2051 (3-d) / 2049 (1-d)
    header = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    data = _idx_bytes(arr)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # make sure both extremes appear
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def _write_mnist(root: Path, gz: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split, prefix, n in (("train", "train", 7), ("test", "t10k", 3)):
        imgs, lbls = _mnist_arrays(n, seed=n)
        _write_idx(root / f"{prefix}-images-idx3-ubyte", imgs, gz)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", lbls, gz)
        out[split] = (imgs, lbls)
    return out


def test_idx_magic_numbers_match_spec() -> None:
    assert _idx_bytes(np.zeros((1, 2, 2), np.uint8))[:4] == (2051).to_bytes(4, "big")
    assert _idx_bytes(np.zeros(3, np.uint8))[:4] == (2049).to_bytes(4, "big")


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_round_trip(tmp_path: Path, gz: bool, name: str) -> None:
    arrays = _write_mnist(tmp_path, gz)
    for split, (imgs, lbls) in arrays.items():
        data = load_image_data(name, tmp_path, split)
        assert isinstance(data, ImageData)
        assert data.images.dtype == torch.float32 and data.labels.dtype == torch.int64
        assert data.images.shape == (imgs.shape[0], 1, 28, 28)
        assert data.shape == dataset_shape(name) == (1, 28, 28)
        expected = torch.from_numpy(imgs.astype(np.float32) / 255.0 * 2.0 - 1.0)[:, None]
        torch.testing.assert_close(data.images, expected, rtol=0, atol=1e-6)
        assert data.labels.tolist() == lbls.tolist()
        # pixel 0 -> -1, pixel 255 -> +1 exactly
        assert data.images[0, 0, 0, 0].item() == -1.0 and data.images[0, 0, 0, 1].item() == 1.0
        # exact inverse of the scaling
        back = ((data.images + 1.0) * 127.5).round().to(torch.uint8)[:, 0].numpy()
        np.testing.assert_array_equal(back, imgs)
    test_images = load_image_data(name, tmp_path, "test").images
    assert torch.equal(load_image_dataset(name, tmp_path, "test"), test_images)
    assert load_image_labels(name, str(tmp_path), "train").tolist() == arrays["train"][1].tolist()


def test_idx_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = _write_mnist(raw, gz=True)
    assert load_image_labels("mnist", tmp_path, "test").tolist() == arrays["test"][1].tolist()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path: Path, gz: bool) -> None:
    _write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    data = path.read_bytes()[:-100]  # cut bytes off the pixel data
    path.unlink()
    if gz:
        path = tmp_path / "train-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    with pytest.raises(DatasetError, match="truncated") as info:
        load_image_data("mnist", tmp_path, "train")
    assert path.name in str(info.value)


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(DatasetError) as info:
        load_image_data("mnist", tmp_path, "test")
    assert path.name in str(info.value)


def test_idx_bad_magic(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[:4] = struct.pack(">I", 1234)
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="magic") as info:
        load_image_data("fashion_mnist", tmp_path, "test")
    assert "t10k-labels-idx1-ubyte" in str(info.value)


def test_idx_swapped_files_wrong_magic(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    lbl = tmp_path / "train-labels-idx1-ubyte"
    lbl.write_bytes((tmp_path / "t10k-images-idx3-ubyte").read_bytes())  # an image file in the label slot
    with pytest.raises(DatasetError, match="2049"):
        load_image_data("mnist", tmp_path, "train")


def test_idx_count_mismatch(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8), gz=False)
    with pytest.raises(DatasetError, match="7 images but"):
        load_image_data("mnist", tmp_path, "train")


def test_idx_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(_idx_bytes(np.arange(4, dtype=np.uint8)) + b"\x00")
    with pytest.raises(DatasetError, match="trailing"):
        read_idx(path)
    path.write_bytes(_idx_bytes(np.arange(4, dtype=np.uint8)))
    np.testing.assert_array_equal(read_idx(path, expected_magic=2049), np.arange(4))


def test_mnist_missing_files_message(tmp_path: Path) -> None:
    missing_dir = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_image_data("mnist", missing_dir, "train")
    msg = str(info.value)
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert str(missing_dir) in msg
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DatasetError)
    # only the labels missing -> named explicitly
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), gz=True)
    with pytest.raises(DatasetNotFoundError, match=r"missing file\(s\) t10k-labels-idx1-ubyte;"):
        load_image_data("mnist", tmp_path, "test")
    with pytest.raises(DatasetNotFoundError, match="t10k-images-idx3-ubyte"):
        load_image_data("fashion_mnist", None, "test")


def _cifar_batch(n: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch",
        b"labels": rng.integers(0, 10, size=n).tolist(),
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [b"x.png"] * n,
    }


def _write_cifar(folder: Path) -> dict[str, dict[bytes, object]]:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": _cifar_batch(2 + i, seed=i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(4, seed=99)
    for name, batch in batches.items():
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
    return batches


@pytest.mark.parametrize("nested", [True, False])
def test_cifar_round_trip(tmp_path: Path, nested: bool) -> None:
    batches = _write_cifar(tmp_path / "cifar-10-batches-py" if nested else tmp_path)
    train = load_image_data("cifar10", tmp_path, "train")
    data = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])  # type: ignore[misc]
    labels = [lbl for i in range(1, 6) for lbl in batches[f"data_batch_{i}"][b"labels"]]  # type: ignore[attr-defined]
    assert train.images.shape == (data.shape[0], 3, 32, 32) == (3 + 4 + 5 + 6 + 7, 3, 32, 32)
    assert train.labels.tolist() == labels
    # channel-major layout: the first 1024 values are the red plane, row-major
    img0 = data[0].reshape(3, 32, 32).astype(np.float32) / 255.0 * 2.0 - 1.0
    torch.testing.assert_close(train.images[0], torch.from_numpy(img0), rtol=0, atol=1e-6)
    assert train.images[0, 0, 0, 1].item() == pytest.approx(data[0, 1] / 127.5 - 1.0, abs=1e-6)
    assert train.images[0, 1, 0, 0].item() == pytest.approx(data[0, 1024] / 127.5 - 1.0, abs=1e-6)
    test = load_image_data("cifar10", tmp_path, "test")
    assert test.labels.tolist() == batches["test_batch"][b"labels"]
    back = ((test.images + 1.0) * 127.5).round().to(torch.uint8).reshape(4, 3072).numpy()
    np.testing.assert_array_equal(back, batches["test_batch"][b"data"])


def test_cifar_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_image_data("cifar10", tmp_path, "train")
    msg = str(info.value)
    assert all(f"data_batch_{i}" in msg for i in range(1, 6)) and str(tmp_path) in msg
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"missing file\(s\) data_batch_3;"):
        load_image_data("cifar10", tmp_path, "train")
    # truncated pickle
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError, match="test_batch"):
        load_image_data("cifar10", tmp_path, "test")
    # wrong shape
    bad = _cifar_batch(2, 0)
    bad[b"data"] = np.zeros((2, 100), np.uint8)
    path.write_bytes(pickle.dumps(bad))
    with pytest.raises(DatasetError, match=r"test_batch.*\(N, 3072\)"):
        load_image_data("cifar10", tmp_path, "test")


def test_digits() -> None:
    train = load_image_data("digits", None, "train")
    test = load_image_data("digits", None, "test")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.images.dtype == torch.float32
    for d in (train, test):
        assert d.images.min().item() == -1.0 and d.images.max().item() == 1.0
        assert d.labels.min().item() == 0 and d.labels.max().item() == 9
    # values are k/16 scaled to [-1, 1]
    steps = (train.images + 1.0) * 8.0
    torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-5)
    # deterministic split, disjoint, covering all 1797 images
    again = load_image_dataset("digits", "/ignored", "test")
    assert torch.equal(again, test.images)
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images).float().reshape(1797, -1)
    ours = torch.cat([train.images, test.images]).reshape(1797, -1) * 8.0 + 8.0
    assert sorted(map(tuple, ours.round().tolist())) == sorted(map(tuple, raw.tolist()))


def test_unknown_name_and_split() -> None:
    with pytest.raises(ValueError, match="mnist") as info:
        load_image_data("imagenet", None)
    assert all(n in str(info.value) for n in IMAGE_DATASETS)
    with pytest.raises(ValueError, match="train"):
        load_image_data("digits", None, "validation")


def test_random_hflip() -> None:
    x = torch.arange(6 * 2 * 3 * 4, dtype=torch.float32).reshape(6, 2, 3, 4)
    g = torch.Generator().manual_seed(0)
    y = random_hflip(x, g)
    flipped = [bool(torch.equal(y[i], x[i].flip(-1))) for i in range(6)]
    kept = [bool(torch.equal(y[i], x[i])) for i in range(6)]
    assert all(f != k for f, k in zip(flipped, kept))
    expected = (torch.rand(6, generator=torch.Generator().manual_seed(0)) < 0.5).tolist()
    assert flipped == expected
    assert torch.equal(random_hflip(x, torch.Generator().manual_seed(0)), y)  # deterministic
    assert torch.equal(random_hflip(x, g, p=0.0), x)
    assert torch.equal(random_hflip(x, g, p=1.0), x.flip(-1))
