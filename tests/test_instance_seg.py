"""Instance-segmentation helpers: drawing, filtering and the real labelme/VOC example."""

import numpy as np
import pytest

from cvhelpers.segmentation.instances import (draw_instances, find_labelme_coco, instance_map, keep_confident, read_labelme_coco)


def test_instance_map_and_drawing():
    masks = np.zeros((2, 6, 6), bool)
    masks[0, :3] = True
    masks[1, 2:] = True  # overlaps row 2: the later instance wins
    assert instance_map(masks)[:, 0].tolist() == [1, 1, 2, 2, 2, 2]
    image = np.zeros((6, 6, 3), np.uint8)
    shown = draw_instances(image, masks)
    assert shown.shape == (6, 6, 3) and not np.array_equal(shown[0, 0], shown[5, 5])
    assert draw_instances(image, np.zeros((0, 6, 6), bool)).sum() == 0


def test_keep_confident():
    prediction = {"scores": np.array([0.9, 0.2]), "labels": np.array([1, 2]), "masks": np.zeros((2, 4, 4), bool)}
    kept = keep_confident(prediction, 0.5)
    assert kept["labels"].tolist() == [1] and kept["masks"].shape == (1, 4, 4)


def test_real_labelme_voc_photos_load_through_our_coco_reader():
    path = find_labelme_coco()
    if path is None:
        pytest.skip("Debian package labelme-examples not installed")
    samples, names = read_labelme_coco(path)
    assert names[0] == "_background_" and "person" in names
    assert len(samples) == 3
    for sample in samples:
        assert sample.masks is not None and sample.masks.shape[1:] == sample.image.shape[:2]
        assert sample.masks.any(axis=(1, 2)).all()  # every polygon drew pixels
        boxes_from_masks = np.array([[np.nonzero(m)[1].min(), np.nonzero(m)[0].min(),
                                      np.nonzero(m)[1].max() + 1, np.nonzero(m)[0].max() + 1] for m in sample.masks])
        assert np.abs(boxes_from_masks - sample.boxes).max() <= 2  # all four edges of the boxes agree with the masks
