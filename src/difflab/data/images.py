"""Image datasets for difflab: scikit-learn digits, MNIST, Fashion-MNIST and CIFAR-10, read from local files.

Every loader returns float32 images of shape ``(N, C, H, W)`` scaled linearly to ``[-1, 1]`` (``0 -> -1``,
maximum pixel value ``-> +1``) and int64 class labels of shape ``(N,)``. Nothing is ever downloaded:

* ``"digits"`` -- the 1797 8x8 images bundled with scikit-learn (:func:`sklearn.datasets.load_digits`,
  values ``0..16``). There is no official split, so a fixed permutation (``numpy.random.RandomState(0)``)
  is taken and its last 20% (359 images) form the ``"test"`` split, the rest ``"train"``. ``root`` is ignored.
* ``"mnist"`` / ``"fashion_mnist"`` -- the IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally gzipped, ``.gz``) in ``root``
  (also looked for in torchvision's ``root/MNIST/raw`` / ``root/FashionMNIST/raw`` layout).
* ``"cifar10"`` -- the python pickled batches ``data_batch_1`` .. ``data_batch_5`` (train) and ``test_batch``
  (test) in ``root/cifar-10-batches-py`` or directly in ``root``. Note that unpickling runs code from the
  file: only point this at files you trust.

Missing, truncated or corrupt files raise :class:`DatasetError` whose message names the file(s) and the
directories searched. The main entry points are :func:`load_image_data` (returns :class:`ImageData`:
images, labels, name, split), :func:`load_image_dataset` (images only) and :func:`load_image_labels`.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "IMAGE_DATASETS",
    "SPLITS",
    "DatasetError",
    "DatasetNotFoundError",
    "ImageData",
    "dataset_shape",
    "load_image_data",
    "load_image_dataset",
    "load_image_labels",
    "random_hflip",
    "read_idx",
]

IMAGE_DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion_mnist", "cifar10")
SPLITS: tuple[str, ...] = ("train", "test")

_IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_SUBDIRS: dict[str, tuple[str, ...]] = {
    "mnist": ("MNIST/raw", "mnist"),
    "fashion_mnist": ("FashionMNIST/raw", "fashion_mnist", "fashion-mnist"),
}
_CIFAR_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
_DIGITS_TEST_FRACTION = 0.2


class DatasetError(ValueError):
    """A dataset file is missing, truncated or corrupt (the message names the file and what is wrong)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """Expected dataset files are missing; the message lists the expected names and the directories."""


@dataclass(frozen=True)
class ImageData:
    """A split of an image dataset.

    Attributes:
        images: float32 tensor ``(N, C, H, W)`` in ``[-1, 1]``.
        labels: int64 tensor ``(N,)`` of class indices.
        name: dataset name (one of :data:`IMAGE_DATASETS`).
        split: ``"train"`` or ``"test"``.
    """

    images: Tensor
    labels: Tensor
    name: str
    split: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image shape ``(C, H, W)``."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)


def dataset_shape(name: str) -> tuple[int, int, int]:
    """Per-image shape ``(C, H, W)`` of a named dataset (no file access)."""
    _check_name(name)
    return _SHAPES[name]


def _check_name(name: str) -> None:
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; valid names: {', '.join(IMAGE_DATASETS)}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def _to_unit_range(x: np.ndarray, max_value: float) -> Tensor:
    """Map integer pixels in ``[0, max_value]`` linearly to float32 ``[-1, 1]``."""
    out = torch.from_numpy(np.array(x, dtype=np.float32, order="C", copy=True))
    return out.mul_(2.0 / max_value).sub_(1.0)


# ----------------------------------------------------------------------------------------------- digits


def _load_digits(split: str) -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    n = images.shape[0]
    perm = np.random.RandomState(0).permutation(n)
    n_test = round(_DIGITS_TEST_FRACTION * n)
    idx = perm[: n - n_test] if split == "train" else perm[n - n_test :]
    x = _to_unit_range(images[idx][:, None, :, :], 16.0)
    return x, torch.from_numpy(labels[idx].copy())


# ----------------------------------------------------------------------------------------------- IDX


def _read_bytes(path: Path) -> bytes:
    """Read a file, un-gzipping ``*.gz``; decompression failures become :class:`DatasetError`."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read dataset file {path}: {err}") from err
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"corrupt or truncated gzip file {path}: {err}") from err


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (the MNIST format), optionally gzipped.

    Layout: a big-endian 32-bit magic number ``0x0000 08 nd`` (``0x08`` = unsigned byte, ``nd`` = number of
    dimensions; 2051 for 3-d image files, 2049 for 1-d label files), ``nd`` big-endian uint32 sizes, then
    ``prod(sizes)`` bytes of data.

    Raises:
        DatasetError: bad magic number, a different magic than ``expected_magic``, or a byte count that
            differs from the header (truncated or trailing data).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"truncated IDX file {path}: {len(data)} bytes, shorter than the magic number")
    magic = int.from_bytes(data[:4], "big")
    zero, dtype_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise DatasetError(
            f"corrupt IDX file {path}: bad magic number {magic} (0x{magic:08x}); expected an unsigned-byte "
            f"IDX file (magic 2051 for images, 2049 for labels)"
        )
    if expected_magic is not None and magic != expected_magic:
        raise DatasetError(f"corrupt IDX file {path}: magic number {magic}, expected {expected_magic}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"truncated IDX file {path}: {len(data)} bytes, header needs {header}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) < expected:
        raise DatasetError(
            f"truncated IDX file {path}: header says shape {dims} ({expected} bytes in all) but the file has "
            f"only {len(data)} bytes"
        )
    if len(data) > expected:
        raise DatasetError(
            f"corrupt IDX file {path}: header says shape {dims} ({expected} bytes in all) but the file has "
            f"{len(data)} bytes (trailing data)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _search_dirs(root: Path, subdirs: tuple[str, ...]) -> list[Path]:
    return [root, *(root / s for s in subdirs)]


def _find_file(base: str, dirs: list[Path], allow_gz: bool) -> Path | None:
    for d in dirs:
        for candidate in (base, f"{base}.gz") if allow_gz else (base,):
            p = d / candidate
            if p.is_file():
                return p
    return None


def _missing_error(
    name: str, split: str, missing: list[str], expected: tuple[str, ...], dirs: list[Path], note: str
) -> DatasetNotFoundError:
    searched = ", ".join(str(d) for d in dirs)
    return DatasetNotFoundError(
        f"{name} ({split} split): missing file(s) {', '.join(missing)}; expected files {', '.join(expected)}"
        f"{note} in one of the directories searched: {searched}. Nothing is downloaded: put the files there."
    )


def _require_root(name: str, root: str | Path | None, expected: tuple[str, ...]) -> Path:
    if root is None:
        raise DatasetNotFoundError(
            f"{name} needs a data directory (root=None given); expected files {', '.join(expected)} in it. "
            f"Nothing is downloaded."
        )
    return Path(root).expanduser()


def _load_idx(name: str, root: str | Path | None, split: str) -> tuple[Tensor, Tensor]:
    img_base, lbl_base = _IDX_FILES[split]
    rootp = _require_root(name, root, (img_base, lbl_base))
    dirs = _search_dirs(rootp, _IDX_SUBDIRS[name])
    img_path = _find_file(img_base, dirs, allow_gz=True)
    lbl_path = _find_file(lbl_base, dirs, allow_gz=True)
    missing = [b for b, p in ((img_base, img_path), (lbl_base, lbl_path)) if p is None]
    if img_path is None or lbl_path is None:
        raise _missing_error(name, split, missing, (img_base, lbl_base), dirs, " (each optionally .gz)")
    images = read_idx(img_path, expected_magic=2051)
    labels = read_idx(lbl_path, expected_magic=2049)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{name}: {img_path} holds {images.shape[0]} images but {lbl_path} holds {labels.shape[0]} labels"
        )
    if images.shape[1:] != (28, 28):
        raise DatasetError(f"{name}: {img_path} has images of shape {images.shape[1:]}, expected (28, 28)")
    if labels.size and int(labels.max()) > 9:
        raise DatasetError(f"{name}: {lbl_path} has label {int(labels.max())} outside 0..9")
    x = _to_unit_range(images[:, None, :, :], 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


# ----------------------------------------------------------------------------------------------- CIFAR


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except OSError as err:
        raise DatasetError(f"cannot read CIFAR-10 batch {path}: {err}") from err
    except Exception as err:  # unpickling can fail in many ways (EOFError, UnpicklingError, ...)
        raise DatasetError(f"corrupt or truncated CIFAR-10 batch {path}: cannot unpickle ({err!r})") from err
    if not isinstance(obj, dict):
        raise DatasetError(f"corrupt CIFAR-10 batch {path}: expected a dict, got {type(obj).__name__}")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        raise DatasetError(f"corrupt CIFAR-10 batch {path}: missing b'data' or b'labels' key")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(
            f"corrupt CIFAR-10 batch {path}: data has shape {data.shape} dtype {data.dtype}, "
            f"expected (N, 3072) uint8"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DatasetError(f"corrupt CIFAR-10 batch {path}: {labels.shape} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"corrupt CIFAR-10 batch {path}: labels outside 0..9")
    return data, labels.astype(np.int64)


def _load_cifar10(root: str | Path | None, split: str) -> tuple[Tensor, Tensor]:
    names = _CIFAR_FILES[split]
    rootp = _require_root("cifar10", root, names)
    dirs = _search_dirs(rootp, ("cifar-10-batches-py",))
    # all files of a split must come from the same directory
    found: list[Path] | None = None
    for d in [dirs[1], dirs[0]]:
        paths = [d / n for n in names]
        if all(p.is_file() for p in paths):
            found = paths
            break
    if found is None:
        best = max(dirs, key=lambda d: sum((d / n).is_file() for n in names))
        missing = [n for n in names if not (best / n).is_file()]
        raise _missing_error("cifar10", split, missing, names, dirs, "")
    parts = [_load_cifar_batch(p) for p in found]
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    return _to_unit_range(data, 255.0), torch.from_numpy(labels)


# ----------------------------------------------------------------------------------------------- API


def load_image_data(name: str, root: str | Path | None = None, split: str = "train") -> ImageData:
    """Load one split of a named image dataset as :class:`ImageData` (images in ``[-1, 1]``, int64 labels).

    Args:
        name: one of :data:`IMAGE_DATASETS`.
        root: directory holding the files (ignored for ``"digits"``).
        split: ``"train"`` or ``"test"``.

    Raises:
        ValueError: unknown ``name`` or ``split`` (the message lists the valid ones).
        DatasetNotFoundError: files missing (message lists expected file names and directories searched).
        DatasetError: truncated or corrupt files.
    """
    _check_name(name)
    _check_split(split)
    if name == "digits":
        images, labels = _load_digits(split)
    elif name == "cifar10":
        images, labels = _load_cifar10(root, split)
    else:
        images, labels = _load_idx(name, root, split)
    return ImageData(images=images, labels=labels, name=name, split=split)


def load_image_dataset(name: str, root: str | Path | None = None, split: str = "train") -> Tensor:
    """Images only of :func:`load_image_data`: float32 ``(N, C, H, W)`` in ``[-1, 1]``."""
    return load_image_data(name, root, split).images


def load_image_labels(name: str, root: str | Path | None = None, split: str = "train") -> Tensor:
    """Labels only of :func:`load_image_data`: int64 ``(N,)``."""
    return load_image_data(name, root, split).labels


def random_hflip(x: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """Flip each image of ``x`` ``(B, C, H, W)`` left-right independently with probability ``p`` (vectorised).

    Returns a new tensor; ``x`` is not modified. ``generator`` must live on ``x.device`` (or be ``None``).
    """
    if x.ndim != 4:
        raise ValueError(f"random_hflip expects (B, C, H, W), got shape {tuple(x.shape)}")
    mask = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
