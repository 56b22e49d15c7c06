"""Image-folder datasets: same classes and labels as torchvision's ImageFolder, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvhelpers.data.imagefolder import read_image_folder, write_image_folder
from cvhelpers.data.validate import DatasetError, load_image

CLASSES = ["circle", "square", "star"]


@pytest.fixture
def images_and_labels():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(7)]
    return images, [2, 0, 1, 0, 2, 1, 0]


def test_round_trip(tmp_path, images_and_labels):
    images, labels = images_and_labels
    root = write_image_folder(images, labels, tmp_path / "cls", CLASSES)
    paths, read_labels, names = read_image_folder(root)
    assert names == CLASSES
    assert read_labels.dtype == np.int64 and sorted(read_labels.tolist()) == sorted(labels)
    assert (root / "star" / "00000.png") in paths
    for path, label in zip(paths, read_labels):
        index = int(path.stem)
        assert label == labels[index]
        np.testing.assert_array_equal(load_image(path), images[index])


def test_same_labels_as_torchvision(tmp_path, images_and_labels):
    datasets = pytest.importorskip("torchvision.datasets")
    root = write_image_folder(*images_and_labels, tmp_path / "cls", CLASSES)
    paths, labels, names = read_image_folder(root)
    reference = datasets.ImageFolder(str(root))
    assert reference.classes == names
    assert [(Path(p), c) for p, c in reference.samples] == list(zip(paths, labels.tolist()))


def test_grey_images_and_stray_files(tmp_path):
    root = write_image_folder([np.zeros((5, 5), np.uint8)], [0], tmp_path / "g", ["only"])
    (root / "only" / "notes.txt").write_text("not an image")
    (root / ".ipynb_checkpoints").mkdir()
    paths, labels, names = read_image_folder(root)
    assert names == ["only"] and len(paths) == 1 and load_image(paths[0]).shape == (5, 5, 3)


def test_empty_class_folder(tmp_path, images_and_labels):
    images, labels = images_and_labels
    root = write_image_folder(images, labels, tmp_path / "cls", CLASSES + ["triangle"])
    with pytest.raises(DatasetError) as info:
        read_image_folder(root)
    assert str(info.value).startswith(str(root / "triangle"))
    assert "no images" in str(info.value)


def test_unreadable_image(tmp_path, images_and_labels):
    root = write_image_folder(*images_and_labels, tmp_path / "cls", CLASSES)
    broken = root / "square" / "00002.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DatasetError) as info:
        read_image_folder(root)
    assert str(info.value).startswith(str(broken))
    assert len(read_image_folder(root, check_images=False)[0]) == 7


def test_no_class_folders(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(DatasetError, match="no class folders"):
        read_image_folder(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        read_image_folder(tmp_path / "missing")


def test_write_refuses_bad_labels(tmp_path, images_and_labels):
    images, _ = images_and_labels
    with pytest.raises(DatasetError, match="class id 3"):
        write_image_folder(images, [3] * len(images), tmp_path / "cls", CLASSES)
    with pytest.raises(ValueError, match="7 images but 1 labels"):
        write_image_folder(images, [0], tmp_path / "cls", CLASSES)
