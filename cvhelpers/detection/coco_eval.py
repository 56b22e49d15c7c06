"""COCO mAP two ways: built from the steps in NumPy, and by pycocotools, on the same inputs.

:func:`evaluate_detections` is step 5 of :mod:`cvhelpers.detection.metrics`: it matches and
scores every class at COCO's 10 IoU thresholds (0.50:0.05:0.95), 3 area ranges (small < 32**2
pixels, medium, large > 96**2) and 1 / 10 / 100 predictions per image, following pycocotools'
``COCOeval`` rule for rule (crowd regions, ignored objects, ties).

:func:`evaluate_coco` hands the same predictions and ground truth to pycocotools' ``COCOeval``,
the reference behind every COCO number in papers. Both return the same keys, so they can be
compared number by number (``tests/test_coco_eval.py`` does, and against torchmetrics too):

>>> from cvhelpers.detection.coco_eval import evaluate_coco, evaluate_detections
>>> scores = evaluate_coco(predictions, test_scenes, class_names=CLASS_NAMES)  # doctest: +SKIP
>>> scores["map50"], scores["map50_95"]                                      # doctest: +SKIP
(0.83, 0.55)
>>> evaluate_detections(predictions, test_scenes).summary()["map50"]         # doctest: +SKIP
0.83

Predictions: one dict (torchvision style: ``boxes`` ``N x 4`` xyxy, ``scores``, ``labels``
0-based, optionally ``masks``) or :class:`~cvhelpers.detection.metrics.Detections` per image, in
the order of the ground truth's images. Ground truth: ``AnnotatedImage`` objects (e.g.
``load_scenes(root, "test")``) or, for pycocotools, a COCO ``annotations.json``.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvhelpers.data.coco import write_coco
from cvhelpers.detection.boxes import box_iou
from cvhelpers.detection.metrics import (AREA_RANGES, IOU_THRESHOLDS, MAX_DETECTIONS, Detections, GroundTruth, as_detections, as_ground_truth, average_precision, mask_iou, match_predictions, precision_recall_curve)

__all__ = ["DetectionEvaluation", "evaluate_detections", "summary_keys", "coco_ground_truth",
           "to_coco_results", "evaluate_coco"]


# ------------------------------------------------------------- step by step, in NumPy
@dataclass
class DetectionEvaluation:
    """Everything :func:`evaluate_detections` measured.

    Attributes:
        ap: ``T x K x A x M`` average precision per IoU threshold, class, area range and
            max-detections setting; ``nan`` where a class has no (non-ignored) ground truth.
        recall: ``T x K x A x M`` recall reached with all predictions (``nan`` likewise).
        iou_thresholds: the ``T`` thresholds; area_names: the ``A`` range names;
        max_detections: the ``M`` settings.
    """

    ap: np.ndarray
    recall: np.ndarray
    iou_thresholds: np.ndarray
    area_names: tuple[str, ...]
    max_detections: tuple[int, ...]

    def _select(self, values: np.ndarray, iou: float | None, area: str, max_dets: int) -> np.ndarray:
        values = values[:, :, self.area_names.index(area), self.max_detections.index(max_dets)]
        if iou is not None:
            values = values[np.isclose(self.iou_thresholds, iou)]
        return values

    def mean_ap(self, iou: float | None = None, area: str = "all", max_dets: int = 100) -> float:
        """mAP: the mean AP over classes (and over all thresholds when ``iou`` is ``None``),
        skipping classes without ground truth; ``nan`` when nothing is defined."""
        values = self._select(self.ap, iou, area, max_dets)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    def mean_recall(self, area: str = "all", max_dets: int = 100) -> float:
        """mAR: recall averaged over classes and IoU thresholds (COCO's AR@max_dets)."""
        values = self._select(self.recall, None, area, max_dets)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    def class_ap(self, iou: float | None = None) -> np.ndarray:
        """``K`` per-class AP (area ``all``, 100 detections), averaged over thresholds unless
        ``iou`` picks one; ``nan`` for classes without ground truth."""
        values = self._select(self.ap, iou, "all", self.max_detections[-1])
        with np.errstate(all="ignore"):
            return np.array([np.nanmean(c) if np.isfinite(c).any() else np.nan for c in values.T])

    def summary(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """COCO's twelve numbers plus per-class AP, under the keys of :func:`summary_keys`."""
        return _summary(self.mean_ap, self.mean_recall, self.class_ap(), self.class_ap(0.5),
                        class_names)


def summary_keys() -> list[str]:
    """The float keys of an evaluation summary (``map50_95``, ``map50``, ... ``mar_large``)."""
    return ["map50_95", "map50", "map75", "map_small", "map_medium", "map_large",
            "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]


def _summary(mean_ap: Any, mean_recall: Any, ap50_95: np.ndarray, ap50: np.ndarray,
             class_names: Sequence[str] | None) -> dict[str, Any]:
    """Shared by our evaluator and the pycocotools bridge, so both report the same keys."""
    names = list(class_names) if class_names is not None else [str(k) for k in range(len(ap50))]
    values = [mean_ap(), mean_ap(0.5), mean_ap(0.75), mean_ap(area="small"),
              mean_ap(area="medium"), mean_ap(area="large"), mean_recall(max_dets=1),
              mean_recall(max_dets=10), mean_recall(), mean_recall(area="small"),
              mean_recall(area="medium"), mean_recall(area="large")]
    result: dict[str, Any] = {key: float(v) for key, v in zip(summary_keys(), values)}
    result["per_class_ap50_95"] = {n: float(v) for n, v in zip(names, ap50_95)}
    result["per_class_ap50"] = {n: float(v) for n, v in zip(names, ap50)}
    return result


@dataclass
class _ImageClass:
    """One image's predictions and ground truth of one class, ready for matching."""

    scores: np.ndarray  # D, most confident first
    pred_areas: np.ndarray  # D
    ious: np.ndarray  # D x G
    gt_areas: np.ndarray  # G
    gt_crowd: np.ndarray  # G


def _image_class(pred: Detections, gt: GroundTruth, k: int, iou_type: str,
                 max_dets: int) -> _ImageClass | None:
    p, g = np.flatnonzero(pred.labels == k), np.flatnonzero(gt.labels == k)
    if not len(p) and not len(g):
        return None  # nothing to count: the image takes no part in this class
    p = p[np.argsort(-pred.scores[p], kind="stable")][:max_dets]
    if iou_type == "bbox":
        boxes = pred.boxes[p].astype(np.float64)
        ious = box_iou(boxes, gt.boxes[g], gt.crowd[g])
        pred_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    else:
        if pred.masks is None or gt.masks is None:
            raise ValueError("iou_type='segm' needs masks in both predictions and ground truth")
        ious = mask_iou(pred.masks[p], gt.masks[g], gt.crowd[g])
        pred_areas = pred.masks[p].sum(axis=(1, 2)).astype(np.float64)
    return _ImageClass(pred.scores[p].astype(np.float64), pred_areas, ious.reshape(len(p), len(g)),
                       gt.areas[g], gt.crowd[g])


def _match_image(item: _ImageClass, iou_thresholds: np.ndarray, low: float,
                 high: float) -> tuple[np.ndarray, np.ndarray, int]:
    """``T x D`` true-positive and ignored flags for one area range, and the objects counted."""
    gt_ignore = item.gt_crowd | (item.gt_areas < low) | (item.gt_areas > high)
    outside = (item.pred_areas < low) | (item.pred_areas > high)
    true_positive = np.zeros((len(iou_thresholds), len(item.scores)), bool)
    ignored = np.zeros_like(true_positive)
    for t, threshold in enumerate(iou_thresholds):
        matched, on_ignored = match_predictions(item.ious, threshold, gt_ignore, item.gt_crowd)
        true_positive[t] = (matched >= 0) & ~on_ignored
        # An unmatched prediction of another size is not this range's false positive.
        ignored[t] = on_ignored | ((matched < 0) & outside)
    return true_positive, ignored, int((~gt_ignore).sum())


def evaluate_detections(
    predictions: Sequence[Any],
    ground_truth: Sequence[Any],
    iou_type: str = "bbox",
    num_classes: int | None = None,
    iou_thresholds: np.ndarray = IOU_THRESHOLDS,
    area_ranges: Mapping[str, tuple[float, float]] = AREA_RANGES,
    max_detections: Sequence[int] = MAX_DETECTIONS,
) -> DetectionEvaluation:
    """COCO-style AP for every class, IoU threshold, area range and max-detections setting.

    Args:
        predictions: one :class:`Detections` (or dict, see :func:`as_detections`) per image.
        ground_truth: one ``AnnotatedImage`` (or dict, see :func:`as_ground_truth`) per image,
            in the same order; images without objects are fine.
        iou_type: ``"bbox"`` (box IoU) or ``"segm"`` (mask IoU; needs masks on both sides).
        num_classes: ``K``; default one more than the largest class id seen.
        iou_thresholds, area_ranges, max_detections: COCO's by default; ``area_ranges`` must
            contain ``"all"`` and, for :meth:`DetectionEvaluation.summary`, small/medium/large.

    Returns:
        A :class:`DetectionEvaluation`; ``.summary(class_names)`` gives ``map50_95``,
        ``map50``, ... with the same keys as :func:`cvhelpers.detection.coco_eval.evaluate_coco`.

    Example:
        >>> result = evaluate_detections(predictions, test_scenes)      # doctest: +SKIP
        >>> result.mean_ap(0.5), result.mean_ap()                       # doctest: +SKIP
        (0.81, 0.52)
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    preds = [as_detections(p) for p in predictions]
    gts = [as_ground_truth(g) for g in ground_truth]
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} images: pass one per image")
    if num_classes is None:
        num_classes = 1 + max([int(x.labels.max()) for x in [*preds, *gts] if len(x.labels)],
                              default=-1)
    max_detections = tuple(sorted(max_detections))
    ap = np.full((len(iou_thresholds), num_classes, len(area_ranges), len(max_detections)), np.nan)
    recall = ap.copy()
    for k in range(num_classes):
        items = [_image_class(p, g, k, iou_type, max_detections[-1]) for p, g in zip(preds, gts)]
        items = [item for item in items if item is not None]
        for a, (low, high) in enumerate(area_ranges.values()):
            matched = [_match_image(item, iou_thresholds, low, high) for item in items]
            num_gt = sum(m[2] for m in matched)
            if num_gt == 0:
                continue  # AP is undefined without objects to find: left out of the mean
            for m, max_dets in enumerate(max_detections):
                scores = np.concatenate([i.scores[:max_dets] for i in items] or [np.zeros(0)])
                for t in range(len(iou_thresholds)):
                    hits = np.concatenate([tp[t, :max_dets] for tp, _, _ in matched] or [np.zeros(0, bool)])
                    skip = np.concatenate([ig[t, :max_dets] for _, ig, _ in matched] or [np.zeros(0, bool)])
                    precision, rec, _ = precision_recall_curve(scores[~skip], hits[~skip], num_gt)
                    ap[t, k, a, m] = average_precision(precision, rec)
                    recall[t, k, a, m] = rec[-1] if len(rec) else 0.0
    return DetectionEvaluation(ap, recall, np.asarray(iou_thresholds, dtype=np.float64),
                               tuple(area_ranges), max_detections)


# ------------------------------------------------------------------- the reference: pycocotools


@contextlib.contextmanager
def _quiet():
    """pycocotools prints progress lines, and under numpy 2 warns inside its own RLE code."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*__array__ implementation",
                                category=DeprecationWarning)
        yield


def coco_ground_truth(ground_truth: Sequence[Any] | str | Path,
                      class_names: Sequence[str] | None = None) -> Any:
    """A pycocotools ``COCO`` object for the ground truth.

    Args:
        ground_truth: a COCO ``annotations.json`` path, or ``AnnotatedImage`` objects (or dicts
            with ``image``, ``boxes``, ``labels`` and optionally ``masks``, ``iscrowd``,
            ``file_name``), converted exactly as :func:`cvhelpers.data.coco.write_coco` writes
            them: image ids 1, 2, ... in list order, ``category_id`` = class id + 1.
        class_names: the ``K`` class names; default ``"0"``, ``"1"``, ... up to the largest
            label. Ignored for a file (its categories are used).
    """
    from pycocotools.coco import COCO  # optional: the detection extra

    if isinstance(ground_truth, (str, Path)):
        with _quiet():
            return COCO(str(ground_truth))
    samples = [_with_file_name(sample, i) for i, sample in enumerate(ground_truth)]
    if class_names is None:
        largest = max((int(np.max(s["labels"])) for s in samples if len(s["labels"])), default=0)
        class_names = [str(k) for k in range(largest + 1)]
    with tempfile.TemporaryDirectory() as folder:
        dataset = write_coco(samples, Path(folder) / "gt.json", class_names, folder,
                             write_images=False)
    coco = COCO()
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def _with_file_name(sample: Any, index: int) -> dict[str, Any]:
    fields = ("image", "boxes", "labels", "masks", "iscrowd", "file_name")
    get = sample.get if isinstance(sample, dict) else lambda name: getattr(sample, name, None)
    record = {name: get(name) for name in fields}
    record["file_name"] = record["file_name"] or f"{index:06d}.png"  # write_coco needs a name
    return record


def to_coco_results(predictions: Sequence[Any], image_ids: Sequence[int],
                    iou_type: str = "bbox") -> list[dict[str, Any]]:
    """Predictions as COCO's results list (the format of a ``detections.json``).

    Args:
        predictions: one entry per image (see the module docstring).
        image_ids: the COCO image id of each entry.
        iou_type: ``"bbox"``: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``;
            ``"segm"``: ``"segmentation"`` (compressed RLE, ``counts`` as text) instead of
            ``"bbox"``, so pycocotools takes the area from the mask rather than the box.

    Returns:
        A list of dicts (``category_id`` = class id + 1), ready for ``COCO.loadRes`` or
        ``json.dump``.
    """
    from pycocotools import mask as mask_utils  # optional: the detection extra

    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions for {len(image_ids)} images")
    results = []
    for image_id, prediction in zip(image_ids, predictions):
        det = as_detections(prediction)
        for k in range(len(det)):
            entry: dict[str, Any] = {"image_id": int(image_id), "category_id": int(det.labels[k]) + 1,
                                     "score": float(det.scores[k])}
            if iou_type == "bbox":
                x1, y1, x2, y2 = det.boxes[k].astype(np.float64).tolist()
                entry["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            elif iou_type == "segm":
                if det.masks is None:
                    raise ValueError(f"image {image_id}: iou_type='segm' needs predicted masks")
                rle = mask_utils.encode(np.asfortranarray(det.masks[k].astype(np.uint8)))
                entry["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            else:
                raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
            results.append(entry)
    return results


def evaluate_coco(predictions: Sequence[Any], ground_truth: Sequence[Any] | str | Path,
                  class_names: Sequence[str] | None = None, iou_type: str = "bbox",
                  ) -> dict[str, Any]:
    """COCO mAP of ``predictions`` computed by pycocotools' ``COCOeval``.

    Args:
        predictions: one entry per ground-truth image, in order (see the module docstring).
        ground_truth: ``AnnotatedImage`` objects (e.g. ``load_scenes(root, "test")``) or the
            path of a COCO ``annotations.json`` (predictions then follow its ``images`` order).
        class_names: names for the per-class results (and the categories of in-memory ground
            truth); see :func:`coco_ground_truth`.
        iou_type: ``"bbox"`` or ``"segm"`` (masks needed on both sides).

    Returns:
        ``map50_95`` (COCO's headline AP@[.5:.95]), ``map50``, ``map75``, ``map_small``,
        ``map_medium``, ``map_large``, ``mar_1``, ``mar_10``, ``mar_100``, ``mar_small``,
        ``mar_medium``, ``mar_large`` (floats in [0, 1]; ``nan`` where pycocotools reports -1,
        e.g. no large objects), and ``per_class_ap50_95``, ``per_class_ap50``: ``{name: AP}``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval  # optional: the detection extra

    gt = coco_ground_truth(ground_truth, class_names)
    image_ids = [image["id"] for image in gt.dataset["images"]]
    results = to_coco_results(predictions, image_ids, iou_type)
    with _quiet():
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes cannot take an empty list; no predictions simply means AP = 0
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                          "annotations": []}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
    return _summarise(evaluator, [c["name"] for c in gt.loadCats(evaluator.params.catIds)])


def _summarise(evaluator: Any, class_names: list[str]) -> dict[str, Any]:
    """The summary numbers, read from pycocotools' precision and recall arrays the way its own
    ``summarize()`` does (mean over entries > -1), with -1 turned into ``nan``."""
    params = evaluator.params
    precision = evaluator.eval["precision"]  # T x R x K x A x M
    recall = evaluator.eval["recall"]  # T x K x A x M

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else float("nan")

    def pick(values: np.ndarray, iou: float | None, area: str, max_dets: int) -> np.ndarray:
        a, m = params.areaRngLbl.index(area), params.maxDets.index(max_dets)
        values = values[..., a, m]
        return values if iou is None else values[np.isclose(params.iouThrs, iou)]

    def mean_ap(iou: float | None = None, area: str = "all", max_dets: int = 100) -> float:
        return mean(pick(precision, iou, area, max_dets))

    def mean_recall(area: str = "all", max_dets: int = 100) -> float:
        return mean(pick(recall, None, area, max_dets))

    per_class = pick(precision, None, "all", 100)  # T x R x K
    ap50_95 = np.array([mean(per_class[:, :, k]) for k in range(per_class.shape[2])])
    at50 = pick(precision, 0.5, "all", 100)
    ap50 = np.array([mean(at50[:, :, k]) for k in range(at50.shape[2])])
    return _summary(mean_ap, mean_recall, ap50_95, ap50, class_names)
