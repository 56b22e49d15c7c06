import gzip
from pathlib import Path

import numpy as np
import pytest

from cvhelpers.data import fashion_mnist as fm
from cvhelpers.data.validate import DatasetError


def write_idx(path, array, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = tmp_path / ("x.gz" if gz else "x")
    write_idx(path, array, gz)
    np.testing.assert_array_equal(fm.read_idx(path), array)


def test_truncated_idx_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((4, 28, 28)))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=f"{path}: truncated"):
        fm.read_idx(path)


def test_not_idx_names_the_file(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(DatasetError, match=f"{path}: not an unsigned-byte IDX file"):
        fm.read_idx(path)


def test_missing_everywhere_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIRS", (tmp_path / "nowhere",))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fm.load_fashion_mnist(tmp_path, "test")


def test_project_folder_is_used_first(tmp_path, monkeypatch):
    system = tmp_path / "system"  # a system copy that must lose to the project's own folder
    system.mkdir()
    monkeypatch.setattr(fm, "SYSTEM_DIRS", (system,))
    raw = fm.raw_dir(tmp_path / "project")
    raw.mkdir(parents=True)
    for folder, value in ((raw, 7), (system, 3)):
        for split, n in (("train", 6), ("test", 4)):
            write_idx(folder / fm.FILES[split][0], np.full((n, 28, 28), value))
            write_idx(folder / fm.FILES[split][1], np.arange(n) % 10)
    images, labels = fm.load_fashion_mnist(tmp_path / "project", "test")
    assert images.shape == (4, 28, 28) and labels.dtype == np.int64
    assert (images == 7).all() and labels.tolist() == [0, 1, 2, 3]
    images, _ = fm.load_fashion_mnist(tmp_path / "elsewhere", "test")  # no project copy: the system one
    assert (images == 3).all()
    labels = np.repeat(np.arange(3), 5)
    subset = fm.stratified_subset(labels, per_class=2)
    assert subset.shape == (6,) and len(set(subset.tolist())) == 6
    assert np.bincount(labels[subset], minlength=3).tolist() == [2, 2, 2]


def test_label_out_of_range_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    raw = fm.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for split in ("train", "test"):
        write_idx(raw / fm.FILES[split][0], np.zeros((2, 28, 28)))
        write_idx(raw / fm.FILES[split][1], np.array([3, 12]))
    with pytest.raises(DatasetError, match="class id 12 is out of range"):
        fm.load_fashion_mnist(tmp_path, "train")


def test_real_fashion_mnist_matches_torchvision(data_root):
    if fm.find_fashion_mnist(data_root) is None:
        pytest.skip("Fashion-MNIST is not on this machine (make data installs it)")
    fm.prepare_fashion_mnist(data_root)
    images, labels = fm.load_fashion_mnist(data_root, "test")
    assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
    from torchvision.datasets import FashionMNIST

    reference = FashionMNIST(str(data_root), train=False, download=False)  # reads the same raw files
    np.testing.assert_array_equal(reference.data.numpy(), images)
    np.testing.assert_array_equal(reference.targets.numpy(), labels)


def test_to_tensor_dataset_scales_and_standardises():
    images = np.array([[[0, 255]]], dtype=np.uint8).repeat(2, axis=0)
    ds = fm.to_tensor_dataset(images, np.array([1, 2]))
    x, y = ds[0]
    assert x.shape == (1, 1, 2) and y.item() == 1
    np.testing.assert_allclose(x.numpy().ravel(), [(0 - fm.MEAN) / fm.STD, (1 - fm.MEAN) / fm.STD], rtol=1e-6)
    raw = fm.to_tensor_dataset(images, np.array([1, 2]), normalize=False)
    assert raw[0][0].max().item() == 1.0


def test_mean_and_std_are_the_training_photos_own():
    root = Path(__file__).resolve().parents[1] / "datasets"
    if fm.find_fashion_mnist(root) is None:
        pytest.skip("Fashion-MNIST not prepared (make data)")
    images, _ = fm.load_fashion_mnist(root, "train")
    pixels = images / 255.0
    assert (fm.MEAN, fm.STD) == pytest.approx((pixels.mean(), pixels.std()), abs=1e-3)
