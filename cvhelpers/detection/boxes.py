"""Boxes inside a detector, written plainly and checked against torchvision: IoU, box coding, NMS.

* box regression targets: :func:`encode_boxes` / :func:`decode_boxes` (torchvision's
  ``BoxCoder``: R-CNN's ``dx, dy, dw, dh`` with weights ``10, 10, 5, 5``);
* non-maximum suppression: :func:`nms`, :func:`batched_nms` (``torchvision.ops.nms`` /
  ``batched_nms``);
* IoU: :func:`box_iou` (``torchvision.ops.box_iou``; also the COCO metrics' IoU).

Focal loss: :mod:`cvhelpers.detection.losses`; anchors: :mod:`cvhelpers.detection.anchors`.

Boxes are ``xyxy`` pixels (``x2, y2`` exclusive), as everywhere in the course. The code favours
reading over speed: use torchvision's versions in a real model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cvhelpers.evaluation.metrics import to_numpy

__all__ = ["BBOX_XFORM_CLIP", "encode_boxes", "decode_boxes", "box_iou", "iou_from_overlap", "nms",
           "batched_nms"]

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
def box_iou(boxes_a: Any, boxes_b: Any, crowd_b: Any | None = None) -> Any:
    """Intersection over union of every box in ``a`` (``N x 4`` xyxy) with every box in ``b``
    (``M x 4``): ``N x M`` in ``[0, 1]``, 0 where both boxes are empty.

    Two tensors give a tensor of their dtype (what :func:`nms` needs, as torchvision computes
    it); anything else (arrays, lists) gives ``float64`` NumPy, as the COCO metrics need.

    Args:
        crowd_b: ``M`` bools (NumPy path only); for a crowd region COCO divides the
            intersection by the area of box ``a`` alone ("how much of the prediction lies
            inside the crowd").

    >>> box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]]).round(3).tolist()
    [[0.333]]
    """
    if isinstance(boxes_a, torch.Tensor) and isinstance(boxes_b, torch.Tensor):
        if crowd_b is not None:
            raise ValueError("crowd_b works on NumPy boxes; pass arrays")
        area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
        area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
        top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
        bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
        wh = (bottom_right - top_left).clamp(min=0)
        intersection = wh[..., 0] * wh[..., 1]
        union = area_a[:, None] + area_b[None, :] - intersection
        return torch.where(union > 0, intersection / union.clamp(min=torch.finfo(union.dtype).tiny), 0)
    a = to_numpy(boxes_a).astype(np.float64).reshape(-1, 4)
    b = to_numpy(boxes_b).astype(np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    # The overlap of two boxes is a box too: its left edge is the larger of the two left edges...
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 2], b[None, :, 2])
    bottom = np.minimum(a[:, None, 3], b[None, :, 3])
    intersection = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    return iou_from_overlap(intersection, area_a[:, None] + area_b[None, :] - intersection,
                            area_a, crowd_b)


def iou_from_overlap(intersection: np.ndarray, union: np.ndarray, area_a: np.ndarray,
                     crowd_b: Any | None = None) -> np.ndarray:
    """``intersection / union`` (0 where the union is empty); against a crowd region of ``b``
    the union is the area of ``a`` alone, as COCO scores crowds. Shared by box and mask IoU."""
    if crowd_b is not None:
        crowd = to_numpy(crowd_b).astype(bool).reshape(1, -1)
        union = np.where(crowd, area_a[:, None], union)
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


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
    ious = box_iou(boxes[order], boxes[order])
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
