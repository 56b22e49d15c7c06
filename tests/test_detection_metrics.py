"""IoU, matching, precision-recall and AP checked against torchvision, pycocotools, scikit-learn
and hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from sklearn.metrics import precision_recall_curve as sk_precision_recall_curve
from torchvision.ops import box_iou as tv_box_iou

from cvhelpers.detection.metrics import (RECALL_THRESHOLDS, Detections, as_detections, as_ground_truth, average_precision, mask_iou, match_predictions, precision_envelope, precision_recall_curve)
from cvhelpers.detection.boxes import box_iou

pytestmark = pytest.mark.filterwarnings("ignore:.*__array__ implementation:DeprecationWarning")


def random_boxes(rng: np.random.Generator, n: int, size: float = 100.0) -> np.ndarray:
    xy = rng.uniform(0, size * 0.8, (n, 2))
    wh = rng.uniform(1, size * 0.4, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def to_xywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)


# ------------------------------------------------------------------------------------------ IoU
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_iou_matches_torchvision(seed):
    rng = np.random.default_rng(seed)
    a, b = random_boxes(rng, 13), random_boxes(rng, 9)
    a[0] = b[0]  # identical boxes: IoU 1
    ours = box_iou(a, b)
    expected = tv_box_iou(torch.from_numpy(a).double(), torch.from_numpy(b).double()).numpy()
    assert ours.shape == (13, 9) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, expected, atol=1e-12)
    assert ours[0, 0] == pytest.approx(1.0)
    assert ((ours >= 0) & (ours <= 1)).all() and (ours == 0).any()  # some pairs do not touch


@pytest.mark.parametrize("seed", [0, 1])
def test_box_iou_with_crowd_matches_pycocotools(seed):
    rng = np.random.default_rng(seed)
    a, b = random_boxes(rng, 7), random_boxes(rng, 5)
    crowd = np.array([False, True, False, True, False])
    ours = box_iou(a, b, crowd)
    expected = mask_utils.iou(to_xywh(a), to_xywh(b), crowd.astype(np.uint8).tolist())
    np.testing.assert_allclose(ours, expected, atol=1e-6)  # pycocotools' xywh round trip


def random_masks(rng: np.random.Generator, n: int, size: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        cx, cy, r = rng.uniform(8, size - 8, 2).tolist() + [rng.uniform(3, 14)]
        masks[i] = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    return masks


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_iou_matches_pycocotools(seed):
    rng = np.random.default_rng(seed)
    a, b = random_masks(rng, 6), random_masks(rng, 4)
    b[3] = False  # an empty mask: IoU 0 with everything
    crowd = np.array([False, True, False, False])
    rle_a = mask_utils.encode(np.asfortranarray(a.transpose(1, 2, 0).astype(np.uint8)))
    rle_b = mask_utils.encode(np.asfortranarray(b.transpose(1, 2, 0).astype(np.uint8)))
    for flags in (np.zeros(4, bool), crowd):
        expected = mask_utils.iou(rle_a, rle_b, flags.astype(np.uint8).tolist())
        np.testing.assert_allclose(mask_iou(a, b, flags), expected, atol=1e-12)
    assert (mask_iou(a, b)[:, 3] == 0).all()


def test_mask_iou_of_filled_boxes_equals_box_iou():
    rng = np.random.default_rng(3)
    boxes = np.round(random_boxes(rng, 5, size=60))
    masks = np.zeros((5, 60, 60), bool)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
        m[y1:y2, x1:x2] = True  # x2, y2 are exclusive edges
    np.testing.assert_allclose(mask_iou(masks, masks), box_iou(boxes, boxes), atol=1e-12)


def test_inputs_accept_torch_dicts_and_threshold_float_masks():
    prediction = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]),
                  "labels": torch.tensor([2]), "masks": torch.full((1, 1, 4, 5), 0.7)}
    det = as_detections(prediction)
    assert det.boxes.dtype == np.float32 and det.labels.tolist() == [2]
    assert det.masks.shape == (1, 4, 5) and det.masks.dtype == bool and det.masks.all()
    with pytest.raises(ValueError, match="each prediction needs one"):
        as_detections({"boxes": np.zeros((2, 4)), "scores": [0.1], "labels": [0]})
    gt = as_ground_truth({"boxes": [[0, 0, 4, 5]], "labels": [1]})
    assert gt.areas.tolist() == [20.0] and gt.crowd.tolist() == [False]


# ------------------------------------------------------------------------------------ matching
def test_matching_takes_the_best_free_object_and_rejects_duplicates():
    # predictions sorted by score; both overlap object 0 most
    ious = np.array([[0.9, 0.2], [0.8, 0.6], [0.7, 0.1]])
    matched, ignored = match_predictions(ious, 0.5)
    assert matched.tolist() == [0, 1, -1]  # the second falls back to object 1, the third is a duplicate
    assert not ignored.any()
    matched, _ = match_predictions(ious, 0.65)
    assert matched.tolist() == [0, -1, -1]


def test_matching_prefers_regular_objects_and_lets_crowds_absorb_many():
    ious = np.array([[0.7, 0.95], [0.6, 0.9], [0.1, 0.8]])
    crowd = np.array([False, True])
    matched, ignored = match_predictions(ious, 0.5, gt_crowd=crowd)
    # first takes the regular object although the crowd overlaps more; the others fall on the crowd
    assert matched.tolist() == [0, 1, 1]
    assert ignored.tolist() == [False, True, True]


def test_matching_with_no_ground_truth_or_no_predictions():
    matched, ignored = match_predictions(np.zeros((3, 0)), 0.5)
    assert matched.tolist() == [-1, -1, -1] and not ignored.any()
    assert match_predictions(np.zeros((0, 2)), 0.5)[0].shape == (0,)


# ------------------------------------------------------------------------------- PR curve and AP
def test_precision_recall_and_ap_by_hand():
    # 3 objects; predictions by score: hit, miss, hit
    precision, recall, scores = precision_recall_curve([0.9, 0.7, 0.8], [True, True, False], 3)
    assert scores.tolist() == [0.9, 0.8, 0.7]
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3])
    np.testing.assert_allclose(precision_envelope(precision), [1, 2 / 3, 2 / 3])
    # recall levels 0.00..0.33 read 1.0 (34 levels), 0.34..0.66 read 2/3 (33), the rest 0
    assert average_precision(precision, recall) == pytest.approx((34 + 33 * 2 / 3) / 101)
    assert average_precision([], []) == 0.0
    assert average_precision([1.0], [1.0]) == 1.0
    assert len(RECALL_THRESHOLDS) == 101


@pytest.mark.parametrize("seed", [0, 1])
def test_precision_recall_curve_matches_sklearn_when_every_object_is_predicted(seed):
    rng = np.random.default_rng(seed)
    scores = rng.uniform(size=40).round(2)  # ties included
    hits = rng.random(40) < 0.6
    precision, recall, sorted_scores = precision_recall_curve(scores, hits, int(hits.sum()))
    sk_precision, sk_recall, thresholds = sk_precision_recall_curve(hits, scores)
    # sklearn reports one point per distinct score: our point after the last prediction at it
    last_at = {s: i for i, s in enumerate(sorted_scores)}
    for p, r, t in zip(sk_precision[:-1], sk_recall[:-1], thresholds):
        i = last_at[t]
        assert (precision[i], recall[i]) == pytest.approx((p, r))


def test_detections_length():
    assert len(Detections(np.zeros((2, 4)), np.zeros(2), np.zeros(2, np.int64))) == 2
