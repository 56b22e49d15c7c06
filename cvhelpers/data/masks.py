"""Folders of images and class-index masks (semantic segmentation), read and checked.

:func:`load_segmentation_folder` pairs ``images/a.jpg`` with ``masks/a.png`` and checks every
mask (mode L or P, the image's size, class ids within the label map, or an ``ignore`` value);
errors are :class:`~cvhelpers.data.validate.DatasetError` naming the file.
:mod:`cvhelpers.segmentation.data` re-exports both functions beside its dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvhelpers.data.validate import (DatasetError, PathLike, check_mask, load_image, load_label_mask, pair_images_and_labels)

__all__ = ["check_class_mask", "load_segmentation_folder"]


def check_class_mask(mask: np.ndarray, num_values: int, source: str, ignore_value: int | None = None) -> np.ndarray:
    """Refuse mask values outside ``0 .. num_values - 1`` (a class id missing from the label map).

    Args:
        mask: ``H x W`` integer mask.
        num_values: background + object classes (``len(class_names) + 1``).
        source: the mask's file path, which starts the error message.
        ignore_value: a value allowed besides the classes: pixels nothing is scored on
            (VOC and labelme write 255 on object borders and "ignore" regions).
    """
    values = np.unique(mask)
    bad = values[((values < 0) | (values >= num_values)) & (values != (-1 if ignore_value is None else ignore_value))]
    if len(bad):
        raise DatasetError(
            f"{source}: mask holds value(s) {bad.tolist()} but the label map has only "
            f"{num_values} values (0 = background, 1..{num_values - 1} = classes); is this a "
            f"colour mask, a VOC 255 'ignore' border, or the wrong class list?")
    return mask


def load_segmentation_folder(images_dir: PathLike, masks_dir: PathLike, class_names: Sequence[str],
                             ignore_value: int | None = None
                             ) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Read image/mask pairs matched by file stem (``images/a.jpg`` <-> ``masks/a.png``).

    Every mask is checked: a mode L/P PNG, the image's size, values within ``0 ..
    len(class_names)`` (or ``ignore_value``). Errors are :class:`DatasetError` naming the file.

    Returns:
        ``(images, masks, file_names)``: ``uint8 H x W x 3`` images, ``uint8 H x W`` masks.
    """
    image_paths = sorted(p for p in Path(images_dir).iterdir() if p.is_file())
    mask_paths = sorted(Path(masks_dir).glob("*.png"))
    images, masks, names = [], [], []
    for image_path, mask_path in pair_images_and_labels(image_paths, mask_paths):
        image = load_image(image_path)
        mask = check_mask(load_label_mask(mask_path), image.shape, str(mask_path))
        masks.append(check_class_mask(mask, len(class_names) + 1, str(mask_path), ignore_value))
        images.append(image)
        names.append(image_path.name)
    return images, masks, names
