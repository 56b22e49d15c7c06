"""The real-objects benchmark: Fashion-MNIST product photos cut out by their silhouettes on real
photos. Deterministic, honest labels (visible boxes and masks), no object shared between splits,
and files that the course's COCO reader, pycocotools and ultralytics' own dataset check accept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import masks_to_boxes as tv_masks_to_boxes

from cvhelpers.data.coco import read_coco
from cvhelpers.data.fashion_mnist import find_fashion_mnist, load_fashion_mnist
from cvhelpers.data.objects import (CLASS_NAMES, VAL_POOL, generate_object_scene, generate_object_scenes,
                                    make_objects_dataset, object_pools, silhouette)
from cvhelpers.data.scenes import load_scenes

import test_yolo  # its fixture, ultralytics with its phone-home switched off

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets"
ultralytics_offline = test_yolo.ultralytics_offline
pytestmark = pytest.mark.skipif(find_fashion_mnist(DATA) is None, reason="Fashion-MNIST not prepared (make data)")


@pytest.fixture(scope="module")
def pools():
    return object_pools(DATA)


def test_pools_are_disjoint_and_test_comes_from_the_test_split(pools):
    assert pools["test"].source_split == "test" and len(pools["test"].labels) == 10_000
    assert len(pools["val"].labels) == VAL_POOL and len(pools["train"].labels) == 60_000 - VAL_POOL
    assert len(np.intersect1d(pools["train"].indices, pools["val"].indices)) == 0
    images, labels = load_fashion_mnist(DATA, "train")
    k = 123
    np.testing.assert_array_equal(pools["val"].images[k], images[pools["val"].indices[k]])
    assert pools["val"].labels[k] == labels[pools["val"].indices[k]]
    # the test pool's photos are Fashion-MNIST's test photos, none of which is a training photo
    test_images, test_labels = load_fashion_mnist(DATA, "test")
    np.testing.assert_array_equal(pools["test"].images, test_images)
    np.testing.assert_array_equal(pools["test"].labels, test_labels)
    training_photos = {photo.tobytes() for photo in pools["train"].images}
    assert not any(photo.tobytes() in training_photos for photo in pools["test"].images)


def test_silhouette_is_the_product_with_its_holes_filled():
    photo = np.zeros((28, 28), np.uint8)
    photo[4:24, 6:22] = 200
    photo[10:14, 10:14] = 0  # a dark print inside the garment
    mask = silhouette(photo)
    assert mask[4:24, 6:22].all() and mask.sum() == 20 * 16


def test_scenes_are_deterministic_and_labels_honest(pools):
    a, sources = generate_object_scene("train", 5, pools["train"], seed=0)
    b, _ = generate_object_scene("train", 5, pools["train"], seed=0)
    np.testing.assert_array_equal(a.image, b.image)
    scenes, all_sources = generate_object_scenes("train", 30, pools["train"], seed=0)
    np.testing.assert_array_equal(scenes[5].image, a.image)  # image i does not depend on how many are made
    assert all_sources[5] == sources
    counts = []
    for scene, picks in zip(scenes, all_sources):
        assert scene.image.shape == (160, 160, 3) and 1 <= len(scene.labels) <= 4
        # boxes = the visible part, by torchvision's reference (inclusive max; ours are exclusive edges)
        reference = tv_masks_to_boxes(torch.from_numpy(scene.masks)).numpy() + np.array([0, 0, 1, 1], np.float32)
        np.testing.assert_array_equal(scene.boxes, reference)
        visible = scene.masks.sum((1, 2)) / scene.full_areas
        assert (visible >= 0.5).all()  # no object hidden by more than half
        longest = np.maximum(scene.full_boxes[:, 2] - scene.full_boxes[:, 0], scene.full_boxes[:, 3] - scene.full_boxes[:, 1])
        assert ((longest >= 20) & (longest <= 76)).all()  # 24-72 px, give or take the silhouette's resampling
        np.testing.assert_array_equal(scene.labels, pools["train"].labels[picks])  # label = the photo's class
        counts.append(len(scene.labels))
    assert len(set(counts)) > 1


def test_the_dataset_on_disk_reads_back_and_keeps_the_splits_apart(tmp_path):
    root = make_objects_dataset(tmp_path / "objects", fashion_root=DATA, n_train=12, n_val=4, n_test=4)
    meta = json.loads((root / "meta.json").read_text())
    assert make_objects_dataset(root, fashion_root=DATA, n_train=12, n_val=4, n_test=4) == root
    assert json.loads((root / "meta.json").read_text()) == meta  # idempotent: nothing rewritten
    used = {}
    for split in ("train", "val", "test"):
        samples, names = read_coco(root / split / "annotations.json", root / split / "images")
        assert names == list(CLASS_NAMES) and len(samples) == {"train": 12, "val": 4, "test": 4}[split]
        sources = json.loads((root / split / "sources.json").read_text())
        used[split] = (sources["fashion_mnist_split"],
                       {i for s in samples for i in sources["objects"][s.file_name]})
        assert sum(len(s.labels) for s in samples) == sum(len(v) for v in sources["objects"].values())
    assert used["test"][0] == "test" and used["train"][0] == used["val"][0] == "train"
    assert not used["train"][1] & used["val"][1]
    scenes = load_scenes(root, "val")  # the lessons' reader: class names with spaces ("Ankle boot") survive
    assert len(scenes) == 4 and all(len(s.masks) == len(s.labels) for s in scenes)


def test_pycocotools_accepts_the_files(tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    root = make_objects_dataset(tmp_path / "objects", fashion_root=DATA, n_train=4, n_val=3, n_test=3)
    coco = COCO(str(root / "val" / "annotations.json"))
    assert len(coco.getImgIds()) == 3 and [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES)
    scenes = {s.file_name: s for s in load_scenes(root, "val")}
    decoded = 0
    for image in coco.loadImgs(coco.getImgIds()):  # pycocotools decodes each mask to the generator's own
        scene = scenes[Path(image["file_name"]).name]
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=image["id"])), key=lambda a: a["id"])
        assert len(anns) == len(scene.masks)
        for ann, mask in zip(anns, scene.masks):
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
            assert ann["area"] == mask.sum()
            decoded += 1
    assert decoded >= 3


def test_ultralytics_own_checker_accepts_the_objects_as_yolo(ultralytics_offline, tmp_path, pools):
    from ultralytics.data.utils import check_det_dataset, img2label_paths, verify_image_label

    from cvhelpers.data.yolo import write_yolo

    splits = {s: generate_object_scenes(s, 5, pools[s])[0] for s in ("train", "val")}
    data = check_det_dataset(str(write_yolo(splits, tmp_path / "yolo", CLASS_NAMES, segments=True)), autodownload=False)
    assert data["nc"] == 10 and list(data["names"].values()) == list(CLASS_NAMES)
    images = sorted(str(p) for p in Path(data["val"]).glob("*.png"))
    assert len(images) == 5
    for image, label, scene in zip(images, img2label_paths(images), splits["val"]):
        result = verify_image_label((image, label, "", False, data["nc"], 0, 0, False))
        missing, found, _, corrupt, message = result[5:]
        assert (missing, found, corrupt, message) == (0, 1, 0, ""), message
        assert result[1][:, 0].astype(int).tolist() == scene.labels.tolist()
