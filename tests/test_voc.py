"""Pascal VOC XML: round trips, the devkit's 1-based pixels, a clear error for every bad file, and
the VOC export that Debian's labelme-examples ships (written by labelme, not by us) against the
COCO export of the same three photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from cvhelpers.data.scenes import CLASS_NAMES, generate_scenes
from cvhelpers.data.validate import DatasetError
from cvhelpers.data.voc import read_voc, read_voc_file, write_voc, write_voc_dataset

LABELME = Path("/usr/share/doc/labelme-examples/examples")
LABELME_VOC = LABELME / "bbox_detection" / "data_dataset_voc"


@pytest.fixture
def scenes():
    return generate_scenes("test", 4, seed=5, photo_backgrounds=False)


def test_round_trip_keeps_boxes_labels_flags_and_pixels(tmp_path, scenes):
    scenes[0].difficult = np.arange(len(scenes[0].labels)) == 0
    scenes[0].truncated = np.arange(len(scenes[0].labels)) == len(scenes[0].labels) - 1
    root = write_voc_dataset(scenes, tmp_path / "voc", CLASS_NAMES)
    samples, names = read_voc(root)
    assert names == list(CLASS_NAMES)
    assert [s.file_name for s in samples] == sorted(s.file_name for s in scenes)
    by_name = {s.file_name: s for s in scenes}
    for sample in samples:
        original = by_name[sample.file_name]
        np.testing.assert_array_equal(sample.image, original.image)
        np.testing.assert_allclose(sample.boxes, original.boxes, atol=1e-4)
        np.testing.assert_array_equal(sample.labels, original.labels)
        assert sample.masks is None
    first = next(s for s in samples if s.file_name == scenes[0].file_name)
    np.testing.assert_array_equal(first.difficult, scenes[0].difficult)
    np.testing.assert_array_equal(first.truncated, scenes[0].truncated)


def test_class_names_default_to_the_names_found(tmp_path, scenes):
    root = write_voc_dataset(scenes, tmp_path / "voc", CLASS_NAMES)
    (root / "class_names.txt").unlink()
    _, names = read_voc(root)
    assert names == sorted({CLASS_NAMES[int(k)] for s in scenes for k in s.labels})


def _voc_xml(tmp_path: Path, objects: str, size: str = "<width>20</width><height>10</height>",
             filename: str = "a.png") -> Path:
    from PIL import Image

    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "a.png")
    xml = tmp_path / "a.xml"
    xml.write_text(f"<annotation><filename>{filename}</filename><size>{size}<depth>3</depth></size>{objects}</annotation>")
    return xml


def _object(name="cat", box=(1, 2, 5, 6), difficult="0") -> str:
    coords = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{coords}</bndbox></object>"


def test_one_based_devkit_pixels_become_zero_based_exclusive(tmp_path):
    xml = _voc_xml(tmp_path, _object(box=(1, 1, 20, 10)))  # the devkit's whole 20x10 image
    sample = read_voc_file(xml, tmp_path, ["cat"], one_based=True)
    np.testing.assert_array_equal(sample.boxes, [[0, 0, 20, 10]])
    np.testing.assert_array_equal(read_voc_file(xml, tmp_path, ["cat"]).boxes, [[1, 1, 20, 10]])


@pytest.mark.parametrize("objects, size, filename, message", [
    (_object(name="dog"), None, "a.png", r"<object> 0: class 'dog' is not one of"),
    (_object(box=(1, 2, "five", 6)), None, "a.png", r"<object> 0 \(cat\) <bndbox>: <xmax> is 'five', not a number"),
    (_object(box=(1, 2, 25, 6)), None, "a.png", r"<object> 0 \(cat\): box 0 .* outside the 20x10 image"),
    (_object(box=(5, 2, 5, 6)), None, "a.png", r"degenerate"),
    (_object(difficult="yes"), None, "a.png", r"<difficult> is 'yes', expected 0 or 1"),
    ("<object><name>cat</name></object>", None, "a.png", r"<object> 0 \(cat\): <bndbox> is missing"),
    ("<object><bndbox/></object>", None, "a.png", r"<object> 0: <name> is missing"),
    (_object(), "<width>30</width><height>10</height>", "a.png", r"<size> says 30x10 but .*a.png is 20x10"),
    (_object(), None, "b.png", r"<filename> 'b.png': image file .*b.png not found"),
    (_object(), None, "", r"<filename> is missing or empty"),
])
def test_bad_files_name_the_file_and_the_element(tmp_path, objects, size, filename, message):
    xml = _voc_xml(tmp_path, objects, size or "<width>20</width><height>10</height>", filename)
    with pytest.raises(DatasetError, match=message) as error:
        read_voc_file(xml, tmp_path, ["cat"])
    assert str(error.value).startswith(str(xml))


def test_malformed_xml_and_missing_files(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><filename>a.png</filename>")
    with pytest.raises(DatasetError, match=r"bad.xml: not well-formed XML \(.*line 1"):
        read_voc_file(bad, tmp_path, ["cat"])
    with pytest.raises(DatasetError, match="annotation file not found"):
        read_voc_file(tmp_path / "missing.xml", tmp_path, ["cat"])
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(DatasetError, match="no .xml annotation files"):
        read_voc(tmp_path / "JPEGImages", images_dir=tmp_path / "JPEGImages")
    with pytest.raises(DatasetError, match="images folder not found"):
        read_voc(tmp_path / "nowhere")


def test_writer_refuses_a_sample_without_a_file_name(tmp_path, scenes):
    scenes[0].file_name = ""
    with pytest.raises(ValueError, match="file_name"):
        write_voc_dataset(scenes[:1], tmp_path, CLASS_NAMES)
    path = write_voc(scenes[1], tmp_path / "one.xml", CLASS_NAMES)
    assert path.read_text().startswith("<?xml")
    # read by the standard library's parser, not ours: the boxes as written, the classes by name
    import xml.etree.ElementTree as ET

    objects = ET.parse(path).getroot().findall("object")
    assert [o.findtext("name") for o in objects] == [CLASS_NAMES[k] for k in scenes[1].labels]
    written = [[float(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")] for o in objects]
    np.testing.assert_allclose(written, scenes[1].boxes)


@pytest.mark.skipif(not LABELME_VOC.is_dir(), reason="Debian's labelme-examples is not installed")
def test_labelme_voc_export_matches_its_coco_export_of_the_same_photos():
    """labelme's two examples label the same three VOC photos separately: rectangles (the VOC
    export) and polygons (the COCO export). Same photos and class list; every rectangle has a
    polygon of its class whose box overlaps it at IoU >= 0.75 (the smallest here is 0.80); the
    polygon set also has a bottle, a chair and a sofa that the rectangle set leaves out."""
    from cvhelpers.segmentation.instances import LABELME_COCO, read_labelme_coco

    voc, voc_names = read_voc(LABELME_VOC)
    coco, coco_names = read_labelme_coco(LABELME_COCO)
    assert voc_names == [n for n in coco_names if n != "_background_"]
    by_file = {Path(s.file_name).name: s for s in coco}
    assert sorted(s.file_name for s in voc) == sorted(by_file) == ["2011_000003.jpg", "2011_000006.jpg", "2011_000025.jpg"]
    matched = 0
    for sample in voc:
        other = by_file[sample.file_name]
        np.testing.assert_array_equal(sample.image, other.image)  # the same photo, pixel for pixel
        iou = box_iou(torch.tensor(sample.boxes), torch.tensor(other.boxes)).numpy()
        same_class = np.array([[voc_names[a] == coco_names[b] for b in other.labels] for a in sample.labels])
        best = np.where(same_class, iou, 0).max(axis=1)
        assert (best >= 0.75).all(), (sample.file_name, best)
        assert len(set(np.where(same_class, iou, 0).argmax(axis=1))) == len(sample.labels)  # distinct partners
        matched += len(sample.labels)
    assert matched == 9 and sum(len(s.labels) for s in coco) == 12


def test_fuzz_every_element_wrong_or_missing_gives_only_dataset_errors(tmp_path):
    """Structure-aware fuzz: each element of a valid file, in turn given a wrong value or
    removed. Reading then either works or raises DatasetError, never another exception."""
    import random
    import xml.etree.ElementTree as ET

    xml = _voc_xml(tmp_path, _object() + _object(box=(3, 1, 9, 8)))
    valid = ET.parse(xml)
    elements = list(valid.getroot().iter())
    wrong = ["", " ", "-1", "1e40", "nan", "inf", "x", "0x10", "1.5", "99999", "cat", "a.png", "../a.png", "\u00ff"]
    rng = random.Random(0)
    outcomes = {"read": 0, "DatasetError": 0}
    for index in range(1, len(elements)):
        for mutation in ["remove", *rng.sample(wrong, 6)]:
            tree = ET.parse(xml)
            target = list(tree.getroot().iter())[index]
            if mutation == "remove":
                parent = next(p for p in tree.getroot().iter() if target in list(p))
                parent.remove(target)
            else:
                target.text = mutation
            case = tmp_path / "case.xml"
            tree.write(case)
            try:
                read_voc_file(case, tmp_path, ["cat"])
                outcomes["read"] += 1
            except DatasetError:
                outcomes["DatasetError"] += 1
    assert outcomes["DatasetError"] > outcomes["read"] > 0
