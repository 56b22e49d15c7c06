"""Segmentation metrics: per-class IoU and Dice from one confusion matrix, and per-image scores
(the worst images: ``worst_indices(per_image_miou(pred, target, C), k)`` with
:func:`cvhelpers.evaluation.metrics.worst_indices`).

The means leave the background out by default: it is easy and would flatter every model.
Checked against torchmetrics in the tests and in notebook 06.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvhelpers.evaluation.metrics import confusion_matrix

__all__ = ["iou_from_confusion", "dice_from_confusion", "SegmentationScores",
           "segmentation_scores", "per_image_miou"]


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN) from a ``C x C`` confusion matrix (rows = truth).

    A class absent from both truth and prediction gets ``nan`` (nothing to overlap).
    """
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def dice_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class Dice = 2 TP / (2 TP + FP + FN) (the pixel F1 score); ``nan`` for absent classes."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    denominator = cm.sum(0) + cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, np.nan)


@dataclass
class SegmentationScores:
    """Dataset-wide scores: pixels of all images counted together (not a mean of per-image scores).

    ``iou`` and ``dice`` have one entry per class, background first; ``miou`` and ``mdice``
    average the *object* classes only (background is easy and would flatter the mean).
    """

    confusion: np.ndarray
    iou: np.ndarray
    dice: np.ndarray
    miou: float
    mdice: float
    pixel_accuracy: float

    def table(self, class_names: Sequence[str]) -> str:
        """A Markdown table of per-class IoU and Dice."""
        rows = [f"| {n} | {i:.3f} | {d:.3f} |" for n, i, d in zip(class_names, self.iou, self.dice)]
        return "| class | IoU | Dice |\n| --- | ---: | ---: |\n" + "\n".join(rows) + \
            f"\n| **mean over objects** | **{self.miou:.3f}** | **{self.mdice:.3f}** |"


def segmentation_scores(pred: Any, target: Any, num_classes: int, background: int | None = 0,
                        ignore_index: int | None = None) -> SegmentationScores:
    """Per-class IoU and Dice and their means over the object classes.

    Args:
        pred, target: class-id masks of the same shape (``N x H x W`` or ``H x W``), numpy or torch.
        num_classes: background included.
        background: the class left out of the means (``None``: average all classes).
        ignore_index: target pixels of this value are not counted (VOC borders, padding).
    """
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    cm = confusion_matrix(pred, target, num_classes)
    iou, dice = iou_from_confusion(cm), dice_from_confusion(cm)
    keep = [c for c in range(num_classes) if c != background]
    return SegmentationScores(cm, iou, dice, float(np.nanmean(iou[keep])), float(np.nanmean(dice[keep])),
                              float(np.trace(cm) / max(cm.sum(), 1)))


def per_image_miou(pred: np.ndarray, target: np.ndarray, num_classes: int, background: int = 0) -> np.ndarray:
    """Mean IoU over the object classes present (in truth or prediction) of each image: ``N`` floats."""
    scores = np.full(len(pred), np.nan)
    for i, (p, t) in enumerate(zip(pred, target)):
        iou = iou_from_confusion(confusion_matrix(p.ravel(), t.ravel(), num_classes))
        objects = np.delete(iou, background)
        scores[i] = np.nanmean(objects) if np.isfinite(objects).any() else 1.0
    return scores
