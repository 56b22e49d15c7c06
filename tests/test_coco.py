"""COCO files: exact round trips checked by pycocotools itself, and clear errors on bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from cvhelpers.data.coco import AnnotatedImage, read_coco, write_coco
from cvhelpers.data.scenes import CLASS_NAMES, generate_scenes
from cvhelpers.data.validate import DatasetError

# pycocotools 2.0.11 under numpy 2 warns inside its own decode (annToMask).
pytestmark = pytest.mark.filterwarnings("ignore:.*__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes("val", 6, seed=2)


@pytest.fixture(scope="module")
def written(scenes, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("coco")
    write_coco(scenes, folder / "annotations.json", CLASS_NAMES, folder / "images")
    return folder / "annotations.json"


def tiny_coco(folder: Path, annotation: dict, size=(40, 30)) -> Path:
    """One 40x30 image and one annotation (fields merged into a valid default)."""
    (folder / "images").mkdir(exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(folder / "images" / "a.png")
    default = {"id": 7, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 0,
               "area": 100, "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]]}
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": size[0], "height": size[1]}],
        "annotations": [{**default, **annotation}],
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
    }
    path = folder / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


def error_for(json_path: Path, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        read_coco(json_path, json_path.parent / "images", **kwargs)
    message = str(info.value)
    assert message.startswith(str(json_path)), message
    return message


# ----------------------------------------------------------------------------- round trips
def test_pycocotools_reads_boxes_and_masks_exactly(scenes, written):
    coco = COCO(str(written))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES)
    assert len(coco.getImgIds()) == len(scenes) > 0
    for image_id, scene in zip(sorted(coco.getImgIds()), scenes):
        info = coco.loadImgs(image_id)[0]
        assert info["file_name"] == scene.file_name and (info["height"], info["width"]) == (160, 160)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert len(annotations) == len(scene.labels)
        for annotation, box, label, mask in zip(annotations, scene.boxes, scene.labels, scene.masks):
            assert annotation["category_id"] == label + 1
            x1, y1, x2, y2 = box.tolist()
            assert annotation["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), mask)
            # pycocotools' own box of the RLE agrees with our mask-derived box
            rle = coco.annToRLE(annotation)
            assert mask_utils.toBbox(rle).tolist() == annotation["bbox"]
            assert annotation["area"] == mask.sum() == mask_utils.area(rle)


def test_read_coco_round_trip(scenes, written):
    samples, names = read_coco(written, written.parent / "images")
    assert names == list(CLASS_NAMES) and len(samples) == len(scenes) > 0
    for sample, scene in zip(samples, scenes):
        assert isinstance(sample, AnnotatedImage) and sample.file_name == scene.file_name
        np.testing.assert_array_equal(sample.image, scene.image)
        assert sample.boxes.dtype == np.float32 and sample.labels.dtype == np.int64
        np.testing.assert_array_equal(sample.boxes, scene.boxes)
        np.testing.assert_array_equal(sample.labels, scene.labels)
        np.testing.assert_array_equal(sample.masks, scene.masks)
        np.testing.assert_array_equal(sample.semantic, scene.semantic)
        assert not sample.iscrowd.any()


def test_dict_samples_without_masks(tmp_path):
    sample = {"image": np.zeros((20, 30, 3), np.uint8), "boxes": [[1, 2, 11, 12]], "labels": [1],
              "file_name": "x.png"}
    coco = write_coco([sample], tmp_path / "a.json", ["a", "b"], tmp_path)
    assert coco["annotations"][0]["area"] == 100 and "segmentation" not in coco["annotations"][0]
    samples, _ = read_coco(tmp_path / "a.json", tmp_path)
    assert samples[0].masks is None and samples[0].labels.tolist() == [1]


def test_polygon_segmentation_is_rasterised_by_pycocotools(tmp_path):
    json_path = tiny_coco(tmp_path, {})
    samples, _ = read_coco(json_path, tmp_path / "images")
    expected = mask_utils.decode(mask_utils.frPyObjects([[5, 5, 15, 5, 15, 15, 5, 15]], 30, 40))[..., 0]
    np.testing.assert_array_equal(samples[0].masks[0], expected.astype(bool))
    assert 90 <= samples[0].masks[0].sum() <= 130


def test_crowd_with_uncompressed_rle(tmp_path):
    # COCO's RLE runs down the columns: rows 5-14 of columns 5-24, a 10 x 20 block (not square,
    # so a row-major decode would put it elsewhere)
    counts = [5 * 30 + 5, 10] + [20, 10] * 19 + [30 * 40 - (5 * 30 + 5) - 10 * 20 - 20 * 19]
    json_path = tiny_coco(tmp_path, {"iscrowd": 1, "segmentation": {"size": [30, 40], "counts": counts}})
    sample = read_coco(json_path, tmp_path / "images")[0][0]
    expected = np.zeros((30, 40), bool)
    expected[5:15, 5:25] = True
    assert sample.iscrowd.tolist() == [True]
    np.testing.assert_array_equal(sample.masks[0], expected)


def test_class_names_remap_sparse_category_ids(tmp_path):
    json_path = tiny_coco(tmp_path, {"category_id": 2})
    coco = json.loads(json_path.read_text())
    coco["categories"] = [{"id": 18, "name": "dog"}, {"id": 2, "name": "square"}]
    coco["annotations"][0]["category_id"] = 18
    json_path.write_text(json.dumps(coco))
    assert "class_names" in error_for(json_path)
    samples, names = read_coco(json_path, tmp_path / "images", class_names=["square", "dog"])
    assert names == ["square", "dog"] and samples[0].labels.tolist() == [1]


# --------------------------------------------------------------------------------- bad files
def test_missing_image_file(tmp_path):
    json_path = tiny_coco(tmp_path, {})
    (tmp_path / "images" / "a.png").unlink()
    message = error_for(json_path)
    assert "image id 1 'a.png'" in message and "not found" in message


def test_mask_size_mismatch(tmp_path):
    rle = mask_utils.encode(np.asfortranarray(np.ones((20, 40), np.uint8)))
    json_path = tiny_coco(tmp_path, {"segmentation": {"size": [20, 40], "counts": rle["counts"].decode()}})
    message = error_for(json_path)
    assert "annotation id 7 (image 'a.png')" in message and "mask size 40x20" in message


def test_polygon_with_fewer_than_three_points(tmp_path):
    json_path = tiny_coco(tmp_path, {"segmentation": [[5, 5, 15, 5]]})
    message = error_for(json_path)
    assert "annotation id 7" in message and "at least 3" in message


def test_unknown_category_id(tmp_path):
    message = error_for(tiny_coco(tmp_path, {"category_id": 9}))
    assert "annotation id 7" in message and "category_id 9" in message


def test_bbox_outside_image(tmp_path):
    message = error_for(tiny_coco(tmp_path, {"bbox": [30, 5, 20, 10]}))
    assert "annotation id 7 (image 'a.png')" in message and "outside the 40x30 image" in message


def test_image_size_differs_from_json(tmp_path):
    json_path = tiny_coco(tmp_path, {})
    Image.new("RGB", (30, 40)).save(tmp_path / "images" / "a.png")
    assert "40x30 in the JSON but 30x40" in error_for(json_path)


def test_unknown_image_id(tmp_path):
    assert "image_id 5" in error_for(tiny_coco(tmp_path, {"image_id": 5}))


def test_invalid_json(tmp_path):
    path = tmp_path / "annotations.json"
    path.write_text('{"images": [}')
    assert error_for(path).startswith(f"{path}:1: not valid JSON")


def test_corrupt_image_names_the_image(tmp_path):
    json_path = tiny_coco(tmp_path, {})
    (tmp_path / "images" / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError) as info:
        read_coco(json_path, tmp_path / "images")
    assert str(info.value).startswith(str(tmp_path / "images" / "a.png"))
