"""Detection data for torchvision detectors: annotated images as ``(image, target)`` samples.

The same data in Detectron2's format: :mod:`cvhelpers.detection.detectron2`; in YOLO's:
:mod:`cvhelpers.data.yolo`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["DetectionDataset", "collate_detection"]


class DetectionDataset(Dataset):
    """Annotated images as torchvision detection samples.

    Item ``i`` is ``(image, target)``: ``image`` ``float32`` ``3 x H x W`` in ``[0, 1]`` (the
    detector normalises inside), ``target`` a dict with ``boxes`` ``float32`` ``N x 4`` xyxy,
    ``labels`` ``int64`` **1-based** (class id + 1), ``masks`` ``uint8`` ``N x H x W`` (when the
    sample has masks), ``image_id``, ``area``, ``iscrowd``.

    Args:
        samples: ``AnnotatedImage``/``Scene`` objects (0-based labels).
        augment: random horizontal flips (boxes and masks flipped too), drawn from torch's
            global generator: seeded by ``seed_everything`` in the main process, per worker and
            per epoch in ``DataLoader`` workers (:mod:`cvhelpers.data.loading`), saved and
            restored by the engine's checkpoints.
        with_masks: include ``masks`` (Mask R-CNN needs them; Faster R-CNN ignores them).
    """

    def __init__(self, samples: Sequence[Any], augment: bool = False, with_masks: bool = True) -> None:
        self.samples = samples
        self.augment = augment
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self.samples[index]
        image = np.asarray(sample.image)
        boxes = np.asarray(sample.boxes, np.float32).reshape(-1, 4).copy()
        masks = sample.masks if self.with_masks and sample.masks is not None else None
        if self.augment and bool(torch.rand(()) < 0.5):
            width = image.shape[1]
            image = image[:, ::-1]
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
            masks = None if masks is None else masks[:, :, ::-1]
        target = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.as_tensor(np.asarray(sample.labels), dtype=torch.int64) + 1,
            "image_id": torch.tensor(index),
            "area": torch.from_numpy((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])),
            "iscrowd": torch.zeros(len(boxes), dtype=torch.int64),
        }
        if masks is not None:
            target["masks"] = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8))
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
        return tensor, target


def collate_detection(batch: Sequence[Any]) -> tuple[tuple, ...]:
    """Keep images and targets as tuples: detection images may differ in size."""
    return tuple(zip(*batch))
