"""COCO instance annotations: write and read them, with checks and exact mask round trips.

The in-memory record every reader in ``cvhelpers.data`` returns, :class:`AnnotatedImage`,
lives here because COCO is the course's canonical on-disk form (``scenes`` writes it,
``yolo`` converts to and from the same record).

COCO conventions used (see ``docs/DESIGN.md``):
    - ``bbox`` is ``[x, y, w, h]`` in pixels; in memory boxes are ``xyxy`` ``float32``.
    - ``category_id`` = class id + 1 (0 is reserved); class ids are 0-based in memory.
    - instance masks are stored as compressed RLE (``pycocotools.mask.encode``), which is
      lossless; polygons are accepted when reading and rasterised with pycocotools.

Example:
    >>> write_coco(scenes, "d/train/annotations.json", CLASS_NAMES, "d/train/images")  # doctest: +SKIP
    >>> samples, names = read_coco("d/train/annotations.json", "d/train/images")      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cvhelpers.data.validate import (BOX_TOLERANCE_PX, DatasetError, PathLike, check_boxes, check_mask,
                                     check_polygon, load_image)


@dataclass
class AnnotatedImage:
    """One image and its object instances.

    Attributes:
        image: ``uint8`` ``H x W x 3`` RGB.
        boxes: ``float32`` ``N x 4`` pixel ``xyxy`` (x2, y2 exclusive edges).
        labels: ``int64`` ``N`` class ids, 0-based.
        masks: ``bool`` ``N x H x W`` visible part of each instance, or ``None`` (boxes only).
        file_name: Image file name relative to the images folder (``"000001.png"``).
        iscrowd: ``bool`` ``N`` COCO crowd flags, or ``None`` meaning all ``False``.
        difficult, truncated: ``bool`` ``N`` Pascal VOC flags (:mod:`cvhelpers.data.voc`), or
            ``None`` (not recorded).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    file_name: str = ""
    iscrowd: np.ndarray | None = None
    difficult: np.ndarray | None = None
    truncated: np.ndarray | None = None

    @property
    def semantic(self) -> np.ndarray:
        """``uint8`` ``H x W`` semantic mask: 0 background, class id + 1 for objects.

        Later instances are painted over earlier ones where masks overlap.
        """
        if self.masks is None:
            raise ValueError(f"{self.file_name}: no instance masks, so no semantic mask")
        semantic = np.zeros(self.image.shape[:2], dtype=np.uint8)
        for mask, label in zip(self.masks, self.labels):
            semantic[mask] = label + 1
        return semantic


# ------------------------------------------------------------------------------------- writing
def write_coco(
    scenes_or_samples: Sequence[AnnotatedImage | Mapping[str, Any]],
    json_path: PathLike,
    class_names: Sequence[str],
    images_dir: PathLike,
    write_images: bool = True,
) -> dict[str, Any]:
    """Write instances as a COCO ``annotations.json`` (and, by default, the images as PNG).

    Args:
        scenes_or_samples: :class:`AnnotatedImage`/``Scene`` objects or dicts with the keys
            ``image``, ``boxes``, ``labels``, ``file_name`` and optionally ``masks``,
            ``iscrowd`` (same shapes as :class:`AnnotatedImage`).
        json_path: Output JSON file; its folder is created.
        class_names: Name of each class id; ``category_id`` = index + 1.
        images_dir: Folder of the images; ``file_name`` is relative to it.
        write_images: Save each ``image`` as ``images_dir / file_name`` (PNG by extension).

    Returns:
        The COCO dictionary that was written. Image ids and annotation ids start at 1;
        ``segmentation`` is compressed RLE of the visible mask (absent when ``masks`` is
        ``None``), ``area`` the mask's pixel count (or the box area), ``bbox`` ``[x, y, w, h]``.
    """
    json_path, images_dir = Path(json_path), Path(images_dir)
    images, annotations = [], []
    for image_id, sample in enumerate(scenes_or_samples, start=1):
        image = np.asarray(_field(sample, "image"))
        file_name = str(_field(sample, "file_name") or "")
        if not file_name:
            raise ValueError(f"sample {image_id - 1} has no file_name")
        height, width = image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        annotations.extend(_sample_annotations(sample, image_id, len(annotations) + 1))
        if write_images:
            (images_dir / file_name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(images_dir / file_name)
    categories = [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(class_names)]
    coco = {
        "info": {"description": "written by cvhelpers.data.coco.write_coco"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(coco, separators=(",", ":")))
    return coco


def _field(sample: AnnotatedImage | Mapping[str, Any], name: str) -> Any:
    return sample.get(name) if isinstance(sample, Mapping) else getattr(sample, name, None)


def _sample_annotations(sample: Any, image_id: int, first_id: int) -> list[dict[str, Any]]:
    from pycocotools import mask as mask_utils  # optional: the detection extra

    boxes = np.asarray(_field(sample, "boxes"), dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(_field(sample, "labels"), dtype=np.int64).reshape(-1)
    masks = _field(sample, "masks")
    crowd = _field(sample, "iscrowd")
    crowd = np.zeros(len(boxes), bool) if crowd is None else np.asarray(crowd, bool)
    annotations = []
    for k, ((x1, y1, x2, y2), label) in enumerate(zip(boxes.tolist(), labels.tolist())):
        annotation = {
            "id": first_id + k,
            "image_id": image_id,
            "category_id": int(label) + 1,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": float((x2 - x1) * (y2 - y1)),
            "iscrowd": int(crowd[k]),
        }
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(np.asarray(masks[k], dtype=np.uint8)))
            annotation["area"] = float(mask_utils.area(rle))
            annotation["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        annotations.append(annotation)
    return annotations


# ------------------------------------------------------------------------------------- reading
def read_coco(
    json_path: PathLike,
    images_dir: PathLike | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[list[AnnotatedImage], list[str]]:
    """Read a COCO instances file and its images, checking everything on the way.

    Args:
        json_path: The COCO JSON (``images``, ``annotations``, ``categories``).
        images_dir: Folder that ``file_name`` is relative to (default: the JSON's folder).
        class_names: If given, categories are mapped to class ids *by name* (class id =
            position in this list), which also remaps sparse ids such as COCO's 1..90. If
            ``None``, category ids must be ``1..K`` and class id = ``category_id - 1``.

    Returns:
        ``(samples, class_names)``: one :class:`AnnotatedImage` per JSON image in file order,
        annotations in file order. ``masks`` is ``None`` for an image where any annotation
        has no ``segmentation``. Polygons and uncompressed RLE are converted with
        ``pycocotools.mask.frPyObjects``.

    Raises:
        DatasetError: message starts with the JSON path and names the image id / file or
            annotation id: missing image file, image size differing from the JSON, mask size
            mismatch, polygon with < 3 points, unknown ``category_id`` or ``image_id``, bbox
            outside the image, malformed JSON. Problems inside an image file start with the
            image's path instead.
    """
    json_path = Path(json_path)
    images_dir = json_path.parent if images_dir is None else Path(images_dir)
    coco = _load_json(json_path)
    with _named_errors(f"{json_path}: categories"):
        class_of_category, names = _category_mapping(coco["categories"], class_names, json_path)
    annotations_by_image = _group_annotations(coco, class_of_category, json_path)
    samples = []
    for entry in coco["images"]:
        with _named_errors(f"{json_path}: image id {entry.get('id')!r}"):
            samples.append(_read_image_entry(entry, annotations_by_image.get(entry["id"], []),
                                             class_of_category, images_dir, json_path))
    return samples, names


@contextlib.contextmanager
def _named_errors(where: str) -> Iterator[None]:
    """Turn the raw Python errors a malformed value causes into a :class:`DatasetError`.

    The explicit checks below name most problems precisely; this net catches the rest (a
    string where a number belongs, a list where a string does) so that a reader of a bad file
    never sees ``TypeError: 'float' object is not iterable`` without the file and entry.
    """
    try:
        yield
    except DatasetError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as error:
        raise DatasetError(f"{where}: malformed value ({type(error).__name__}: {error})") from error


def _load_json(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise DatasetError(f"{json_path}: annotation file not found")
    try:
        coco = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{json_path}:{error.lineno}: not valid JSON ({error.msg})") from error
    if not isinstance(coco, dict):
        raise DatasetError(f"{json_path}: not a COCO instances file (the top level is a "
                           f"{type(coco).__name__}, not an object)")
    missing = [key for key in ("images", "annotations", "categories") if key not in coco]
    if missing:
        raise DatasetError(f"{json_path}: not a COCO instances file, missing key(s) {missing}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco[key], list):
            raise DatasetError(f"{json_path}: '{key}' is a {type(coco[key]).__name__}, not a list")
        for index, entry in enumerate(coco[key]):
            if not isinstance(entry, dict):
                raise DatasetError(f"{json_path}: {key}[{index}] is a {type(entry).__name__}, "
                                   "not an object")
    return coco


def _category_mapping(
    categories: list[dict[str, Any]], class_names: Sequence[str] | None, json_path: Path
) -> tuple[dict[int, int], list[str]]:
    """Map ``category_id`` -> 0-based class id."""
    for index, category in enumerate(categories):
        if not _is_int(category.get("id")) or not isinstance(category.get("name"), str):
            raise DatasetError(f"{json_path}: categories[{index}] needs an integer id and a string "
                               f"name, not id {category.get('id')!r}, name {category.get('name')!r}")
    by_id = {c["id"]: c["name"] for c in categories}
    if len(by_id) != len(categories):
        raise DatasetError(f"{json_path}: categories contain a duplicate id")
    if class_names is None:
        if sorted(by_id) != list(range(1, len(by_id) + 1)):
            raise DatasetError(
                f"{json_path}: category ids {sorted(by_id)} are not 1..{len(by_id)}; "
                "pass class_names=[...] to map categories to class ids by name"
            )
        return {cid: cid - 1 for cid in by_id}, [by_id[cid] for cid in sorted(by_id)]
    names = list(class_names)
    unknown = [name for name in by_id.values() if name not in names]
    if unknown:
        raise DatasetError(f"{json_path}: categories {unknown} are not in class_names {names}")
    return {cid: names.index(name) for cid, name in by_id.items()}, names


def _group_annotations(
    coco: dict[str, Any], class_of_category: dict[int, int], json_path: Path
) -> dict[int, list[dict[str, Any]]]:
    image_ids = [entry.get("id") for entry in coco["images"]]
    for index, image_id in enumerate(image_ids):
        if not _is_int(image_id):
            raise DatasetError(f"{json_path}: images[{index}] has id {image_id!r}, not an integer")
    if len(set(image_ids)) != len(image_ids):
        raise DatasetError(f"{json_path}: two images share an id")
    grouped: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in image_ids}
    for annotation in coco["annotations"]:
        where = f"{json_path}: annotation id {annotation.get('id')!r}"
        if not _is_int(annotation.get("category_id")) or annotation["category_id"] not in class_of_category:
            raise DatasetError(
                f"{where}: category_id {annotation.get('category_id')} is not in the categories "
                f"{sorted(class_of_category)}"
            )
        if not _is_int(annotation.get("image_id")) or annotation["image_id"] not in grouped:
            raise DatasetError(f"{where}: image_id {annotation.get('image_id')!r} is not in the images")
        bbox = annotation.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DatasetError(f"{where}: bbox {bbox!r} is not [x, y, w, h] (four numbers)")
        grouped[annotation["image_id"]].append(annotation)
    return grouped


def _read_image_entry(
    entry: dict[str, Any],
    annotations: list[dict[str, Any]],
    class_of_category: dict[int, int],
    images_dir: Path,
    json_path: Path,
) -> AnnotatedImage:
    file_name = entry.get("file_name")
    where = f"{json_path}: image id {entry.get('id')} '{file_name}'"
    if not file_name:
        raise DatasetError(f"{where}: has no file_name")
    if not isinstance(file_name, str):
        raise DatasetError(f"{where}: file_name is a {type(file_name).__name__}, not a string")
    image_path = images_dir / file_name
    if not image_path.is_file():
        raise DatasetError(f"{where}: image file {image_path} not found")
    image = load_image(image_path)
    height, width = image.shape[:2]
    if (entry.get("width"), entry.get("height")) != (width, height):
        raise DatasetError(
            f"{where}: size {entry.get('width')}x{entry.get('height')} in the JSON but "
            f"{width}x{height} in {image_path} (after EXIF rotation)"
        )
    boxes = np.zeros((len(annotations), 4), np.float32)
    masks = np.zeros((len(annotations), height, width), bool)
    has_masks = True
    for k, annotation in enumerate(annotations):
        source = f"{json_path}: annotation id {annotation.get('id')} (image '{file_name}')"
        x, y, w, h = (float(v) for v in annotation["bbox"])
        if "iscrowd" in annotation and annotation["iscrowd"] not in (0, 1, True, False):
            raise DatasetError(f"{source}: iscrowd {annotation['iscrowd']!r} is not 0 or 1")
        boxes[k] = check_boxes([[x, y, x + w, y + h]], width, height, source)[0]
        segmentation = annotation.get("segmentation")
        if segmentation:
            masks[k] = _decode_segmentation(segmentation, height, width, source)
        else:
            has_masks = False
    return AnnotatedImage(
        image=image,
        boxes=boxes,
        labels=np.array([class_of_category[a["category_id"]] for a in annotations], np.int64),
        masks=masks if has_masks else None,
        file_name=str(file_name),
        iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in annotations], bool),
    )


def _decode_segmentation(segmentation: Any, height: int, width: int, source: str) -> np.ndarray:
    """Polygons, uncompressed RLE or compressed RLE -> ``bool`` ``H x W``.

    Everything is checked against the image *before* pycocotools' C code sees it: an RLE whose
    ``size`` or run lengths do not fit the image, or a polygon far outside it, would make that
    code allocate or write far beyond the image (a ``1048576 x 1048576`` size kills the
    process), so no input file can cost memory beyond its own image.
    """
    from pycocotools import mask as mask_utils  # optional: the detection extra

    if isinstance(segmentation, list):  # polygons: [[x1, y1, x2, y2, ...], ...]
        polygons = []
        for i, p in enumerate(segmentation):
            if not isinstance(p, list) or not all(_is_number(v) for v in p):
                raise DatasetError(f"{source} polygon {i}: not a list of numbers")
            points = check_polygon(p, f"{source} polygon {i}")
            tol = BOX_TOLERANCE_PX
            if (points[:, 0].min() < -tol or points[:, 1].min() < -tol
                    or points[:, 0].max() > width + tol or points[:, 1].max() > height + tol):
                raise DatasetError(f"{source} polygon {i}: a point lies outside the {width}x{height} "
                                   f"image by more than {tol:g} px; are the coordinates normalised "
                                   "or for another image size?")
            polygons.append(points.reshape(-1).tolist())
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = segmentation["size"]
        if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) for v in size):
            raise DatasetError(f"{source}: RLE size {size!r} is not [height, width]")
        if list(size) != [height, width]:
            raise DatasetError(f"{source}: RLE mask size {size[1]}x{size[0]} (WxH) does not match the "
                               f"image size {width}x{height}; was the image resized without its mask?")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE (crowd regions)
            _check_run_lengths(counts, height * width, source)
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": [int(c) for c in counts]},
                                         height, width)
        elif isinstance(counts, str):
            _check_run_lengths(_compressed_run_lengths(counts, source), height * width, source)
            rle = {"size": [height, width], "counts": counts.encode("ascii")}
        else:
            raise DatasetError(f"{source}: RLE counts is a {type(counts).__name__}, "
                               "not a list of run lengths or a compressed string")
    else:
        raise DatasetError(f"{source}: segmentation is neither polygons nor RLE")
    try:
        mask = decode_rle(rle)
    except Exception as error:  # pycocotools raises bare Exceptions on malformed counts
        raise DatasetError(f"{source}: segmentation RLE cannot be decoded ({error})") from error
    return check_mask(mask, (height, width), source)


def _compressed_run_lengths(counts: str, source: str) -> list[int]:
    """Decode COCO's compressed RLE string (pycocotools' ``rleFrString``) in Python, to check it."""
    if not counts.isascii() or any(not 48 <= ord(c) < 48 + 64 for c in counts):
        raise DatasetError(f"{source}: RLE counts string holds characters outside COCO's alphabet")
    runs: list[int] = []
    p = 0
    while p < len(counts):
        value, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise DatasetError(f"{source}: RLE counts string ends inside a number")
            c = ord(counts[p]) - 48
            value |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                value |= -1 << (5 * k)
            if k > 7:
                raise DatasetError(f"{source}: RLE counts string holds a number beyond 32 bits")
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _check_run_lengths(counts: list[Any], pixels: int, source: str) -> None:
    if not all(_is_int(c) and 0 <= c <= pixels for c in counts):
        raise DatasetError(f"{source}: RLE counts must be integers in 0..{pixels} (the image's pixels)")
    if sum(counts) != pixels:
        raise DatasetError(f"{source}: RLE run lengths add up to {sum(counts)} pixels, "
                           f"but the image has {pixels}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """One pycocotools RLE (``{"size": [H, W], "counts": bytes}``) -> ``bool`` ``H x W``."""
    from pycocotools import mask as mask_utils  # optional: the detection extra

    with warnings.catch_warnings():
        # pycocotools 2.0.11 under numpy 2 warns about its own __array__ on every decode.
        warnings.filterwarnings("ignore", message=".*__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)
