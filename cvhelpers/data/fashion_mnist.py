"""Fashion-MNIST, found offline first.

Where the four IDX files are looked for, in order:

1. the project's data folder, torchvision's layout: ``<root>/FashionMNIST/raw/`` (``.gz`` or not);
2. the Debian/Ubuntu package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
3. torchvision's own downloader, only when ``allow_download=True`` (and the network answers).

>>> images, labels = load_fashion_mnist("datasets", "test")   # doctest: +SKIP
>>> images.shape, images.dtype, labels[:3]                      # doctest: +SKIP
((10000, 28, 28), dtype('uint8'), array([9, 2, 1]))
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np

from cvhelpers.data.validate import DatasetError

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SYSTEM_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
#: Mean and standard deviation of the training pixels scaled to [0, 1] (computed in notebook 01).
MEAN, STD = 0.2860, 0.3530


def raw_dir(root: str | Path) -> Path:
    """``<root>/FashionMNIST/raw``: where torchvision's ``FashionMNIST(root)`` looks too."""
    return Path(root) / "FashionMNIST" / "raw"


def _locate(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(root: str | Path) -> Path | None:
    """The first folder (project, then system package) that holds all four files, else None."""
    for folder in (raw_dir(root), *SYSTEM_DIRS):
        if all(_locate(folder, stem) for pair in FILES.values() for stem in pair):
            return folder
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a uint8 array.

    The header is two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
    then one big-endian int32 per dimension.

    Raises:
        DatasetError: the file is truncated or not an unsigned-byte IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = bytearray(f.read())  # writable, so torch.from_numpy can share it
    except (OSError, EOFError) as err:
        raise DatasetError(f"{path}: cannot be read as {'gzip' if opener is gzip.open else 'IDX'} ({err})") from err
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (bad magic number {bytes(data[:4])!r})")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise DatasetError(f"{path}: truncated or padded: header says {shape} = {expected} bytes, "
                           f"file holds {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def prepare_fashion_mnist(root: str | Path, allow_download: bool = False) -> Path:
    """Make sure ``<root>/FashionMNIST/raw`` holds the four unzipped files; return that folder.

    Copies (and gunzips) from the system package when it is installed; otherwise downloads with
    torchvision when ``allow_download`` is True.

    Raises:
        FileNotFoundError: the data is nowhere on this machine and downloading is not allowed.
    """
    target = raw_dir(root)
    found = find_fashion_mnist(root)
    if found == target and all((target / stem).is_file() for pair in FILES.values() for stem in pair):
        return target
    if found is not None:
        target.mkdir(parents=True, exist_ok=True)
        for stem in (s for pair in FILES.values() for s in pair):
            source = _locate(found, stem)
            if source.suffix == ".gz":
                with gzip.open(source, "rb") as fin, open(target / stem, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            elif source != target / stem:
                shutil.copyfile(source, target / stem)
        return target
    if allow_download:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
        return target
    raise FileNotFoundError(
        f"Fashion-MNIST is not in {target} nor in {', '.join(map(str, SYSTEM_DIRS))}. "
        "On Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist`; elsewhere, with network: "
        f"`load_fashion_mnist({str(root)!r}, allow_download=True)` (torchvision's downloader)."
    )


def load_fashion_mnist(root: str | Path, split: str = "train",
                       allow_download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of Fashion-MNIST.

    Args:
        root: the project's data folder (e.g. ``"datasets"``).
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        allow_download: fall back to torchvision's downloader when the files are nowhere here.

    Returns:
        ``images``: uint8 ``(N, 28, 28)``, 0 = black background; ``labels``: int64 ``(N,)`` in 0..9,
        named by :data:`CLASS_NAMES`.
    """
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_fashion_mnist(root) or prepare_fashion_mnist(root, allow_download)
    image_file, label_file = (_locate(folder, stem) for stem in FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise DatasetError(f"{image_file}: {images.shape} images do not pair with {labels.shape} labels in {label_file}")
    if labels.max() >= len(CLASS_NAMES):
        raise DatasetError(f"{label_file}: class id {labels.max()} is out of range 0..{len(CLASS_NAMES) - 1}")
    return images, labels


def to_tensor_dataset(images: np.ndarray, labels: np.ndarray,
                      normalize: bool = True) -> "torch.utils.data.TensorDataset":  # noqa: F821
    """Wrap uint8 ``(N, 28, 28)`` images and ``(N,)`` labels as a ``TensorDataset``.

    Images become float32 ``(N, 1, 28, 28)``: scaled to [0, 1], then standardised with
    :data:`MEAN` / :data:`STD` when ``normalize``. Labels stay int64. Everything sits in memory
    (47 MB for the training set), which is faster than decoding images in a DataLoader.
    """
    import torch
    from torch.utils.data import TensorDataset

    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255).unsqueeze(1)
    if normalize:
        x = (x - MEAN) / STD
    return TensorDataset(x, torch.from_numpy(np.asarray(labels, dtype=np.int64)))


def stratified_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` random examples of every class (sorted), for small-data lessons."""
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))
