"""Semantic segmentation data: folders of images and class-index masks, and the dataset the
models train on.

* :func:`load_segmentation_folder`: ``images/a.jpg`` + ``masks/a.png`` pairs, every mask checked
  (mode, size, class ids); errors name the file.
* :class:`SegmentationDataset`: ``(image, mask)`` tensors with random flips and 90-degree turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cvhelpers.data.validate import (DatasetError, PathLike, check_mask, load_image, load_label_mask, pair_images_and_labels)
from cvhelpers.models.pretrained import LITE0_MEAN, LITE0_STD

__all__ = ["check_class_mask", "load_segmentation_folder", "SegmentationDataset"]


def check_class_mask(mask: np.ndarray, num_values: int, source: str) -> np.ndarray:
    """Refuse mask values outside ``0 .. num_values - 1`` (a class id missing from the label map).

    Args:
        mask: ``H x W`` integer mask.
        num_values: background + object classes (``len(class_names) + 1``).
        source: the mask's file path, which starts the error message.
    """
    values = np.unique(mask)
    bad = values[(values < 0) | (values >= num_values)]
    if len(bad):
        raise DatasetError(
            f"{source}: mask holds value(s) {bad.tolist()} but the label map has only "
            f"{num_values} values (0 = background, 1..{num_values - 1} = classes); is this a "
            f"colour mask, a VOC 255 'ignore' border, or the wrong class list?")
    return mask


def load_segmentation_folder(images_dir: PathLike, masks_dir: PathLike, class_names: Sequence[str]
                             ) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Read image/mask pairs matched by file stem (``images/a.jpg`` <-> ``masks/a.png``).

    Every mask is checked: a mode L/P PNG, the image's size, values within ``0 ..
    len(class_names)``. Errors are :class:`DatasetError` naming the file.

    Returns:
        ``(images, masks, file_names)``: ``uint8 H x W x 3`` images, ``uint8 H x W`` masks.
    """
    image_paths = sorted(p for p in Path(images_dir).iterdir() if p.is_file())
    mask_paths = sorted(Path(masks_dir).glob("*.png"))
    images, masks, names = [], [], []
    for image_path, mask_path in pair_images_and_labels(image_paths, mask_paths):
        image = load_image(image_path)
        mask = check_mask(load_label_mask(mask_path), image.shape, str(mask_path))
        masks.append(check_class_mask(mask, len(class_names) + 1, str(mask_path)))
        images.append(image)
        names.append(image_path.name)
    return images, masks, names


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
