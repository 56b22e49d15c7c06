"""Semantic segmentation data: folders of images and class-index masks, and the dataset the
models train on.

* :func:`load_segmentation_folder`: ``images/a.jpg`` + ``masks/a.png`` pairs, every mask checked
  (mode, size, class ids); errors name the file (it lives in :mod:`cvhelpers.data.masks`, beside
  the other readers, and is re-exported here).
* :class:`SegmentationDataset`: ``(image, mask)`` tensors with random flips and 90-degree turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cvhelpers.data.masks import check_class_mask, load_segmentation_folder
from cvhelpers.models.pretrained import LITE0_MEAN, LITE0_STD

__all__ = ["check_class_mask", "load_segmentation_folder", "SegmentationDataset"]


class SegmentationDataset(Dataset):
    """Images and semantic masks as model inputs.

    Item ``i`` is ``(image, mask)``: ``float32 3 x H x W`` normalised with ``mean``/``std``
    (default: the Lite0 weights' ``(x*255 - 127) / 128``) and ``int64 H x W`` class ids.
    ``augment=True`` applies a random flip / 90-degree rotation (the same to image and mask),
    drawn from torch's global generator: seeded by ``seed_everything`` in the main process,
    per worker and per epoch in ``DataLoader`` workers (see :mod:`cvhelpers.data.loading`),
    saved and restored by the engine's checkpoints.
    """

    def __init__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], augment: bool = False,
                 mean: Sequence[float] = LITE0_MEAN, std: Sequence[float] = LITE0_STD) -> None:
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        self.images, self.masks, self.augment = list(images), list(masks), augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    @classmethod
    def from_scenes(cls, scenes: Sequence[Any], **kwargs: Any) -> SegmentationDataset:
        """From :func:`cvhelpers.data.scenes.load_scenes` output (``image``, ``semantic``)."""
        return cls([s.image for s in scenes], [s.semantic for s in scenes], **kwargs)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.augment:
            k, flip = (int(v) for v in torch.randint(0, 4, (2,)))
            flip = flip % 2 == 1
            image, mask = np.rot90(image, k), np.rot90(mask, k)
            if flip:
                image, mask = image[:, ::-1], mask[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
        return (x - self.mean) / self.std, torch.from_numpy(np.ascontiguousarray(mask)).long()
