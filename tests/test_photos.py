"""The photo catalogue: real files from installed packages, loaded as RGB uint8, clear errors."""

import subprocess
import sys

import numpy as np
import pytest

from cvhelpers.data import photos
from cvhelpers.data.photos import get_photo, list_photos, load_photo

# Python packages in requirements.txt: their photos must always be there.
ALWAYS_THERE = ["astronaut", "chelsea", "coffee", "rocket", "camera", "china", "flower",
                "grace_hopper", "bus", "zidane"]


def test_pip_package_photos_are_available():
    available = {p.name for p in list_photos()}
    assert set(ALWAYS_THERE) <= available


@pytest.mark.parametrize("photo", list_photos(), ids=lambda p: p.name)
def test_every_available_photo_loads_as_rgb_uint8(photo):
    image = photo.load()
    assert image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 3
    assert min(image.shape[:2]) >= 200, "too small to be a useful photo"
    assert image.std() > 10, "a real photo is not a flat image"


def test_names_are_unique_and_catalogue_is_stable():
    names = [p.name for p in list_photos(available_only=False)]
    assert len(names) == len(set(names))
    # stable: the catalogue keeps one fixed order, call after call
    assert names[:4] == ["astronaut", "camera", "chelsea", "coffee"]
    assert [p.name for p in list_photos(available_only=False)] == names
    available = [p.name for p in list_photos()]
    assert available == [n for n in names if n in available]  # a filter keeps the order
    for name in names:  # on the machine or not, as the file system says
        path = get_photo(name).path()
        assert (name in available) == (path is not None and path.is_file())


def test_loader_matches_the_packages_own_loaders():
    """Same pixels as skimage.data / sklearn / matplotlib give: the files are the right ones."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    np.testing.assert_array_equal(load_photo("chelsea"), skimage.data.chelsea())
    np.testing.assert_array_equal(load_photo("coffee"), skimage.data.coffee())
    np.testing.assert_array_equal(load_photo("china"), load_sample_image("china.jpg"))
    camera = load_photo("camera")
    np.testing.assert_array_equal(camera[..., 0], skimage.data.camera())
    assert (camera[..., 0] == camera[..., 2]).all(), "grayscale is repeated on 3 channels"


def test_grace_hopper_is_matplotlibs_sample():
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        from PIL import Image

        expected = np.asarray(Image.open(f).convert("RGB"))
    np.testing.assert_array_equal(load_photo("grace_hopper"), expected)


def test_ultralytics_photos_load_without_importing_ultralytics():
    # A fresh interpreter: importing ultralytics would change torch's thread count.
    code = ("import sys; from cvhelpers.data.photos import load_photo; "
            "assert load_photo('bus').shape == (1080, 810, 3); "
            "assert load_photo('zidane').shape == (720, 1280, 3); "
            "assert 'ultralytics' not in sys.modules, 'ultralytics was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_class_sets_are_valid_imagenet_indices():
    from timm.data import ImageNetInfo

    names = ImageNetInfo().label_descriptions()
    labelled = [p for p in list_photos(available_only=False) if p.imagenet_classes is not None]
    assert len(labelled) >= 6
    for photo in labelled:
        assert photo.imagenet_classes and all(0 <= i < 1000 for i in photo.imagenet_classes)
    assert "tabby" in names[min(get_photo("chelsea").imagenet_classes)]
    assert "espresso" in {names[i].split(",")[0] for i in get_photo("coffee").imagenet_classes}


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match="Did you mean chelsea"):
        load_photo("chelsa")


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(photos, "OPENCV_DOC_DATA", tmp_path)  # as if opencv-doc were absent
    assert "orange" not in {p.name for p in list_photos()}
    assert "orange" in {p.name for p in list_photos(available_only=False)}
    with pytest.raises(FileNotFoundError, match="apt-get install opencv-doc"):
        load_photo("orange")
