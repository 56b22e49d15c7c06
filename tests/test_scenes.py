"""The scenes benchmark: deterministic, honest labels, the promised difficulty, canonical files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cvhelpers.data.scenes import (CLASS_NAMES, Scene, generate_scenes, load_scenes, make_scenes_dataset, masks_to_boxes, photo_library)
from cvhelpers.data.validate import DatasetError

SMALL = {"n_train": 5, "n_val": 3, "n_test": 2}


@pytest.fixture(scope="module")
def default_scenes() -> list[Scene]:
    return generate_scenes("train", 80, seed=0)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return make_scenes_dataset(tmp_path_factory.mktemp("scenes"), **SMALL, seed=1)


def assert_same_scene(a: Scene, b: Scene) -> None:
    assert a.file_name == b.file_name
    for name in ("image", "boxes", "labels", "masks"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# ------------------------------------------------------------------------------- determinism
def test_same_seed_same_scenes_and_splits_differ():
    first, again = generate_scenes("val", 4, seed=3), generate_scenes("val", 4, seed=3)
    for a, b in zip(first, again):
        assert_same_scene(a, b)
    other_seed = generate_scenes("val", 4, seed=4)
    other_split = generate_scenes("test", 4, seed=3)
    for a, b, c in zip(first, other_seed, other_split):
        assert not np.array_equal(a.image, b.image)
        assert not np.array_equal(a.image, c.image)


def test_scene_does_not_depend_on_how_many_are_generated():
    assert_same_scene(generate_scenes("train", 3)[2], generate_scenes("train", 5)[2])


def test_same_seed_gives_byte_identical_files(tmp_path, small_dataset):
    again = make_scenes_dataset(tmp_path / "again", **SMALL, seed=1)
    files = sorted(p.relative_to(small_dataset) for p in small_dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for relative in files:
        assert (small_dataset / relative).read_bytes() == (again / relative).read_bytes(), relative


# ------------------------------------------------------------------------ the default benchmark
def test_default_scene_arrays(default_scenes):
    scene = default_scenes[0]
    assert scene.image.shape == (160, 160, 3) and scene.image.dtype == np.uint8
    assert scene.boxes.dtype == np.float32 and scene.boxes.shape == (len(scene.labels), 4)
    assert scene.labels.dtype == np.int64
    assert scene.masks.dtype == bool and scene.masks.shape == (len(scene.labels), 160, 160)
    assert scene.semantic.dtype == np.uint8 and scene.semantic.shape == (160, 160)
    assert scene.file_name == "train_00000.png"


def test_one_to_four_objects_of_at_least_three_classes(default_scenes):
    counts = [len(scene.labels) for scene in default_scenes]
    assert min(counts) >= 1 and max(counts) <= 4
    assert set(counts) == {1, 2, 3, 4}  # the range is used, not just allowed
    classes = set(np.concatenate([scene.labels for scene in default_scenes]).tolist())
    assert len(CLASS_NAMES) >= 3 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert classes == set(range(len(CLASS_NAMES)))


def test_whole_shape_sides_are_16_to_64_px(default_scenes):
    # "size" = both sides of the whole (unoccluded) shape's box, measured on its pixels.
    full = np.concatenate([scene.full_boxes for scene in default_scenes])
    sides = np.concatenate([full[:, 2] - full[:, 0], full[:, 3] - full[:, 1]])
    assert sides.min() >= 16 and sides.max() <= 64
    assert sides.min() < 24 and sides.max() > 56  # the whole range is used


def test_labels_are_honest(default_scenes):
    overlapping = 0
    for scene in default_scenes:
        visible = scene.masks.sum(axis=(1, 2))
        assert np.all(visible >= 0.5 * scene.full_areas)  # no shape hidden more than half
        overlapping += int(np.any(visible < scene.full_areas))
        assert scene.masks.sum(axis=0).max() <= 1  # visible parts never overlap
        np.testing.assert_array_equal(scene.boxes, masks_to_boxes(scene.masks))
        assert np.all(scene.boxes[:, 2:] <= 160) and np.all(scene.boxes[:, :2] >= 0)
        for mask, label in zip(scene.masks, scene.labels):
            assert np.all(scene.semantic[mask] == label + 1)
        assert np.all(scene.semantic[~scene.masks.any(axis=0)] == 0)
    assert overlapping >= 5  # occlusion does happen


def test_backgrounds_are_varied(default_scenes):
    assert len(photo_library()) >= 4  # skimage + sklearn photos are installed in the course venv
    # a plain background would make the task a colour threshold: check background variety
    spreads = [scene.image[scene.semantic == 0].std(axis=0).mean() for scene in default_scenes]
    assert np.median(spreads) > 10


# --------------------------------------------------------------------------------- on disk
def test_canonical_layout(small_dataset):
    root = small_dataset
    assert (root / "classes.txt").read_text().split() == list(CLASS_NAMES)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["params"]["splits"] == {"train": 5, "val": 3, "test": 2} and meta["content_hash"]
    for split, n in [("train", 5), ("val", 3), ("test", 2)]:
        assert len(list((root / split / "images").glob("*.png"))) == n
        masks = sorted((root / split / "masks").glob("*.png"))
        assert len(masks) == n
        with Image.open(masks[0]) as mask:
            assert mask.mode == "L" and mask.palette is None
        coco = json.loads((root / split / "annotations.json").read_text())
        assert len(coco["images"]) == n


def test_make_is_idempotent_and_regenerates_when_needed(tmp_path):
    root = make_scenes_dataset(tmp_path / "s", n_train=2, n_val=1, n_test=1)
    image = root / "train" / "images" / "train_00000.png"
    stamp = image.stat().st_mtime_ns
    make_scenes_dataset(root, n_train=2, n_val=1, n_test=1)
    assert image.stat().st_mtime_ns == stamp  # complete and same params: nothing rewritten
    image.write_bytes(b"")  # damaged: the content hash no longer matches
    make_scenes_dataset(root, n_train=2, n_val=1, n_test=1)
    assert image.stat().st_size > 0
    make_scenes_dataset(root, n_train=3, n_val=1, n_test=1)  # new params
    assert len(list((root / "train" / "images").glob("*.png"))) == 3


def test_load_scenes_round_trip(small_dataset):
    loaded = load_scenes(small_dataset, "val")
    generated = generate_scenes("val", 3, seed=1)
    assert len(loaded) == 3 and all(isinstance(s, Scene) for s in loaded)
    for a, b in zip(loaded, generated):
        assert_same_scene(a, b)
        assert a.full_boxes is None


def test_load_scenes_detects_a_wrong_semantic_mask(tmp_path):
    root = make_scenes_dataset(tmp_path / "s", n_train=1, n_val=1, n_test=1)
    mask_path = root / "test" / "masks" / "test_00000.png"
    Image.fromarray(np.zeros((160, 160), np.uint8)).save(mask_path)
    with pytest.raises(DatasetError) as info:
        load_scenes(root, "test")
    assert str(info.value).startswith(str(mask_path))


def test_load_scenes_missing_split_says_how_to_make_it(tmp_path):
    with pytest.raises(DatasetError, match="make_scenes_dataset"):
        load_scenes(tmp_path, "train")
