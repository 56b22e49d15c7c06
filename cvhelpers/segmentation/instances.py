"""Instance segmentation helpers for notebook 07: drawing instances and real labelme/VOC examples.

The models live elsewhere: Mask R-CNN in :mod:`cvhelpers.detection.models` (``mask_rcnn_lite0``,
``train_detector``, ``predict_detector``), YOLO-seg in :mod:`cvhelpers.detection.yolo`
(``task="segment"``); both return per-image dicts with ``masks`` (``bool N x H x W``) that
:func:`cvhelpers.coco_eval.evaluate_coco` scores with ``iou_type="segm"``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvhelpers.data.coco import AnnotatedImage, read_coco
from cvhelpers.data.validate import PathLike
from cvhelpers.viz import draw_boxes, overlay_mask

__all__ = ["LABELME_COCO", "find_labelme_coco", "read_labelme_coco", "instance_map", "draw_instances",
           "keep_confident"]

#: Where Debian's ``labelme-examples`` package puts its COCO export of 3 PASCAL VOC photos.
LABELME_COCO = Path("/usr/share/doc/labelme-examples/examples/instance_segmentation/"
                    "data_dataset_coco/annotations.json")


def find_labelme_coco(data_dir: PathLike | None = None) -> Path | None:
    """The labelme example's ``annotations.json``: first ``<data_dir>/labelme_coco/``, then the
    Debian package's path (``apt install labelme-examples``); ``None`` when neither exists."""
    candidates = ([Path(data_dir) / "labelme_coco" / "annotations.json"] if data_dir else []) + [LABELME_COCO]
    return next((p for p in candidates if p.is_file()), None)


def read_labelme_coco(json_path: PathLike) -> tuple[list[AnnotatedImage], list[str]]:
    """Read labelme's COCO export through :func:`cvhelpers.data.coco.read_coco`.

    labelme numbers its categories from 0 (``_background_``), which the course reader refuses
    without a name list (category ids must be 1..K); the names are taken from the file, in id
    order, so class id = position in that list (``_background_`` = 0, ``aeroplane`` = 1, ...).
    Every polygon, box and image size is checked on the way.

    Returns:
        ``(samples, class_names)`` as :func:`read_coco` returns them.
    """
    json_path = Path(json_path)
    categories = json.loads(json_path.read_text(encoding="utf-8"))["categories"]
    names = [c["name"] for c in sorted(categories, key=lambda c: int(c["id"]))]
    return read_coco(json_path, json_path.parent, names)


def instance_map(masks: np.ndarray) -> np.ndarray:
    """``bool N x H x W`` instance masks -> ``int64 H x W`` map: 0 background, ``k + 1`` instance
    ``k`` (a later instance wins where masks overlap)."""
    masks = np.asarray(masks, bool)
    out = np.zeros(masks.shape[1:], np.int64)
    for k, mask in enumerate(masks):
        out[mask] = k + 1
    return out


def draw_instances(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray | None = None,
                   labels: np.ndarray | None = None, class_names: Sequence[str] | None = None,
                   scores: np.ndarray | None = None, alpha: float = 0.55) -> np.ndarray:
    """Each instance in its own colour (by instance, not class: two touching circles differ),
    with its box and ``class score`` caption when ``boxes`` are given.

    Returns:
        ``uint8 H x W x 3``.
    """
    if len(masks) == 0:
        shown = np.asarray(image, np.uint8).copy()
    else:
        shown = overlay_mask(image, instance_map(masks), alpha)
    if boxes is not None and len(boxes):
        shown = draw_boxes(shown, boxes, labels, class_names, scores)
    return shown


def keep_confident(prediction: dict[str, Any], threshold: float = 0.5) -> dict[str, Any]:
    """The part of one per-image prediction dict whose ``scores`` reach ``threshold`` (to draw)."""
    keep = np.asarray(prediction["scores"]) >= threshold
    return {k: (np.asarray(v)[keep] if isinstance(v, np.ndarray) and len(v) == len(keep) else v)
            for k, v in prediction.items()}
