"""COCO mAP step by step (ours) against pycocotools' COCOeval and torchmetrics'
MeanAveragePrecision, on randomised cases with crowd regions and empty images."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from torchmetrics.detection import MeanAveragePrecision

from cvhelpers.detection.coco_eval import (evaluate_coco, evaluate_detections, summary_keys, to_coco_results)
from cvhelpers.data.coco import AnnotatedImage, write_coco
from cvhelpers.detection.analysis import simulate_detections
from cvhelpers.detection.metrics import IOU_THRESHOLDS, RECALL_THRESHOLDS, Detections

pytestmark = pytest.mark.filterwarnings("ignore:.*__array__ implementation:DeprecationWarning")

NUM_CLASSES = 3
NAMES = ["a", "b", "c"]
TOLERANCE = 1e-3  # the bar; in practice the two agree to ~1e-15


def random_ground_truth(seed: int, n: int = 24, size: int = 240, masks: bool = False):
    """Images with 0-6 objects of 3 classes, 8-150 px (small, medium and large), ~10 % crowd;
    ~15 % of images are empty. Masks are ellipses inside the boxes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    samples = []
    for i in range(n):
        count = 0 if rng.random() < 0.15 else int(rng.integers(1, 7))
        boxes, object_masks = [], []
        for _ in range(count):
            w, h = rng.uniform(8, 150, 2)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            x1, y1, x2, y2 = np.round([x, y, x + w, y + h]).astype(int)
            boxes.append([x1, y1, x2, y2])
            if masks:
                cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
                object_masks.append(((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1)
        samples.append(AnnotatedImage(
            image=np.zeros((size, size, 3), np.uint8),
            boxes=np.array(boxes, np.float32).reshape(-1, 4),
            labels=rng.integers(0, NUM_CLASSES, count).astype(np.int64),
            masks=np.array(object_masks, bool).reshape(-1, size, size) if masks else None,
            file_name=f"{i:03d}.png", iscrowd=rng.random(count) < 0.1))
    return samples


def predictions_for(ground_truth, seed: int, masks: bool = False):
    return simulate_detections(ground_truth, seed=seed, box_noise=0.12, miss_rate=0.15,
                               false_positives_per_image=1.0, num_classes=NUM_CLASSES,
                               with_masks=masks)


def assert_same(ours: dict, reference: dict, keys=None, tolerance: float = TOLERANCE):
    for key in keys or summary_keys():
        a, b = ours[key], reference[key]
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tolerance, (key, a, b)


def case_has_everything(ground_truth) -> None:
    """The randomised cases must really contain what they claim to test."""
    crowd = np.concatenate([s.iscrowd for s in ground_truth])
    assert crowd.any() and (~crowd).any()
    assert any(len(s.labels) == 0 for s in ground_truth)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_boxes_match_pycocotools(seed):
    ground_truth = random_ground_truth(seed)
    case_has_everything(ground_truth)
    predictions = predictions_for(ground_truth, seed)
    ours = evaluate_detections(predictions, ground_truth, num_classes=NUM_CLASSES).summary(NAMES)
    reference = evaluate_coco(predictions, ground_truth, class_names=NAMES)
    assert_same(ours, reference)
    for per_class in ("per_class_ap50_95", "per_class_ap50"):
        assert ours[per_class] == pytest.approx(reference[per_class], abs=TOLERANCE)
    assert 0.2 < reference["map50"] < 0.95  # neither trivial nor hopeless
    assert not math.isnan(reference["map_large"]) and not math.isnan(reference["map_small"])


@pytest.mark.parametrize("seed", [0, 1])
def test_masks_match_pycocotools(seed):
    ground_truth = random_ground_truth(seed, n=16, masks=True)
    case_has_everything(ground_truth)
    predictions = predictions_for(ground_truth, seed, masks=True)
    ours = evaluate_detections(predictions, ground_truth, iou_type="segm",
                               num_classes=NUM_CLASSES).summary(NAMES)
    reference = evaluate_coco(predictions, ground_truth, class_names=NAMES, iou_type="segm")
    assert_same(ours, reference)
    assert reference["map50"] > 0.1


def torchmetrics_inputs(predictions, ground_truth, masks: bool = False):
    preds, targets = [], []
    for det, sample in zip(predictions, ground_truth):
        pred = {"boxes": torch.from_numpy(det.boxes), "scores": torch.from_numpy(det.scores),
                "labels": torch.from_numpy(det.labels)}
        target = {"boxes": torch.from_numpy(sample.boxes), "labels": torch.from_numpy(sample.labels),
                  "iscrowd": torch.from_numpy(sample.iscrowd.astype(np.int64))}
        if masks:
            pred["masks"] = torch.from_numpy(det.masks)
            target["masks"] = torch.from_numpy(sample.masks)
        preds.append(pred)
        targets.append(target)
    return preds, targets


TORCHMETRICS_KEYS = {"map50_95": "map", "map50": "map_50", "map75": "map_75",
                     "map_small": "map_small", "map_medium": "map_medium", "map_large": "map_large",
                     "mar_1": "mar_1", "mar_10": "mar_10", "mar_100": "mar_100",
                     "mar_small": "mar_small", "mar_medium": "mar_medium", "mar_large": "mar_large"}


@pytest.mark.parametrize("iou_type,seed", [("bbox", 0), ("bbox", 1), ("segm", 2)])
def test_matches_torchmetrics_mean_average_precision(iou_type, seed):
    masks = iou_type == "segm"
    ground_truth = random_ground_truth(seed, n=16, masks=masks)
    predictions = predictions_for(ground_truth, seed, masks=masks)
    # torchmetrics' default thresholds come from a float32 torch.linspace (0.3 becomes
    # 0.30000001), which moves AP by up to ~0.003 whenever a recall lands exactly on a level;
    # pycocotools' own float64 thresholds make the comparison exact.
    metric = MeanAveragePrecision(box_format="xyxy", iou_type=iou_type, class_metrics=True,
                                  backend="pycocotools", iou_thresholds=IOU_THRESHOLDS.tolist(),
                                  rec_thresholds=RECALL_THRESHOLDS.tolist())
    metric.update(*torchmetrics_inputs(predictions, ground_truth, masks))
    theirs = metric.compute()
    ours = evaluate_detections(predictions, ground_truth, iou_type=iou_type,
                               num_classes=NUM_CLASSES).summary()
    for key, their_key in TORCHMETRICS_KEYS.items():
        value = float(theirs[their_key])
        value = float("nan") if value == -1 else value
        assert (math.isnan(value) and math.isnan(ours[key])) or abs(value - ours[key]) <= TOLERANCE, key
    per_class = dict(zip(theirs["classes"].tolist(), theirs["map_per_class"].tolist()))
    for k, ap in per_class.items():
        assert ap == pytest.approx(ours["per_class_ap50_95"][str(k)], abs=TOLERANCE)


@pytest.mark.skipif(importlib.util.find_spec("faster_coco_eval") is None,
                    reason="faster-coco-eval is not installed (not pinned in requirements.txt)")
def test_torchmetrics_faster_coco_eval_backend_agrees():  # pragma: no cover - not installed here
    ground_truth = random_ground_truth(5)
    predictions = predictions_for(ground_truth, 5)
    metric = MeanAveragePrecision(iou_type="bbox", backend="faster_coco_eval")
    metric.update(*torchmetrics_inputs(predictions, ground_truth))
    ours = evaluate_detections(predictions, ground_truth, num_classes=NUM_CLASSES).summary()
    assert float(metric.compute()["map"]) == pytest.approx(ours["map50_95"], abs=TOLERANCE)


def test_a_coco_file_gives_the_same_numbers_as_memory(tmp_path):
    ground_truth = random_ground_truth(7, n=10, masks=True)
    predictions = predictions_for(ground_truth, 7, masks=True)
    path = tmp_path / "annotations.json"
    write_coco(ground_truth, path, NAMES, tmp_path / "images", write_images=False)
    for iou_type in ("bbox", "segm"):
        from_file = evaluate_coco(predictions, path, iou_type=iou_type)
        in_memory = evaluate_coco(predictions, ground_truth, class_names=NAMES, iou_type=iou_type)
        assert_same(from_file, in_memory, tolerance=0.0)


def test_perfect_predictions_score_one_and_absent_sizes_are_nan():
    ground_truth = random_ground_truth(8, n=6)
    perfect = [Detections(s.boxes[~s.iscrowd], np.ones((~s.iscrowd).sum(), np.float32),
                          s.labels[~s.iscrowd]) for s in ground_truth]
    for result in (evaluate_coco(perfect, ground_truth, class_names=NAMES),
                   evaluate_detections(perfect, ground_truth, num_classes=NUM_CLASSES).summary(NAMES)):
        assert result["map50_95"] == pytest.approx(1.0) and result["mar_100"] == pytest.approx(1.0)
    tiny = [AnnotatedImage(np.zeros((50, 50, 3), np.uint8), np.array([[1, 1, 9, 9]], np.float32),
                           np.array([0]), file_name="t.png")]
    result = evaluate_detections([perfect[0].__class__(tiny[0].boxes, np.ones(1), tiny[0].labels)], tiny)
    summary = result.summary()
    assert summary["map_small"] == 1.0 and math.isnan(summary["map_large"])
    assert math.isnan(evaluate_coco([{"boxes": tiny[0].boxes, "scores": [1.0], "labels": [0]}],
                                    tiny)["map_large"])


def test_no_predictions_score_zero():
    ground_truth = random_ground_truth(9, n=5)
    empty = [Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))] * 5
    assert evaluate_coco(empty, ground_truth, class_names=NAMES)["map50"] == 0.0
    assert evaluate_detections(empty, ground_truth, num_classes=NUM_CLASSES).mean_ap(0.5) == 0.0


def test_results_format_and_errors():
    det = Detections(np.array([[1, 2, 11, 22]], np.float32), np.array([0.5], np.float32),
                     np.array([1]), np.ones((1, 30, 30), bool))
    (box_entry,) = to_coco_results([det], [42])
    assert box_entry == {"image_id": 42, "category_id": 2, "score": 0.5, "bbox": [1, 2, 10, 20]}
    (mask_entry,) = to_coco_results([det], [42], iou_type="segm")
    assert "bbox" not in mask_entry and isinstance(mask_entry["segmentation"]["counts"], str)
    with pytest.raises(ValueError, match="predictions for"):
        to_coco_results([det], [1, 2])
    with pytest.raises(ValueError, match="one per image"):
        evaluate_detections([det], [])
