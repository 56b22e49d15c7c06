"""The mechanisms inside a detector, written plainly and checked against torchvision.

* box regression targets: :func:`encode_boxes` / :func:`decode_boxes` (torchvision's
  ``BoxCoder``: R-CNN's ``dx, dy, dw, dh`` with weights ``10, 10, 5, 5``);
* non-maximum suppression: :func:`nms`, :func:`batched_nms` (``torchvision.ops.nms`` /
  ``batched_nms``);
* focal loss: :func:`sigmoid_focal_loss` (``torchvision.ops.sigmoid_focal_loss``);
* anchors: :func:`base_anchors`, :func:`grid_anchors` (torchvision's ``AnchorGenerator``) and
  choosing sizes and aspect ratios from the data (:func:`suggest_anchors`, :func:`kmeans_anchors`,
  :func:`anchor_coverage`, :func:`plot_anchor_fit`).

Boxes are ``xyxy`` pixels (``x2, y2`` exclusive), as everywhere in the course. The code favours
reading over speed: use torchvision's versions in a real model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

#: torchvision's clamp on predicted log-scale changes: a box grows at most 1000/16 times.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


# ------------------------------------------------------------------------------ box regression
def encode_boxes(targets: torch.Tensor, anchors: torch.Tensor,
                 weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)) -> torch.Tensor:
    """Regression targets that move each anchor (or proposal) onto its matched box.

    ``dx = wx * (gx - ax) / aw``, ``dy = wy * (gy - ay) / ah`` (centre shifts in anchor widths),
    ``dw = ww * log(gw / aw)``, ``dh = wh * log(gh / ah)`` (log size ratios). The weights scale
    the targets to a similar spread, so one loss weight suits all four.

    Args:
        targets: ``N x 4`` xyxy boxes to reach; anchors: ``N x 4`` xyxy starting boxes.
        weights: ``(wx, wy, ww, wh)``; torchvision's detectors use ``(10, 10, 5, 5)``
            (the RPN uses ``(1, 1, 1, 1)``).

    Returns:
        ``N x 4`` float tensor ``dx, dy, dw, dh``.
    """
    wx, wy, ww, wh = weights
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    gw, gh = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
    gx, gy = targets[:, 0] + 0.5 * gw, targets[:, 1] + 0.5 * gh
    return torch.stack([wx * (gx - ax) / aw, wy * (gy - ay) / ah,
                        ww * torch.log(gw / aw), wh * torch.log(gh / ah)], dim=1)


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor,
                 weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)) -> torch.Tensor:
    """Inverse of :func:`encode_boxes`: apply predicted ``dx, dy, dw, dh`` to anchors.

    ``dw`` and ``dh`` are clamped at :data:`BBOX_XFORM_CLIP` first, so an untrained network
    cannot produce ``exp(huge)``.

    Args:
        deltas: ``N x 4``; anchors: ``N x 4`` xyxy.

    Returns:
        ``N x 4`` xyxy boxes.
    """
    wx, wy, ww, wh = weights
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = torch.clamp(deltas[:, 2] / ww, max=BBOX_XFORM_CLIP)
    dh = torch.clamp(deltas[:, 3] / wh, max=BBOX_XFORM_CLIP)
    cx, cy = ax + dx * aw, ay + dy * ah
    w, h = aw * torch.exp(dw), ah * torch.exp(dh)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=1)


# --------------------------------------------------------------------------------------- NMS
def pairwise_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``boxes_a`` (``N x 4``) with every box in ``boxes_b`` (``M x 4``)."""
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    intersection = wh[..., 0] * wh[..., 1]
    return intersection / (area_a[:, None] + area_b[None, :] - intersection)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Take the highest-scoring box left, keep it, drop every remaining box whose IoU with it is
    **greater than** ``iou_threshold``; repeat. Equal scores keep their input order (a stable
    sort), as torchvision's CPU kernel does.

    Args:
        boxes: ``N x 4`` xyxy; scores: ``N``.

    Returns:
        ``int64`` indices of the kept boxes, highest score first.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    ious = pairwise_iou(boxes[order], boxes[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        # compared in float64, as torchvision's kernel does (float IoU vs double threshold)
        suppressed |= ious[i].double() > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """NMS within each class only: boxes of different classes never suppress each other.

    The trick torchvision uses: shift each class's boxes by ``class * (max coordinate + 1)``
    so boxes of different classes cannot overlap, then run one NMS.

    Returns:
        ``int64`` indices of the kept boxes, highest score first.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    offsets = classes.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# -------------------------------------------------------------------------------- focal loss
def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0, reduction: str = "none") -> torch.Tensor:
    """Focal loss (Lin et al., RetinaNet): cross-entropy that fades for easy examples.

    ``FL = -alpha_t * (1 - p_t) ** gamma * log(p_t)``, where ``p_t`` is the probability given
    to the true answer. With ``gamma = 2`` a box already classified at ``p_t = 0.9`` counts 100
    times less than in plain cross-entropy, so the thousands of easy background anchors stop
    drowning the few objects. ``alpha`` weighs positives (``alpha``) against negatives
    (``1 - alpha``); a negative ``alpha`` turns the weighting off.

    Args:
        logits: any shape, raw scores; targets: same shape, 0 or 1 (floats).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
    """
    p = torch.sigmoid(logits)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction != "none":
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return loss


# ----------------------------------------------------------------------------------- anchors
def base_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """Anchors centred on ``(0, 0)``: one per (ratio, size), ordered as torchvision orders them.

    ``aspect_ratio`` is height / width; each anchor keeps the area ``size ** 2``:
    ``h = size * sqrt(ratio)``, ``w = size / sqrt(ratio)``. Coordinates are rounded to whole
    pixels (torchvision does).

    Returns:
        ``len(ratios) * len(sizes) x 4`` xyxy.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_anchors(base: torch.Tensor, feature_size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Copy the base anchors to every cell of a feature map.

    Cell ``(row, col)`` sits at pixel ``(col * stride_x, row * stride_y)`` of the image (its
    top-left corner, as torchvision places them).

    Returns:
        ``rows * cols * A x 4`` xyxy, cell by cell (row-major), the ``A`` anchors of a cell together.
    """
    rows, cols = feature_size
    shift_x = torch.arange(cols, dtype=torch.float32) * stride[1]
    shift_y = torch.arange(rows, dtype=torch.float32) * stride[0]
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack([xx.reshape(-1), yy.reshape(-1)] * 2, dim=1)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


def box_sizes(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sqrt(w * h), h / w)`` of ``N x 4`` xyxy boxes: the two numbers anchors are chosen by."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.sqrt(w * h), h / w


def _wh_iou(wh_a: np.ndarray, wh_b: np.ndarray) -> np.ndarray:
    """IoU of boxes of sizes ``wh_a`` (``N x 2``) and ``wh_b`` (``K x 2``) sharing a centre."""
    inter = np.minimum(wh_a[:, None, 0], wh_b[None, :, 0]) * np.minimum(wh_a[:, None, 1], wh_b[None, :, 1])
    area_a, area_b = wh_a[:, 0] * wh_a[:, 1], wh_b[:, 0] * wh_b[:, 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def kmeans_anchors(boxes: np.ndarray, k: int, iterations: int = 100, seed: int = 0) -> np.ndarray:
    """YOLOv2's anchor clustering: k-means on box ``(w, h)`` with distance ``1 - IoU``.

    (Plain Euclidean k-means would let big boxes dominate; ``1 - IoU`` treats a 4-pixel error
    on a 16-pixel box as worse than on a 64-pixel one.)

    Returns:
        ``k x 2`` ``(w, h)`` cluster centres (medians), smallest area first.
    """
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).astype(np.float64)
    if len(wh) < k:
        raise ValueError(f"{len(wh)} boxes cannot make {k} clusters")
    rng = np.random.default_rng(seed)
    centres = wh[rng.choice(len(wh), k, replace=False)]
    for _ in range(iterations):
        nearest = _wh_iou(wh, centres).argmax(1)
        updated = np.array([np.median(wh[nearest == j], 0) if np.any(nearest == j) else centres[j]
                            for j in range(k)])
        if np.allclose(updated, centres):
            break
        centres = updated
    return centres[np.argsort(centres.prod(1))]


def suggest_anchors(boxes: np.ndarray, n_sizes: int = 3, n_ratios: int = 3, scale: float = 1.0,
                    size_quantiles: tuple[float, float] = (0.05, 0.95),
                    ratio_quantiles: tuple[float, float] = (0.1, 0.9),
                    min_ratio_spread: float = 1.3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Anchor sizes and aspect ratios from the training boxes' quantiles.

    Sizes sit at ``n_sizes`` evenly spaced quantiles of ``sqrt(w * h)`` from
    ``size_quantiles[0]`` to ``size_quantiles[1]`` (so the small and the large objects both get
    an anchor close to them), ratios likewise of ``h / w``. When the boxes hardly vary in shape
    (the extreme ratios differ by less than ``min_ratio_spread`` times) one ratio, the median,
    is returned: more would only multiply the anchors without fitting better. All sizes are
    multiplied by ``scale`` (the detector's resize factor: 160 px images shown at 320 px need 2).

    Returns:
        ``(sizes, aspect_ratios)``, rounded (sizes to whole pixels, ratios to 2 decimals).
    """
    size, ratio = box_sizes(boxes)
    sizes = tuple(float(round(v * scale)) for v in np.quantile(size, np.linspace(*size_quantiles, n_sizes)))
    ratios = np.quantile(ratio, np.linspace(*ratio_quantiles, n_ratios)) if n_ratios > 1 else np.median(ratio)[None]
    if ratios.max() / ratios.min() < min_ratio_spread:
        ratios = np.median(ratio)[None]
    return sizes, tuple(float(round(v, 2)) for v in ratios)


def anchor_coverage(boxes: np.ndarray, sizes: Sequence[float], aspect_ratios: Sequence[float],
                    iou_threshold: float = 0.5) -> tuple[float, float]:
    """How well anchor shapes fit the boxes, ignoring position.

    Returns:
        ``(mean best IoU, fraction of boxes whose best anchor has IoU >= iou_threshold)``.
        Positions are ignored (each box is compared with each anchor shape centred on it), so
        this is an upper bound on what the anchor grid gives.
    """
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).astype(np.float64)
    anchors = base_anchors(sizes, aspect_ratios).numpy().astype(np.float64)
    anchor_wh = np.stack([anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]], 1)
    best = _wh_iou(wh, anchor_wh).max(1)
    return float(best.mean()), float((best >= iou_threshold).mean())


def plot_anchor_fit(boxes: np.ndarray, anchor_sets: dict[str, tuple[Sequence[float], Sequence[float]]],
                    title: str = "Box sizes and anchor shapes") -> Any:
    """Scatter box ``(w, h)`` with each anchor set's shapes on top; the legend gives coverage.

    Args:
        boxes: ``N x 4`` xyxy (at the scale the anchors are meant for).
        anchor_sets: ``{name: (sizes, aspect_ratios)}``.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1], s=6, alpha=0.35, color="grey",
               label=f"{len(boxes)} training boxes")
    for (name, (sizes, ratios)), marker in zip(anchor_sets.items(), "o^sDv*"):
        anchors = base_anchors(sizes, ratios).numpy()
        mean_iou, covered = anchor_coverage(boxes, sizes, ratios)
        ax.scatter(anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1], s=70, marker=marker,
                   label=f"{name}: mean best IoU {mean_iou:.2f}, {covered:.0%} >= 0.5")
    ax.set(xlabel="width (px)", ylabel="height (px)", title=title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- operating point of a detector
def precision_recall_at(predictions: Sequence[Any], ground_truth: Sequence[Any], score_threshold: float,
                        iou_threshold: float = 0.5) -> tuple[float, float, int]:
    """Precision and recall of the boxes a detector *keeps* at ``score_threshold``.

    mAP scores the whole ranking; an application keeps only boxes above one confidence. Boxes
    are matched per image and class as COCO does (:func:`cvhelpers.detection_metrics.match_predictions`).

    Args:
        predictions: per-image dicts (``boxes``, ``scores``, ``labels``).
        ground_truth: per-image ``AnnotatedImage``/``Scene`` objects.

    Returns:
        ``(precision, recall, boxes kept)``; precision is 1.0 when nothing is kept.
    """
    from cvhelpers.detection_metrics import as_detections, as_ground_truth, box_iou, match_predictions

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
