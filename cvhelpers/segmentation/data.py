"""Semantic segmentation data: folders of images and class-index masks, and the dataset the
models train on.

* :func:`load_segmentation_folder`: ``images/a.jpg`` + ``masks/a.png`` pairs, every mask checked
  (mode, size, class ids); errors name the file (it lives in :mod:`cvhelpers.data.masks`, beside
  the other readers, and is re-exported here).
* :class:`SegmentationDataset`: ``(image, mask)`` tensors with random flips and 90-degree turns,
  and optionally random crops centred on the objects.
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

    ``rotate=False`` keeps the left-right flip only, for objects that are always photographed
    upright (a 90-degree turn would make a trouser look like something else).

    ``crop=c`` (with ``augment=True`` only) returns a random ``c x c`` window instead of the whole image:
    with probability ``p_object`` it is centred on a random object pixel (mask > 0), shifted by up
    to a quarter of the window, otherwise placed anywhere. Fewer background pixels per item, so
    more objects per second of training; the network is fully convolutional, so it still
    predicts whole images after. ``c`` must divide by 32 for the smp models and fit the images.
    """

    def __init__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], augment: bool = False,
                 mean: Sequence[float] = LITE0_MEAN, std: Sequence[float] = LITE0_STD, rotate: bool = True,
                 crop: int | None = None, p_object: float = 0.9) -> None:
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        self.images, self.masks, self.augment, self.rotate = list(images), list(masks), augment, rotate
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.crop, self.p_object = crop, p_object
        if crop is not None:
            if not 0 <= p_object <= 1:
                raise ValueError(f"p_object must be in [0, 1], got {p_object}")
            for i, mask in enumerate(self.masks):
                if min(mask.shape[:2]) < crop:
                    raise ValueError(f"crop {crop} does not fit image {i} of size {mask.shape[1]} x {mask.shape[0]}")
            self.object_pixels = [np.argwhere(mask > 0) for mask in self.masks]

    def _crop(self, index: int, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = int(self.crop)  # type: ignore[arg-type]
        height, width = mask.shape[:2]
        pixels = self.object_pixels[index]
        if len(pixels) and bool(torch.rand(()) < self.p_object):
            cy, cx = (int(v) for v in pixels[int(torch.randint(len(pixels), ()))])
            dy, dx = (int(v) for v in torch.randint(-(c // 4), c // 4 + 1, (2,)))
            top = int(np.clip(cy - c // 2 + dy, 0, height - c))
            left = int(np.clip(cx - c // 2 + dx, 0, width - c))
        else:
            top = int(torch.randint(0, height - c + 1, ()))
            left = int(torch.randint(0, width - c + 1, ()))
        return image[top:top + c, left:left + c], mask[top:top + c, left:left + c]

    @classmethod
    def from_scenes(cls, scenes: Sequence[Any], **kwargs: Any) -> SegmentationDataset:
        """From :func:`cvhelpers.data.scenes.load_scenes` output (``image``, ``semantic``)."""
        return cls([s.image for s in scenes], [s.semantic for s in scenes], **kwargs)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.augment:
            if self.crop is not None:
                image, mask = self._crop(index, image, mask)
            k, flip = (int(v) for v in torch.randint(0, 4, (2,)))
            flip = flip % 2 == 1
            if self.rotate:
                image, mask = np.rot90(image, k), np.rot90(mask, k)
            if flip:
                image, mask = image[:, ::-1], mask[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
        return (x - self.mean) / self.std, torch.from_numpy(np.ascontiguousarray(mask)).long()
