"""Classification datasets as one folder per class (torchvision's ``ImageFolder`` layout).

Layout::

    root/<class name>/<index>.png

Class ids are the positions of the class folders sorted by name, as in
``torchvision.datasets.ImageFolder``, so both give the same labels.

Example:
    >>> write_image_folder(images, labels, "datasets/shapes_cls", ["circle", "square"])  # doctest: +SKIP
    >>> paths, labels, class_names = read_image_folder("datasets/shapes_cls")           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cvhelpers.data.validate import DatasetError, PathLike, check_class_ids, load_image

IMAGE_SUFFIXES = {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}


def write_image_folder(
    images: Sequence[np.ndarray],
    labels: Sequence[int] | np.ndarray,
    root: PathLike,
    class_names: Sequence[str],
) -> Path:
    """Save images as ``root/<class name>/<index>.png``.

    Args:
        images: ``uint8`` arrays, ``H x W x 3`` RGB or ``H x W`` grey (sizes may differ).
        labels: 0-based class id of each image.
        root: Output folder; a folder is created for every class name, even one without
            images (:func:`read_image_folder` will then report it as empty).
        class_names: Name of each class id. Give them in sorted order if the folder will be
            read back (by this module or torchvision): class ids come from the sorted names.

    Returns:
        ``Path(root)``. ``<index>`` is the image's position in ``images``, zero-padded so
        that file order is input order.
    """
    root = Path(root)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    for name in class_names:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"class name {name!r} cannot be a folder name")
    ids = check_class_ids(labels, len(class_names), f"{root} (labels argument)")
    for name in class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(len(images) - 1)))
    for index, (image, label) in enumerate(zip(images, ids.tolist())):
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise ValueError(f"image {index}: expected uint8 HxWx3 or HxW, got {array.dtype} {array.shape}")
        Image.fromarray(array).save(root / class_names[label] / f"{index:0{digits}d}.png")
    return root


def read_image_folder(
    root: PathLike, check_images: bool = True
) -> tuple[list[Path], np.ndarray, list[str]]:
    """List an image folder dataset and check it.

    Args:
        root: Folder with one sub-folder per class (hidden folders are skipped). Files are
            found recursively inside each class folder; only image extensions count.
        check_images: Decode every image with :func:`~cvhelpers.data.validate.load_image`, so
            a corrupt file fails here and not in the middle of an epoch.

    Returns:
        ``(paths, labels, class_names)``: image paths sorted by class then path, ``int64``
        labels (0-based, position of the class in ``class_names``), class names sorted.

    Raises:
        DatasetError: missing root, no class folders, a class folder without images (message
            starts with that folder), or an unreadable image (message starts with the image).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: folder not found")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{root}: no class folders; expected root/<class name>/<image>")
    paths: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(
                f"{class_dir}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "add images or remove the folder"
            )
        paths.extend(files)
        labels.extend([label] * len(files))
    if check_images:
        for path in paths:
            load_image(path)
    return paths, np.array(labels, dtype=np.int64), [p.name for p in class_dirs]
