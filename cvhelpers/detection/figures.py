"""Pictures of the detection mechanisms: anchors on an image, box encoding, NMS before and after.

Each function draws on the image at the size the model sees it, with pixel axes, and returns a
matplotlib ``Figure`` (titles, axis labels in pixels, a legend). The numbers drawn come from the
same functions the lessons test against torchvision (:mod:`cvhelpers.detection.boxes`).

>>> fig = plot_nms(image, boxes, scores, iou_threshold=0.5)        # doctest: +SKIP
>>> fig.savefig("nms.png")                                          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle

from cvhelpers.detection.anchors import base_anchors
from cvhelpers.detection.boxes import batched_nms, box_iou, encode_boxes, nms
from cvhelpers.viz import PALETTE, to_rgb_uint8

__all__ = ["anchors_at", "plot_anchors_on_image", "plot_box_encoding", "plot_nms"]


def _boxes(x: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(-1, 4)


def _rgb(color: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(c / 255 for c in color)  # type: ignore[return-value]


def _rectangle(ax: Any, box: Sequence[float], **style: Any) -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, **style))


def _show(ax: Any, image: Any, title: str) -> None:
    rgb = to_rgb_uint8(image)
    ax.imshow(rgb, extent=(0, rgb.shape[1], rgb.shape[0], 0))
    ax.set(title=title, xlabel="x (pixels)", ylabel="y (pixels)", xlim=(0, rgb.shape[1]), ylim=(rgb.shape[0], 0))


def anchors_at(centres: Any, sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """Every anchor shape (``sizes`` x ``aspect_ratios``, torchvision's ``h / w`` convention)
    centred on each point of ``centres`` (``N x 2`` pixel ``x, y``): ``N*S*R x 4`` xyxy boxes."""
    base = base_anchors(sizes, aspect_ratios)  # S*R x 4 around (0, 0)
    points = torch.as_tensor(np.asarray(centres, dtype=np.float32)).reshape(-1, 2)
    shift = torch.cat([points, points], dim=1)  # N x 4
    return (shift[:, None, :] + base[None, :, :]).reshape(-1, 4)


def plot_anchors_on_image(image: Any, gt_boxes: Any, sizes: Sequence[float],
                          aspect_ratios: Sequence[float], iou_threshold: float = 0.5,
                          title: str | None = None) -> Figure:
    """Anchors drawn where they live: every shape centred on each object, on the model's input.

    An anchor whose IoU with the object reaches ``iou_threshold`` (a positive for the RPN) is
    drawn solid green, the others dashed grey; the object's box is white. This is what "fit the
    anchors to the objects" means: an object with no green anchor is learnt from nothing.

    Args:
        image: the image *resized to the model's input size* (boxes in the same pixels).
        gt_boxes: ``N x 4`` xyxy pixel boxes of the objects.
        sizes, aspect_ratios: the anchor generator's settings (one level's or all of them).

    Returns:
        A figure with one image axis; ``fig.positives`` lists, per object, how many anchors
        centred on it reach the threshold.
    """
    gt = _boxes(gt_boxes)
    fig, ax = plt.subplots(figsize=(6, 6))
    height, width = to_rgb_uint8(image).shape[:2]
    _show(ax, image, title or f"Anchors centred on each object, at the model's {width} x {height} px input")
    positives = []
    for box in gt:
        centre = ((box[:2] + box[2:]) / 2)[None]
        anchors = anchors_at(centre, sizes, aspect_ratios)
        ious = box_iou(anchors, box[None])[:, 0]
        positives.append(int((ious >= iou_threshold).sum()))
        for anchor, iou in zip(anchors, ious):
            hit = bool(iou >= iou_threshold)
            _rectangle(ax, anchor.tolist(), edgecolor="lime" if hit else "0.75",
                       linestyle="-" if hit else "--", linewidth=1.6 if hit else 0.8)
        _rectangle(ax, box.tolist(), edgecolor="white", linewidth=2.2)
    ax.plot([], [], color="white", linewidth=2.2, label="object")
    ax.plot([], [], color="lime", linewidth=1.6, label=f"anchor, IoU >= {iou_threshold}")
    ax.plot([], [], color="0.75", linestyle="--", linewidth=0.8, label=f"anchor, IoU < {iou_threshold}")
    ax.legend(loc="lower right", fontsize=8, facecolor="0.2", labelcolor="white")
    fig.tight_layout()
    fig.positives = positives  # type: ignore[attr-defined]
    return fig


def plot_box_encoding(image: Any, anchors: Any, targets: Any,
                      weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
                      title: str = "Box encoding: what the regression head predicts") -> Figure:
    """Each anchor (dashed) with an arrow from its centre to its object's centre (solid), and
    the four regression targets ``(dx, dy, dw, dh)`` of :func:`encode_boxes` written beside it.

    ``dx, dy`` are the centre shift in units of the anchor's width and height (times the
    weights), ``dw, dh`` the log of the size ratio: the head learns these, not pixels.

    Returns:
        A figure with one image axis; ``fig.deltas`` holds the ``N x 4`` targets drawn.
    """
    anchor_t, target_t = _boxes(anchors), _boxes(targets)
    deltas = encode_boxes(target_t, anchor_t, weights)
    fig, ax = plt.subplots(figsize=(6, 6))
    _show(ax, image, title)
    for k, (anchor, target, d) in enumerate(zip(anchor_t, target_t, deltas)):
        color = _rgb(PALETTE[k % len(PALETTE)])
        _rectangle(ax, anchor.tolist(), edgecolor=color, linestyle="--", linewidth=1.2)
        _rectangle(ax, target.tolist(), edgecolor=color, linewidth=2.0)
        start, end = ((anchor[:2] + anchor[2:]) / 2).tolist(), ((target[:2] + target[2:]) / 2).tolist()
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color=color, linewidth=1.5))
        ax.text(float(target[0]), float(target[3]) + 2, "dx %+.2f dy %+.2f\ndw %+.2f dh %+.2f" % tuple(d.tolist()),
                color="white", fontsize=7, va="top", bbox=dict(facecolor=color, alpha=0.8, pad=1, linewidth=0))
    ax.plot([], [], color="0.5", linestyle="--", label="anchor")
    ax.plot([], [], color="0.5", linewidth=2.0, label="object (target)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.deltas = deltas  # type: ignore[attr-defined]
    return fig


def plot_nms(image: Any, boxes: Any, scores: Any, iou_threshold: float = 0.5,
             score_threshold: float = 0.0, max_boxes: int = 100, labels: Any | None = None,
             title: str = "Non-maximum suppression") -> Figure:
    """The same detections before and after greedy NMS, side by side.

    Boxes below ``score_threshold`` are dropped first (and only the ``max_boxes`` best are
    drawn); line strength follows the score. The right panel keeps what :func:`nms` keeps, or,
    with ``labels``, what :func:`batched_nms` keeps (per class, as detectors run it).

    Returns:
        A figure with two image axes; ``fig.kept`` holds the indices (into ``boxes``) NMS kept.
    """
    box_t, score_t = _boxes(boxes), torch.as_tensor(np.asarray(scores, dtype=np.float32)).reshape(-1)
    order = torch.argsort(score_t, descending=True)
    order = order[score_t[order] >= score_threshold][:max_boxes]
    if labels is None:
        keep = order[nms(box_t[order], score_t[order], iou_threshold)]
    else:
        label_t = torch.as_tensor(np.asarray(labels)).reshape(-1)
        keep = order[batched_nms(box_t[order], score_t[order], label_t[order], iou_threshold)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.5))
    for ax, shown, name in ((axes[0], order, "before"), (axes[1], keep, "after")):
        _show(ax, image, f"{name} NMS: {len(shown)} boxes" + (f" (IoU > {iou_threshold} suppressed)" if name == "after" else ""))
        for i in shown.tolist():
            s = float(score_t[i])
            _rectangle(ax, box_t[i].tolist(), edgecolor=(1.0, 0.85 * (1 - s), 0.0), linewidth=0.6 + 2.4 * s, alpha=0.35 + 0.65 * s)
    fig.suptitle(f"{title}: line strength and colour follow the score (yellow low, red high)")
    fig.tight_layout()
    fig.kept = keep  # type: ignore[attr-defined]
    return fig
