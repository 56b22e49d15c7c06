"""Anchors: the boxes a detector starts from, and choosing them from the data.

:func:`base_anchors` and :func:`grid_anchors` build them as torchvision's ``AnchorGenerator``
does; :func:`suggest_anchors`, :func:`kmeans_anchors`, :func:`anchor_coverage` and
:func:`plot_anchor_fit` fit sizes and aspect ratios to the training boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["base_anchors", "grid_anchors", "box_sizes", "kmeans_anchors", "suggest_anchors",
           "anchor_coverage", "plot_anchor_fit"]


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
