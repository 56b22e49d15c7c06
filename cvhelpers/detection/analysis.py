"""Error analysis for detectors: a confusion matrix with a background class, per-image error
counts to find the worst images, and simulated predictions for lessons without a detector.

The detection confusion matrix is ``(K + 1) x (K + 1)``, rows = true class, columns = predicted
class (the layout of :func:`cvhelpers.evaluation.metrics.confusion_matrix`), with one more row and column
for *background*:

- ``cm[i, j]``: an object of class ``i`` was found by a box labelled ``j`` (IoU >= threshold);
  the diagonal holds the correct ones, the rest are class confusions;
- ``cm[i, K]`` (last column): an object of class ``i`` that no prediction found (missed);
- ``cm[K, j]`` (last row): a prediction of class ``j`` on no object (a false positive).

>>> cm = detection_confusion_matrix(predictions, test_scenes, num_classes=4)  # doctest: +SKIP
>>> reports = per_class_report(cm, [*CLASS_NAMES, "background"])[:-1]         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvhelpers.detection.metrics import Detections, as_detections, as_ground_truth
from cvhelpers.detection.boxes import box_iou

__all__ = ["ImageErrors", "match_class_agnostic", "detection_confusion_matrix", "confused_objects",
           "image_errors", "simulate_detections"]


def match_class_agnostic(ious: np.ndarray, iou_threshold: float) -> list[tuple[int, int]]:
    """Pair predictions with objects one to one, best overlap first, ignoring the classes.

    The pair with the highest IoU is matched first, then the highest among the rest, and so on
    while IoU >= ``iou_threshold``. Classes are compared only afterwards, so a circle boxed as
    a square shows up as a confusion rather than as one miss plus one false positive.

    Args:
        ious: ``D x G`` IoU of every prediction with every object.

    Returns:
        ``(prediction index, object index)`` pairs.
    """
    candidates = np.argwhere(ious >= iou_threshold)
    order = np.argsort(-ious[candidates[:, 0], candidates[:, 1]], kind="stable")
    used_pred, used_gt, pairs = set(), set(), []
    for d, g in candidates[order].tolist():
        if d not in used_pred and g not in used_gt:
            pairs.append((d, g))
            used_pred.add(d)
            used_gt.add(g)
    return pairs


@dataclass(frozen=True)
class ImageErrors:
    """What went wrong in one image at a score and IoU threshold."""

    correct: int  # objects found with the right class
    wrong_class: int  # objects found by a box of another class
    missed: int  # objects no prediction found
    false_positives: int  # predictions on no object

    @property
    def total(self) -> int:
        """All mistakes together (a wrong class counts once)."""
        return self.wrong_class + self.missed + self.false_positives


def _image_matches(prediction: Any, sample: Any, iou_threshold: float, score_threshold: float
                   ) -> tuple[Detections, Any, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """One image's predictions kept at the threshold, its non-crowd objects, and their class-agnostic
    ``(prediction, object)`` matches, all as indices into the image's own arrays."""
    det, gt = as_detections(prediction), as_ground_truth(sample)
    kept = np.flatnonzero(det.scores >= score_threshold)
    regular = np.flatnonzero(~gt.crowd)
    pairs = match_class_agnostic(box_iou(det.boxes[kept], gt.boxes[regular]), iou_threshold)
    return det, gt, kept, regular, [(int(kept[d]), int(regular[g])) for d, g in pairs]


def _image_confusion(prediction: Any, sample: Any, num_classes: int, iou_threshold: float,
                     score_threshold: float) -> np.ndarray:
    det, gt, kept, regular, pairs = _image_matches(prediction, sample, iou_threshold, score_threshold)
    cm = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    background = num_classes
    # A prediction that lies on a crowd region ("a crowd of people") is neither right nor wrong.
    on_crowd = np.zeros(len(kept), bool)
    if gt.crowd.any():
        on_crowd = (box_iou(det.boxes[kept], gt.boxes[gt.crowd], np.ones(gt.crowd.sum(), bool))
                    >= iou_threshold).any(axis=1)
    matched_pred = {d for d, _ in pairs}
    matched_gt = {g for _, g in pairs}
    for d, g in pairs:
        cm[gt.labels[g], det.labels[d]] += 1
    for g in regular:
        if g not in matched_gt:
            cm[gt.labels[g], background] += 1
    for i, d in enumerate(kept):
        if d not in matched_pred and not on_crowd[i]:
            cm[background, det.labels[d]] += 1
    return cm


def confused_objects(predictions: Sequence[Any], ground_truth: Sequence[Any], true_class: int,
                     predicted_class: int, iou_threshold: float = 0.5,
                     score_threshold: float = 0.5) -> list[tuple[int, int, int]]:
    """``(image, object, prediction)`` indices of every object of ``true_class`` found by a box
    labelled ``predicted_class``: the cases behind one cell ``cm[true_class, predicted_class]``
    of :func:`detection_confusion_matrix` (same matching, same thresholds), to look at."""
    found = []
    for image, (prediction, sample) in enumerate(zip(predictions, ground_truth)):
        det, gt, _, _, pairs = _image_matches(prediction, sample, iou_threshold, score_threshold)
        found += [(image, g, d) for d, g in pairs
                  if gt.labels[g] == true_class and det.labels[d] == predicted_class]
    return found


def detection_confusion_matrix(predictions: Sequence[Any], ground_truth: Sequence[Any],
                               num_classes: int, iou_threshold: float = 0.5,
                               score_threshold: float = 0.5) -> np.ndarray:
    """Confusion matrix of a detector with a background row and column (see the module doc).

    Args:
        predictions: one :class:`~cvhelpers.detection.metrics.Detections` (or dict) per image.
        ground_truth: one ``AnnotatedImage`` (or dict) per image, same order.
        num_classes: ``K`` (the matrix is ``K + 1`` square; index ``K`` is background).
        iou_threshold: the overlap that counts as "found".
        score_threshold: predictions below it are dropped first (the operating point: a
            confusion matrix describes one threshold, unlike AP).

    Returns:
        ``int64`` ``(K + 1) x (K + 1)``; ``cm[K, K]`` is always 0. Row sums are the objects per
        class, column sums the kept predictions per class (minus those on crowd regions).
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truth)} images")
    cm = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for prediction, sample in zip(predictions, ground_truth):
        cm += _image_confusion(prediction, sample, num_classes, iou_threshold, score_threshold)
    return cm


def image_errors(predictions: Sequence[Any], ground_truth: Sequence[Any], num_classes: int,
                 iou_threshold: float = 0.5, score_threshold: float = 0.5) -> list[ImageErrors]:
    """Per-image counts of correct, wrong-class, missed and false-positive detections."""
    errors = []
    for prediction, sample in zip(predictions, ground_truth):
        cm = _image_confusion(prediction, sample, num_classes, iou_threshold, score_threshold)
        k = num_classes
        correct = int(np.trace(cm[:k, :k]))
        errors.append(ImageErrors(correct=correct, wrong_class=int(cm[:k, :k].sum()) - correct,
                                  missed=int(cm[:k, k].sum()), false_positives=int(cm[k, :k].sum())))
    return errors


def simulate_detections(ground_truth: Sequence[Any], seed: int = 0, miss_rate: float = 0.1,
                        box_noise: float = 0.08, wrong_class_rate: float = 0.05,
                        duplicate_rate: float = 0.05, false_positives_per_image: float = 0.6,
                        num_classes: int | None = None, with_masks: bool = False,
                        ) -> list[Detections]:
    """SIMULATED detector output made from the ground truth, for lessons and tests about metrics.

    Not a model: every box is a noisy copy of a true one, so use it only to learn what the
    metrics do. Per object: missed with probability ``miss_rate``; otherwise its box moves by a
    normal jitter of ``box_noise`` times its size (and its size by a factor ``exp(N(0,
    box_noise))``), its label is wrong with probability ``wrong_class_rate``, and its score
    grows with the IoU the jittered box still has (well-placed boxes are confident). Some
    objects get a second, less confident box (a duplicate). Each image also gets
    Poisson(``false_positives_per_image``) boxes on nothing, with mostly low scores.
    Crowd regions are not copied.

    Args:
        ground_truth: ``AnnotatedImage`` objects (``image`` gives the size; ``masks`` are
            needed for ``with_masks``).
        seed: the same seed gives the same predictions.
        num_classes: for random labels; default one more than the largest label.
        with_masks: also make masks: each true mask shifted like its box (false positives get
            a filled rectangle).

    Returns:
        One :class:`~cvhelpers.detection.metrics.Detections` per image.
    """
    gts = [as_ground_truth(s) for s in ground_truth]
    if num_classes is None:
        num_classes = 1 + max((int(g.labels.max()) for g in gts if len(g.labels)), default=0)
    results = []
    for index, (sample, gt) in enumerate(zip(ground_truth, gts)):
        rng = np.random.default_rng([seed, index])
        image = sample["image"] if isinstance(sample, dict) else sample.image
        height, width = np.asarray(image).shape[:2]
        boxes, scores, labels, masks = [], [], [], []
        for j in np.flatnonzero(~gt.crowd):
            if rng.random() < miss_rate:
                continue
            copies = 2 if rng.random() < duplicate_rate else 1
            for copy in range(copies):
                box, shift = _jitter(rng, gt.boxes[j], box_noise * (1 + copy), width, height)
                quality = float(box_iou(box[None], gt.boxes[j][None])[0, 0])
                label = gt.labels[j]
                if rng.random() < wrong_class_rate and num_classes > 1:
                    label = (label + rng.integers(1, num_classes)) % num_classes
                boxes.append(box)
                scores.append(np.clip(0.25 + 0.7 * quality - 0.2 * copy + rng.normal(0, 0.08), 0.01, 0.99))
                labels.append(label)
                if with_masks:
                    masks.append(_shift_mask(gt.masks[j], *shift))
        for _ in range(rng.poisson(false_positives_per_image)):
            side = rng.uniform(12, 0.4 * min(width, height), 2)
            x, y = rng.uniform(0, width - side[0]), rng.uniform(0, height - side[1])
            box = np.array([x, y, x + side[0], y + side[1]])
            boxes.append(box)
            scores.append(float(rng.beta(2, 5)))
            labels.append(rng.integers(num_classes))
            if with_masks:
                mask = np.zeros((height, width), bool)
                x1, y1, x2, y2 = np.round(box).astype(int)
                mask[y1:y2, x1:x2] = True
                masks.append(mask)
        results.append(Detections(
            boxes=np.array(boxes, np.float32).reshape(-1, 4),
            scores=np.array(scores, np.float32), labels=np.array(labels, np.int64),
            masks=np.array(masks, bool).reshape(-1, height, width) if with_masks else None))
    return results


def _jitter(rng: np.random.Generator, box: np.ndarray, noise: float, width: int,
            height: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A noisy copy of an ``xyxy`` box inside the image, and its whole-pixel shift."""
    w, h = box[2] - box[0], box[3] - box[1]
    dx, dy = rng.normal(0, noise * w), rng.normal(0, noise * h)
    new_w, new_h = w * np.exp(rng.normal(0, noise)), h * np.exp(rng.normal(0, noise))
    cx, cy = (box[0] + box[2]) / 2 + dx, (box[1] + box[3]) / 2 + dy
    jittered = np.array([cx - new_w / 2, cy - new_h / 2, cx + new_w / 2, cy + new_h / 2])
    jittered = np.clip(jittered, 0, [width, height, width, height])
    return jittered, (int(round(dx)), int(round(dy)))


def _shift_mask(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``mask`` moved by ``(dx, dy)`` pixels; what leaves the image is lost."""
    out = np.zeros_like(mask)
    height, width = mask.shape
    src = mask[max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out
