"""Detection metrics built step by step: IoU, matching, precision-recall, AP and COCO mAP.

The steps, each a small function a learner can read:

1. :func:`box_iou` / :func:`mask_iou`: how much a prediction overlaps each ground-truth object.
2. :func:`match_predictions`: walk the predictions from the most confident down; each takes the
   free ground-truth object it overlaps most, if that overlap reaches the IoU threshold (a true
   positive); otherwise it is a false positive.
3. :func:`precision_recall_curve`: sort all predictions of a class (over every image) by score
   and count true and false positives as the score threshold falls.
4. :func:`average_precision`: make precision non-increasing (:func:`precision_envelope`), read
   it at 101 recall levels 0, 0.01, ..., 1 and average.
5. :func:`cvhelpers.detection.coco_eval.evaluate_detections`: repeat for every class, 10 IoU thresholds
   0.50:0.05:0.95, the area ranges small / medium / large and 1, 10, 100 predictions per image.
   COCO's mAP@[.5:.95] is the mean over classes and thresholds; mAP@0.5 uses the first one.

The steps follow pycocotools' ``COCOeval`` rule for rule (crowd regions, objects ignored outside
an area range, ties), so the numbers agree with it (``tests/test_coco_eval.py`` checks that);
:func:`cvhelpers.detection.coco_eval.evaluate_coco` runs pycocotools itself on the same inputs.

Formats (see ``docs/DESIGN.md``): boxes are pixel ``xyxy`` (``x2, y2`` exclusive edges), class
ids 0-based. Ground truth is a list of :class:`cvhelpers.data.coco.AnnotatedImage` (or dicts with
``boxes``, ``labels`` and optionally ``masks``, ``iscrowd``, ``area``); predictions are one
:class:`Detections` (or a dict with ``boxes``, ``scores``, ``labels``, optionally ``masks``: what
torchvision detectors return) per image, in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvhelpers.detection.boxes import box_iou, iou_from_overlap
from cvhelpers.evaluation.metrics import to_numpy

__all__ = [
    "IOU_THRESHOLDS", "RECALL_THRESHOLDS", "AREA_RANGES", "MAX_DETECTIONS",
    "Detections", "GroundTruth", "as_detections", "as_ground_truth",
    "mask_iou", "match_predictions",
    "precision_recall_curve", "precision_envelope", "average_precision", "precision_recall_at",
]

#: COCO's IoU thresholds 0.50, 0.55, ..., 0.95 (built as pycocotools builds them).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
#: The 101 recall levels at which precision is read: 0.00, 0.01, ..., 1.00.
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
#: COCO's object size ranges in pixels of area (both ends inclusive, as in pycocotools).
AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e5**2), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
#: How many of an image's most confident predictions (per class) count.
MAX_DETECTIONS = (1, 10, 100)


# ------------------------------------------------------------------------------------- inputs
@dataclass
class Detections:
    """One image's predictions.

    Attributes:
        boxes: ``float32`` ``N x 4`` pixel ``xyxy``.
        scores: ``float32`` ``N`` confidences (higher = more confident; any range).
        labels: ``int64`` ``N`` class ids, 0-based.
        masks: ``bool`` ``N x H x W`` instance masks, or ``None`` (boxes only).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class GroundTruth:
    """One image's true objects as the evaluator needs them (see :func:`as_ground_truth`)."""

    boxes: np.ndarray  # float64 N x 4 xyxy
    labels: np.ndarray  # int64 N
    crowd: np.ndarray  # bool N: COCO "iscrowd" regions (matched but never counted)
    areas: np.ndarray  # float64 N: what the area ranges compare
    masks: np.ndarray | None  # bool N x H x W or None


def _get(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)


def as_detections(prediction: Any) -> Detections:
    """A :class:`Detections` from a dict or object with ``boxes``, ``scores``, ``labels`` (and
    optionally ``masks``), as NumPy arrays or torch tensors.

    Float masks (torchvision Mask R-CNN returns ``N x 1 x H x W`` probabilities) are thresholded
    at 0.5. Labels must already be 0-based class ids: torchvision detectors count background as
    0, so subtract 1 from their labels first.
    """
    boxes = to_numpy(_get(prediction, "boxes")).astype(np.float32).reshape(-1, 4)
    scores = to_numpy(_get(prediction, "scores")).astype(np.float32).reshape(-1)
    labels = to_numpy(_get(prediction, "labels")).astype(np.int64).reshape(-1)
    masks = _get(prediction, "masks")
    if masks is not None:
        masks = to_numpy(masks)
        masks = (masks > 0.5 if masks.dtype != bool else masks).reshape(len(boxes), *masks.shape[-2:])
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels: "
                         "each prediction needs one of each")
    return Detections(boxes, scores, labels, masks)


def as_ground_truth(sample: Any) -> GroundTruth:
    """The true objects of an ``AnnotatedImage`` (or a dict with the same fields).

    The area that decides small / medium / large is the ``area`` field when given, else the
    mask's pixel count when there are masks, else the box's ``w * h``: the same choice
    :func:`cvhelpers.data.coco.write_coco` makes for the ``area`` it writes.
    """
    boxes = to_numpy(_get(sample, "boxes")).astype(np.float64).reshape(-1, 4)
    labels = to_numpy(_get(sample, "labels")).astype(np.int64).reshape(-1)
    masks = _get(sample, "masks")
    masks = None if masks is None else to_numpy(masks).astype(bool)
    crowd = _get(sample, "iscrowd")
    crowd = np.zeros(len(boxes), bool) if crowd is None else to_numpy(crowd).astype(bool).reshape(-1)
    areas = _get(sample, "area")
    if areas is not None:
        areas = to_numpy(areas).astype(np.float64).reshape(-1)
    elif masks is not None:
        areas = masks.sum(axis=(1, 2)).astype(np.float64)
    else:
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return GroundTruth(boxes, labels, crowd, areas, masks)


# ---------------------------------------------------------------------------------- step 1: IoU
def mask_iou(masks_a: Any, masks_b: Any, crowd_b: Any | None = None) -> np.ndarray:
    """Intersection over union of every mask in ``a`` with every mask in ``b``, in pixels.

    Args:
        masks_a: ``bool`` ``N x H x W``; masks_b: ``bool`` ``M x H x W`` (same ``H x W``).
        crowd_b: ``M`` bools; crowd regions divide by the area of mask ``a`` (see :func:`box_iou`).

    Returns:
        ``float64`` ``N x M`` in ``[0, 1]``; 0 where both masks are empty.
    """
    a = to_numpy(masks_a).astype(bool)
    b = to_numpy(masks_b).astype(bool)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"masks of size {a.shape[1:]} and {b.shape[1:]} cannot be compared")
    pixels = int(np.prod(a.shape[1:]))
    flat_a = a.reshape(len(a), pixels).astype(np.float64)
    flat_b = b.reshape(len(b), pixels).astype(np.float64)
    intersection = flat_a @ flat_b.T  # pixels that are in both masks, for every pair at once
    area_a, area_b = flat_a.sum(axis=1), flat_b.sum(axis=1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return iou_from_overlap(intersection, union, area_a, crowd_b)


# ----------------------------------------------------------------------------- step 2: matching
def match_predictions(ious: np.ndarray, iou_threshold: float, gt_ignore: Any | None = None,
                      gt_crowd: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy COCO matching of one image's predictions (of one class) to its ground truth.

    Predictions must be sorted by score, most confident first. Each one in turn takes the
    ground-truth object with the highest IoU that is still free, if that IoU is at least
    ``iou_threshold``. A free regular object is preferred to an ignored one (a crowd region or
    an object outside the area range being evaluated). A crowd region may absorb any number of
    predictions; everything else is matched at most once, so a duplicate box is a false positive.

    Args:
        ious: ``D x G`` IoU of each prediction with each ground-truth object.
        iou_threshold: e.g. 0.5.
        gt_ignore: ``G`` bools: objects that count neither as found nor as missed.
        gt_crowd: ``G`` bools: crowd regions (these are also ignored).

    Returns:
        ``(matched_gt, ignored)``: for each prediction, the index of its ground-truth object or
        -1 (a false positive), and whether it matched an ignored object (then it is neither a
        true nor a false positive).
    """
    num_pred, num_gt = ious.shape
    crowd = np.zeros(num_gt, bool) if gt_crowd is None else np.asarray(gt_crowd, bool)
    ignore = crowd.copy() if gt_ignore is None else np.asarray(gt_ignore, bool) | crowd
    gt_order = np.argsort(ignore, kind="stable")  # regular objects first, ignored ones last
    gt_taken = np.zeros(num_gt, bool)
    matched_gt = np.full(num_pred, -1, dtype=np.int64)
    for d in range(num_pred):
        best, best_iou = -1, min(iou_threshold, 1 - 1e-10)
        for g in gt_order:
            if gt_taken[g] and not crowd[g]:
                continue  # already found by a more confident prediction
            if best >= 0 and not ignore[best] and ignore[g]:
                break  # we hold a regular match; ignored objects (sorted last) cannot beat it
            if ious[d, g] >= best_iou:  # ">=": on a tie the later object wins, as in COCOeval
                best, best_iou = g, ious[d, g]
        if best >= 0:
            matched_gt[d] = best
            gt_taken[best] = True
    ignored = np.zeros(num_pred, bool)
    ignored[matched_gt >= 0] = ignore[matched_gt[matched_gt >= 0]]
    return matched_gt, ignored


# ----------------------------------------------------------------- steps 3-4: PR curve and AP
def precision_recall_curve(scores: Any, is_true_positive: Any,
                           num_ground_truth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall after each prediction, as the score threshold falls.

    Args:
        scores: ``D`` scores of every prediction of one class, from all images.
        is_true_positive: ``D`` bools from matching (ignored predictions left out beforehand).
        num_ground_truth: objects of this class that count (crowd / ignored ones excluded).

    Returns:
        ``(precision, recall, sorted_scores)``, each ``D`` long, ordered by score (highest
        first; equal scores keep their input order). ``precision[i]`` is TP / (TP + FP) over the
        first ``i + 1`` predictions, ``recall[i]`` is TP / ``num_ground_truth``.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    hits = np.asarray(is_true_positive, bool).reshape(-1)[order]
    true_positives = np.cumsum(hits).astype(np.float64)
    false_positives = np.cumsum(~hits).astype(np.float64)
    recall = true_positives / max(num_ground_truth, 1)
    precision = true_positives / np.maximum(true_positives + false_positives, 1.0)
    return precision, recall, scores[order]


def precision_envelope(precision: Any) -> np.ndarray:
    """Precision made non-increasing: each value becomes the best precision at any later point.

    "Could I get at least this precision at this recall or more?" This removes the zig-zag of
    the raw curve; COCO and VOC both read precision from this envelope.
    """
    precision = np.asarray(precision, dtype=np.float64)
    return np.maximum.accumulate(precision[::-1])[::-1] if precision.size else precision


def average_precision(precision: Any, recall: Any,
                      recall_thresholds: np.ndarray = RECALL_THRESHOLDS) -> float:
    """Area under the precision-recall curve, COCO style: the envelope's precision read at 101
    recall levels (0, 0.01, ..., 1) and averaged; levels the curve never reaches count as 0.

    Args:
        precision, recall: from :func:`precision_recall_curve` (recall non-decreasing).
        recall_thresholds: where to read; ``np.linspace(0, 1, 11)`` gives the old VOC 11 points.

    Returns:
        AP in ``[0, 1]``.
    """
    envelope = precision_envelope(precision)
    recall = np.asarray(recall, dtype=np.float64)
    # The first prediction whose recall reaches each level; past the end the level was missed.
    where = np.searchsorted(recall, recall_thresholds, side="left")
    reached = where < len(recall)
    sampled = np.zeros(len(recall_thresholds))
    sampled[reached] = envelope[where[reached]]
    return float(sampled.mean())


# ---------------------------------------------------------------- operating point of a detector
def precision_recall_at(predictions: Sequence[Any], ground_truth: Sequence[Any], score_threshold: float,
                        iou_threshold: float = 0.5) -> tuple[float, float, int]:
    """Precision and recall of the boxes a detector *keeps* at ``score_threshold``.

    mAP scores the whole ranking; an application keeps only boxes above one confidence. Boxes
    are matched per image and class as COCO does (:func:`match_predictions`).

    Args:
        predictions: per-image dicts (``boxes``, ``scores``, ``labels``).
        ground_truth: per-image ``AnnotatedImage``/``Scene`` objects.

    Returns:
        ``(precision, recall, boxes kept)``; precision is 1.0 when nothing is kept.
    """
    true_positives = kept = objects = 0
    for prediction, sample in zip(predictions, ground_truth):
        pred, gt = as_detections(prediction), as_ground_truth(sample)
        objects += len(gt.labels)
        for label in np.unique(np.concatenate([pred.labels, gt.labels])):
            chosen = np.flatnonzero((pred.labels == label) & (pred.scores >= score_threshold))
            chosen = chosen[np.argsort(-pred.scores[chosen], kind="stable")]
            truth = gt.boxes[gt.labels == label]
            kept += len(chosen)
            if len(chosen) and len(truth):
                matched, _ = match_predictions(box_iou(pred.boxes[chosen], truth), iou_threshold)
                true_positives += int((matched >= 0).sum())
    precision = true_positives / kept if kept else 1.0
    return precision, true_positives / max(objects, 1), kept
