"""YOLO files: ultralytics' own checker accepts what we write, it trains on it, and bad label
lines give errors that start with ``path:line``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cvhelpers.data.scenes import CLASS_NAMES, generate_scenes
from cvhelpers.data.validate import DatasetError
from cvhelpers.data.yolo import mask_to_polygon, read_yolo, write_yolo

pytestmark = pytest.mark.filterwarnings("ignore:.*__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def splits():
    return {"train": generate_scenes("train", 8, seed=5), "val": generate_scenes("val", 4, seed=5),
            "test": generate_scenes("test", 2, seed=5)}


@pytest.fixture(scope="module")
def box_yaml(splits, tmp_path_factory) -> Path:
    return write_yolo(splits, tmp_path_factory.mktemp("yolo_boxes"), CLASS_NAMES)


@pytest.fixture(scope="module")
def segment_yaml(splits, tmp_path_factory) -> Path:
    return write_yolo(splits, tmp_path_factory.mktemp("yolo_segments"), CLASS_NAMES, segments=True)


@pytest.fixture(scope="module")
def ultralytics_offline(tmp_path_factory):
    """Import ultralytics with every phone-home switched off (see shared/ENVIRONMENT.md), and
    give back afterwards what it changes for the rest of the session: torch's thread count,
    numpy's print options and OMP_NUM_THREADS."""
    pytest.importorskip("ultralytics")
    import matplotlib
    import torch

    config_dir = tmp_path_factory.mktemp("ultralytics_config")
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    (config_dir / "Ultralytics").mkdir()
    shutil.copy(font, config_dir / "Ultralytics" / "Arial.ttf")  # check_font asks GitHub otherwise
    threads, print_options = torch.get_num_threads(), np.get_printoptions()
    omp_threads = os.environ.get("OMP_NUM_THREADS")  # ultralytics sets it to 1 for child processes
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("YOLO_OFFLINE", "1")
        patch.setenv("YOLO_AUTOINSTALL", "0")
        patch.setenv("YOLO_CONFIG_DIR", str(config_dir))
        patch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")  # ultralytics imports albumentations
        import ultralytics.utils.checks
        from ultralytics.utils import SETTINGS

        # If another test imported ultralytics first, YOLO_CONFIG_DIR came too late: point
        # check_font at the copied font anyway.
        patch.setattr(ultralytics.utils.checks, "USER_CONFIG_DIR", config_dir / "Ultralytics")
        SETTINGS.update({"sync": False})
        yield
    torch.set_num_threads(threads)
    np.set_printoptions(**print_options)
    if omp_threads is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp_threads


# -------------------------------------------------------------------------- ultralytics' checker
def ultralytics_verify(data_yaml: Path, split: str) -> list[tuple]:
    """Run ultralytics' dataset checker and its per-image label verifier on one split."""
    from ultralytics.data.utils import check_det_dataset, img2label_paths, verify_image_label

    data = check_det_dataset(str(data_yaml), autodownload=False)
    assert data["nc"] == len(CLASS_NAMES) and list(data["names"].values()) == list(CLASS_NAMES)
    images = sorted(str(p) for p in Path(data[split]).glob("*.png"))
    results = []
    for image, label in zip(images, img2label_paths(images)):
        result = verify_image_label((image, label, "", False, data["nc"], 0, 0, False))
        missing, found, empty, corrupt, message = result[5:]
        assert (missing, found, corrupt, message) == (0, 1, 0, ""), message
        results.append(result)
    return results


def test_ultralytics_accepts_boxes(ultralytics_offline, box_yaml, splits):
    for split in ("train", "val", "test"):
        results = ultralytics_verify(box_yaml, split)
        assert len(results) == len(splits[split]) > 0
        for result, scene in zip(results, splits[split]):
            labels = result[1]  # N x 5: cls, cx, cy, w, h normalised
            assert labels[:, 0].astype(int).tolist() == scene.labels.tolist()
            np.testing.assert_allclose(labels[:, 1:] * 160, _xywh(scene.boxes), atol=1e-3)


def test_ultralytics_accepts_segments(ultralytics_offline, segment_yaml, splits):
    results = ultralytics_verify(segment_yaml, "train")
    assert len(results) == len(splits["train"]) > 0
    for result, scene in zip(results, splits["train"]):
        assert len(result[3]) == len(scene.labels)  # one polygon per object
        np.testing.assert_allclose(result[1][:, 1:] * 160, _xywh(scene.boxes), atol=1.01)


def _xywh(boxes: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = boxes.T
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], 1)


@pytest.mark.slow
def test_ultralytics_trains_on_it(ultralytics_offline, box_yaml, tmp_path):
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    metrics = model.train(data=str(box_yaml), epochs=1, imgsz=64, batch=4, workers=0, device="cpu",
                          project=str(tmp_path), name="run", plots=False, val=True, amp=False,
                          verbose=False)
    assert (tmp_path / "run" / "weights" / "last.pt").is_file()
    assert metrics is not None and 0.0 <= metrics.box.map50 <= 1.0
    assert not Path("runs").exists() or "run" not in os.listdir("runs")  # nothing written to cwd


# ----------------------------------------------------------------------------------- reading
def test_read_yolo_boxes_round_trip(box_yaml, splits):
    samples, names = read_yolo(box_yaml, "val")
    assert names == list(CLASS_NAMES) and len(samples) == len(splits["val"]) > 0
    for sample, scene in zip(samples, splits["val"]):
        assert sample.file_name == scene.file_name and sample.masks is None
        np.testing.assert_array_equal(sample.image, scene.image)
        np.testing.assert_array_equal(sample.labels, scene.labels)
        np.testing.assert_allclose(sample.boxes, scene.boxes, atol=1e-3)


def test_read_yolo_segments_round_trip(segment_yaml, splits):
    samples, _ = read_yolo(segment_yaml, "train")
    assert len(samples) == len(splits["train"]) > 0
    for sample, scene in zip(samples, splits["train"]):
        np.testing.assert_allclose(sample.boxes, scene.boxes, atol=1.01)
        assert len(sample.masks) == len(scene.masks) > 0
        for mask, truth in zip(sample.masks, scene.masks):
            iou = (mask & truth).sum() / (mask | truth).sum()
            assert iou > 0.75, iou


def test_polygon_joins_separate_parts():
    from pycocotools import mask as mask_utils

    mask = np.zeros((30, 40), bool)
    mask[2:10, 2:12] = True
    mask[15:28, 20:38] = True
    polygon = mask_to_polygon(mask)
    drawn = mask_utils.decode(mask_utils.frPyObjects([polygon.reshape(-1).tolist()], 30, 40))[..., 0]
    assert drawn[5, 6] and drawn[20, 30] and not drawn[20, 5]


# --------------------------------------------------------------------------------- bad labels
def yolo_with_label(tmp_path: Path, text: str, split_scenes=None) -> tuple[Path, Path]:
    scenes = split_scenes or generate_scenes("val", 1, seed=9)
    data_yaml = write_yolo({"train": scenes, "val": scenes}, tmp_path / "d", CLASS_NAMES)
    label = tmp_path / "d" / "labels" / "val" / "val_00000.txt"
    label.write_text(text)
    return data_yaml, label


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("0 0.5 0.5 0.2\n", 1, "4 fields"),
        ("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2 0.3\n", 2, "6 fields"),
        ("0 0.5 0.5 0.2 0.2\n\n7 0.5 0.5 0.2 0.2\n", 3, "class id 7"),
        ("-1 0.5 0.5 0.2 0.2\n", 1, "class id -1"),
        ("0.5 0.5 0.5 0.2 0.2\n", 1, "not an integer"),
        ("1 x 0.5 0.2 0.2\n", 1, "not a number"),
        ("0 80 80 20 20\n", 1, "outside [0, 1]"),
        ("0 0.5 1.2 0.2 0.2\n", 1, "outside [0, 1]"),
        ("0 0.5 0.5 0 0.2\n", 1, "zero"),
        ("0 0.5 0.5 0.2 0.0\n", 1, "zero"),
        ("0 0.05 0.5 0.5 0.2\n", 1, "outside the 160x160 image"),
        ("2 0.1 0.1 0.5 0.5 0.3 0.3 0.4\n", 1, "8 fields"),
        ("2 0.1 0.1\n", 1, "at least 3"),
        ("2 0.1 0.1 0.5 0.5 0.3 0.3\n0 0.5 0.5 0.2 0.2\n", 2, "mixes"),
    ],
)
def test_bad_label_line(tmp_path, text, line, words):
    data_yaml, label = yolo_with_label(tmp_path, text)
    with pytest.raises(DatasetError) as info:
        read_yolo(data_yaml, "val")
    message = str(info.value)
    assert message.startswith(f"{label}:{line}: "), message
    assert words in message, message


def test_label_without_image(tmp_path):
    data_yaml, label = yolo_with_label(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    orphan = label.with_name("lost.txt")
    orphan.write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DatasetError) as info:
        read_yolo(data_yaml, "val")
    assert str(info.value).startswith(str(orphan))


def test_image_without_label_is_background_by_default(tmp_path):
    data_yaml, label = yolo_with_label(tmp_path, "")
    label.unlink()
    samples, _ = read_yolo(data_yaml, "val")
    assert samples[0].boxes.shape == (0, 4) and samples[0].labels.shape == (0,)
    with pytest.raises(DatasetError) as info:
        read_yolo(data_yaml, "val", allow_unlabelled=False)
    image = tmp_path / "d" / "images" / "val" / "val_00000.png"
    assert str(info.value).startswith(str(image))


def test_empty_label_file_is_background(tmp_path):
    data_yaml, _ = yolo_with_label(tmp_path, "\n")
    assert len(read_yolo(data_yaml, "val")[0][0].labels) == 0
