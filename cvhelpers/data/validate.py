"""Bad-input checks shared by every dataset reader, and the one error they raise.

Every problem found in a file raises :class:`DatasetError`, a ``ValueError`` whose message
starts with the offending path (and ``:line`` for a line of a label file), then says what is
wrong and what to do about it. A learner who sees the error should not need a debugger.

Conventions (see ``docs/DESIGN.md``): images are ``uint8`` ``H x W x 3`` RGB arrays; boxes are
absolute pixel ``xyxy`` ``float32`` ``N x 4`` with an exclusive right/bottom edge; class ids are
0-based; instance masks are ``bool`` ``N x H x W``.

Example:
    >>> image = load_image("photo.jpg")          # doctest: +SKIP
    >>> image.shape, image.dtype                 # doctest: +SKIP
    ((480, 640, 3), dtype('uint8'))
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

PathLike = str | os.PathLike

# Pixels under a transparent alpha are shown on this colour (what most viewers show on a page).
ALPHA_BACKGROUND = (255, 255, 255)
# Boxes may poke out of the image by this much (pixels): rounding in converters does that.
BOX_TOLERANCE_PX = 1.0
# Modes that convert to RGB without losing anything ("strict" accepts only these).
_LOSSLESS_MODES = {"RGB", "L", "1", "P"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class DatasetError(ValueError):
    """A file of a dataset is missing, unreadable or inconsistent.

    The message starts with the offending path (``path`` or ``path:line``).
    """


# --------------------------------------------------------------------------------------- images
def load_image(path: PathLike, mode_policy: str = "convert") -> np.ndarray:
    """Read an image file as an ``H x W x 3`` ``uint8`` RGB array, or raise :class:`DatasetError`.

    Policy, applied in this order:

    1. The file must exist, be non-empty, pass PIL's ``verify()`` and decode completely: a
       truncated file is an error even if ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is set
       elsewhere (that flag would silently fill the missing part with grey).
    2. EXIF orientation is applied (``ImageOps.exif_transpose``): the array is upright as a
       photo viewer shows it, and ``W x H`` may be swapped compared with the stored pixels.
       Boxes drawn in a labelling tool on the upright image then match.
    3. Colour modes (multi-frame files such as GIF/TIFF use their first frame):

       - ``RGB``: as is. ``L``, ``1``, ``P`` (no transparency): converted to RGB (lossless).
       - ``RGBA``, ``LA``, ``PA``, ``P`` with transparency: composited on **white**
         (:data:`ALPHA_BACKGROUND`), so transparent pixels look as in a viewer instead of
         showing whatever colour happens to be stored under alpha 0.
       - 16-bit (``I;16*``) and 32-bit integer (``I``) grey: values are clipped to
         ``0..65535`` and divided by 257 with rounding (``65535 -> 255``): the full 16-bit
         range maps linearly to 8 bits. Data that uses only 12 bits looks dark: rescale it
         yourself before saving if that matters.
       - ``CMYK``: PIL's plain conversion (no ICC colour management, colours may shift).
       - anything else (``F``, ``LAB``, ``HSV``, ``YCbCr`` files, ...): refused.

    Args:
        path: Image file (PNG, JPEG, BMP, TIFF, WebP, ... anything PIL reads).
        mode_policy: ``"convert"`` applies the conversions above; ``"strict"`` refuses every
            conversion that loses information (alpha, 16-bit, CMYK) and accepts only
            ``RGB``, ``L``, ``1`` and ``P`` without transparency.

    Returns:
        ``numpy.uint8`` array of shape ``(H, W, 3)``, RGB.

    Raises:
        DatasetError: message ``"<path>: <problem>"``.
    """
    if mode_policy not in ("convert", "strict"):
        raise ValueError(f"mode_policy must be 'convert' or 'strict', not {mode_policy!r}")
    path = Path(path)
    _check_file_exists(path)
    _verify_image_file(path)
    with _no_truncated_loading(), Image.open(path) as image:
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except Exception as error:  # decoders raise OSError, SyntaxError, ValueError, struct.error
            raise DatasetError(
                f"{path}: image is corrupt or truncated ({error}); re-export or re-download it"
            ) from error
        return _to_rgb_array(image, path, mode_policy)


def _check_file_exists(path: Path) -> None:
    if not path.exists():
        raise DatasetError(f"{path}: file not found; check the path and the working directory")
    if path.is_dir():
        raise DatasetError(f"{path}: is a folder, not an image file")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: file is empty (0 bytes); an interrupted copy or download?")


def _verify_image_file(path: Path) -> None:
    # verify() checks structure and checksums without decoding; it leaves the image unusable,
    # so load_image opens the file a second time to decode it.
    try:
        with _no_truncated_loading(), Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, ImportError) as error:
        # ImportError: once ultralytics is imported it patches Image.open to try the optional
        # pi_heif plugin on unknown files, so "cannot identify" arrives as a missing module.
        raise DatasetError(f"{path}: not an image PIL can read (unknown or corrupt format)") from error
    except Exception as error:  # PIL raises many types here (OSError, SyntaxError, struct.error)
        raise DatasetError(
            f"{path}: image is corrupt or truncated ({error}); re-export or re-download it"
        ) from error


@contextlib.contextmanager
def _no_truncated_loading() -> Iterator[None]:
    """Temporarily turn off PIL's global ``LOAD_TRUNCATED_IMAGES`` (other code may set it)."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _to_rgb_array(image: Image.Image, path: Path, mode_policy: str) -> np.ndarray:
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    strict = mode_policy == "strict"
    if mode in _LOSSLESS_MODES:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if strict and (mode in _ALPHA_MODES or mode in _SIXTEEN_BIT_MODES or mode == "CMYK"):
        raise DatasetError(
            f"{path}: image mode {mode} would lose information when made RGB and "
            "mode_policy='strict'; use mode_policy='convert' or save the image as 8-bit RGB"
        )
    if mode in _ALPHA_MODES:
        background = Image.new("RGBA", image.size, ALPHA_BACKGROUND + (255,))
        return np.asarray(Image.alpha_composite(background, image.convert("RGBA")).convert("RGB"))
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        grey = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "CMYK":
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    raise DatasetError(
        f"{path}: unsupported image mode {mode}; convert it to 8-bit RGB (e.g. with PIL) first"
    )


def load_label_mask(path: PathLike) -> np.ndarray:
    """Read a semantic/index mask PNG as ``uint8`` ``H x W`` (pixel value = class index).

    ``L`` images and palette (``P``, VOC-style) images are accepted: for ``P`` the stored
    palette *indices* are the values, never the palette colours. No EXIF rotation is applied:
    masks are stored as they are. Anything else (RGB colour masks, 16-bit) is refused.
    """
    path = Path(path)
    _check_file_exists(path)
    _verify_image_file(path)
    with _no_truncated_loading(), Image.open(path) as image:
        try:
            image.load()
        except OSError as error:
            raise DatasetError(f"{path}: mask is corrupt or truncated ({error})") from error
        if image.mode not in ("L", "P"):
            raise DatasetError(
                f"{path}: mask mode {image.mode} is not a class-index mask; save it as an 8-bit "
                "single-channel PNG (mode L or P) whose values are class ids"
            )
        return np.asarray(image, dtype=np.uint8).copy()


# ----------------------------------------------------------------------------------- annotations
def check_boxes(
    boxes: np.ndarray | Sequence[Sequence[float]],
    width: int,
    height: int,
    source: str,
    tolerance: float = BOX_TOLERANCE_PX,
) -> np.ndarray:
    """Check pixel ``xyxy`` boxes against an image of ``width x height``.

    Refuses NaN/inf coordinates, degenerate boxes (``x2 <= x1`` or ``y2 <= y1``) and boxes
    outside ``[0, width] x [0, height]`` by more than ``tolerance`` pixels.

    Args:
        boxes: ``N x 4`` array-like of ``x1, y1, x2, y2`` in pixels (``N`` may be 0).
        width, height: Image size in pixels.
        source: Where the boxes come from, starting with the file path (``"a.json"`` or
            ``"labels/x.txt:3"``); it starts the error message.
        tolerance: Allowed overhang in pixels.

    Returns:
        The boxes as ``float32`` ``N x 4``, clipped to the image (the overhang allowed by
        ``tolerance`` is removed).
    """
    array = np.array(boxes, dtype=np.float32).reshape(-1, 4)  # a copy: clipping must not edit the input
    for index, (x1, y1, x2, y2) in enumerate(array.tolist()):
        where = f"{source}: box {index} [{x1:g}, {y1:g}, {x2:g}, {y2:g}] (xyxy pixels)"
        if not np.all(np.isfinite([x1, y1, x2, y2])):
            raise DatasetError(f"{where} has a NaN or infinite coordinate")
        if x2 <= x1 or y2 <= y1:
            raise DatasetError(f"{where} is degenerate (x2 <= x1 or y2 <= y1): zero width or height")
        if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
            raise DatasetError(
                f"{where} lies outside the {width}x{height} image by more than {tolerance:g} px; "
                "are the coordinates in another format (xywh, normalised) or another image size?"
            )
    np.clip(array[:, 0::2], 0, width, out=array[:, 0::2])
    np.clip(array[:, 1::2], 0, height, out=array[:, 1::2])
    return array


def check_class_ids(ids: np.ndarray | Sequence[int], num_classes: int, source: str) -> np.ndarray:
    """Check that class ids are integers in ``0 .. num_classes - 1`` (0-based).

    Returns:
        The ids as ``int64`` of shape ``(N,)``.
    """
    values = np.asarray(ids, dtype=np.float64).reshape(-1)
    for index, value in enumerate(values.tolist()):
        if not np.isfinite(value) or value != int(value):
            raise DatasetError(f"{source}: class id {value!r} (item {index}) is not an integer")
        if not 0 <= value < num_classes:
            raise DatasetError(
                f"{source}: class id {int(value)} (item {index}) is out of range 0..{num_classes - 1} "
                f"for {num_classes} classes; class ids are 0-based (COCO category_id = id + 1)"
            )
    return values.astype(np.int64)


def check_mask(mask: np.ndarray, image_shape: Sequence[int], source: str) -> np.ndarray:
    """Check that a mask (``H x W`` or ``N x H x W``) has the image's height and width.

    Args:
        mask: Semantic (``H x W``) or instance (``N x H x W``) mask.
        image_shape: The image's shape, ``(H, W)`` or ``(H, W, C)``.
        source: Where the mask comes from (file path first).

    Returns:
        The mask, unchanged.
    """
    mask = np.asarray(mask)
    height, width = int(image_shape[0]), int(image_shape[1])
    if mask.ndim not in (2, 3):
        raise DatasetError(f"{source}: mask has shape {mask.shape}; expected HxW or NxHxW")
    if mask.shape[-2:] != (height, width):
        mask_h, mask_w = mask.shape[-2:]
        raise DatasetError(
            f"{source}: mask size {mask_w}x{mask_h} (WxH) does not match the image size "
            f"{width}x{height}; was the image resized or rotated (EXIF) without its mask?"
        )
    return mask


def check_polygon(points: np.ndarray | Sequence[float], source: str) -> np.ndarray:
    """Check one polygon given as flat ``[x1, y1, x2, y2, ...]`` or ``K x 2`` points.

    Refuses fewer than 3 points, an odd number of coordinates and NaN/inf.

    Returns:
        ``float64`` ``K x 2`` array of ``(x, y)`` points.
    """
    flat = np.asarray(points, dtype=np.float64).reshape(-1)
    if flat.size % 2:
        raise DatasetError(f"{source}: polygon has an odd number of coordinates ({flat.size})")
    if flat.size < 6:
        raise DatasetError(
            f"{source}: polygon has {flat.size // 2} point(s); a polygon needs at least 3"
        )
    if not np.all(np.isfinite(flat)):
        raise DatasetError(f"{source}: polygon has a NaN or infinite coordinate")
    return flat.reshape(-1, 2)


# --------------------------------------------------------------------------------------- pairing
def pair_images_and_labels(
    image_paths: Sequence[PathLike],
    label_paths: Sequence[PathLike],
    allow_unlabelled: bool = False,
) -> list[tuple[Path, Path | None]]:
    """Match images and label files by file stem (``a/x.png`` <-> ``b/x.txt``).

    A label file without an image is always an error (it usually means a renamed or deleted
    image, so its boxes would be silently lost). An image without a label file is an error
    unless ``allow_unlabelled=True``; then it is a *background* image (no objects), which is
    what ultralytics does with a missing or empty label file. :func:`cvhelpers.data.yolo.read_yolo`
    passes ``allow_unlabelled=True`` by default to match ultralytics.

    Args:
        image_paths: Image files.
        label_paths: Label files (any extension).
        allow_unlabelled: Accept images with no label file (returned with ``None``).

    Returns:
        ``(image_path, label_path or None)`` pairs in the order of ``image_paths``.
    """
    images = _index_by_stem([Path(p) for p in image_paths])
    labels = _index_by_stem([Path(p) for p in label_paths])
    for stem, label in labels.items():
        if stem not in images:
            raise DatasetError(
                f"{label}: label file has no image with the stem '{stem}'; "
                "delete the label or restore its image"
            )
    pairs: list[tuple[Path, Path | None]] = []
    for stem, image in images.items():
        label = labels.get(stem)
        if label is None and not allow_unlabelled:
            raise DatasetError(
                f"{image}: image has no label file '{stem}.*'; add one (an empty file marks a "
                "background image) or pass allow_unlabelled=True"
            )
        pairs.append((image, label))
    return pairs


def _index_by_stem(paths: list[Path]) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in paths:
        if path.stem in index:
            raise DatasetError(
                f"{path}: another file has the same stem: {index[path.stem]}; stems must be unique"
            )
        index[path.stem] = path
    return index
