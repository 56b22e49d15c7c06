"""YOLO (ultralytics) datasets: write the layout ultralytics trains on, read it back with checks.

Layout (ultralytics' own)::

    root/data.yaml                   path, train, val, test, names
    root/images/<split>/<name>.png
    root/labels/<split>/<name>.txt   one row per object, normalised to 0..1:
                                     "cls cx cy w h"  or, for segments, "cls x1 y1 x2 y2 x3 y3 ..."

Class ids are 0-based. An empty label file is a background image (no objects).

Nothing here imports ultralytics (importing it changes torch's thread settings); ``pyyaml``
and, for ``segments=True``, OpenCV are imported inside the functions that need them (both
come with ultralytics).

Example:
    >>> data_yaml = write_yolo({"train": train, "val": val}, "datasets/yolo", CLASS_NAMES)  # doctest: +SKIP
    >>> YOLO("yolov8n.yaml").train(data=data_yaml, ...)                                     # doctest: +SKIP
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cvhelpers.data.coco import AnnotatedImage, decode_rle
from cvhelpers.data.validate import (DatasetError, PathLike, check_boxes, check_class_ids, check_polygon, load_image, pair_images_and_labels)

# ultralytics' own tolerance for normalised coordinates (verify_image_label: <= 1.01, >= -0.01).
YOLO_TOLERANCE = 0.01
IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}


# ------------------------------------------------------------------------------------- writing
def write_yolo(
    scenes: Mapping[str, Sequence[AnnotatedImage]] | Sequence[Sequence[AnnotatedImage]],
    root: PathLike,
    class_names: Sequence[str],
    split_names: Sequence[str] | None = None,
    segments: bool = False,
) -> Path:
    """Write splits in the ultralytics layout and return the ``data.yaml`` path.

    Args:
        scenes: ``{"train": [...], "val": [...], "test": [...]}``, or a list of splits named
            by ``split_names``. Each item is an :class:`~cvhelpers.data.coco.AnnotatedImage`
            (``Scene``) with pixel ``xyxy`` boxes, 0-based labels and a ``file_name``.
            ultralytics needs at least ``train`` and ``val``.
        root: Dataset folder. Existing ``images/<split>`` and ``labels/<split>`` folders of
            the written splits (and ultralytics' ``labels/<split>.cache``) are replaced.
        class_names: Name of each class id.
        split_names: Names of the splits when ``scenes`` is a list.
        segments: Write polygons (traced from ``masks`` with OpenCV, several parts joined by
            zero-width bridges as ultralytics does) instead of boxes. Polygons pass through
            the centres of the mask's boundary pixels, so their box is ~1 px smaller.

    Returns:
        Path of ``root/data.yaml`` (``path`` is the absolute root, split entries are relative).
    """
    import yaml

    root = Path(root).resolve()
    if isinstance(scenes, Mapping):
        by_split = dict(scenes)
    else:
        if split_names is None or len(split_names) != len(scenes):
            raise ValueError("give one split name per list of scenes in split_names")
        by_split = dict(zip(split_names, scenes))
    for split, samples in by_split.items():
        _write_split(root, split, samples, segments)
    data = {"path": str(root), **{split: f"images/{split}" for split in by_split}}
    data["names"] = {i: name for i, name in enumerate(class_names)}
    yaml_path = root / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return yaml_path


def _write_split(root: Path, split: str, samples: Sequence[AnnotatedImage], segments: bool) -> None:
    images_dir, labels_dir = root / "images" / split, root / "labels" / split
    for folder in (images_dir, labels_dir):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    (root / "labels" / f"{split}.cache").unlink(missing_ok=True)
    for sample in samples:
        name = Path(sample.file_name).name  # flat folders: ultralytics pairs files by name
        if not name:
            raise ValueError(f"a sample of split {split!r} has no file_name")
        Image.fromarray(sample.image).save(images_dir / name)
        rows = _segment_rows(sample) if segments else _box_rows(sample)
        (labels_dir / Path(name).with_suffix(".txt")).write_text("".join(f"{row}\n" for row in rows))


def _box_rows(sample: AnnotatedImage) -> list[str]:
    height, width = sample.image.shape[:2]
    boxes = np.asarray(sample.boxes, dtype=np.float64).reshape(-1, 4) / [width, height, width, height]
    boxes = np.clip(boxes, 0.0, 1.0)
    rows = []
    for (x1, y1, x2, y2), label in zip(boxes.tolist(), np.asarray(sample.labels).tolist()):
        rows.append(f"{int(label)} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}")
    return rows


def _segment_rows(sample: AnnotatedImage) -> list[str]:
    if sample.masks is None:
        raise ValueError(f"{sample.file_name}: segments=True needs instance masks")
    height, width = sample.image.shape[:2]
    rows = []
    for mask, label in zip(sample.masks, np.asarray(sample.labels).tolist()):
        points = np.clip(mask_to_polygon(mask) / [width, height], 0.0, 1.0)
        rows.append(f"{int(label)} " + " ".join(f"{v:.6f}" for v in points.reshape(-1)))
    return rows


def mask_to_polygon(mask: np.ndarray) -> np.ndarray:
    """Trace a ``bool`` ``H x W`` mask as one polygon, ``float64`` ``K x 2`` pixel ``(x, y)``.

    Points are boundary pixel centres (``col + 0.5, row + 0.5``). Separate parts of the mask
    are joined into one polygon by zero-width bridges between their nearest points. A mask too
    small to trace (fewer than 3 boundary points) gives its box's corners.
    """
    import cv2

    if not np.any(mask):
        raise ValueError("an empty mask has no polygon")
    contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    parts = sorted((c.reshape(-1, 2).astype(np.float64) + 0.5 for c in contours), key=len, reverse=True)
    if not parts or sum(len(p) for p in parts) < 3:
        ys, xs = np.nonzero(mask)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)
    polygon = parts[0]
    for part in parts[1:]:
        distances = ((polygon[:, None, :] - part[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(distances.argmin(), distances.shape)
        # walk to the part, around it, back to where we left: the bridge has no area
        around_part = np.concatenate([np.roll(part, -j, axis=0), part[j : j + 1]])
        polygon = np.concatenate([polygon[: i + 1], around_part, polygon[i:]])
    return polygon


# ------------------------------------------------------------------------------------- reading
def read_yolo(
    data_yaml: PathLike, split: str, allow_unlabelled: bool = True
) -> tuple[list[AnnotatedImage], list[str]]:
    """Read one split of a YOLO dataset, checking every label line.

    Args:
        data_yaml: The dataset's YAML (``path``, ``<split>``, ``names``). A relative ``path``
            is taken relative to the YAML's folder; the split entry must be a folder.
        split: ``"train"``, ``"val"``, ``"test"``...
        allow_unlabelled: Images without a label file are background images (ultralytics'
            behaviour, the default); ``False`` makes them an error. A label file without an
            image is always an error.

    Returns:
        ``(samples, class_names)``. Boxes are pixel ``xyxy`` ``float32``; for polygon rows the
        box is the polygon's extent (as ultralytics computes it) and ``masks`` holds the
        rasterised polygons; ``masks`` is ``None`` when the file has box rows.

    Raises:
        DatasetError: ``"<label file>:<line>: ..."`` for a wrong number of fields, a value that
            is not a number, a class id out of range, coordinates outside ``[0, 1]`` beyond
            ultralytics' 1 % tolerance, zero width/height, a polygon with < 3 points, a box
            reaching outside the image, a file mixing box and polygon rows; pairing and image
            errors (see :func:`~cvhelpers.data.validate.pair_images_and_labels`).
    """
    data_yaml = Path(data_yaml)
    data = _load_yaml(data_yaml)
    names = _class_names(data, data_yaml)
    images_dir = _split_dir(data, split, data_yaml)
    labels_dir = _labels_dir(images_dir)
    image_paths = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    label_paths = sorted(labels_dir.rglob("*.txt")) if labels_dir.is_dir() else []
    samples = []
    for image_path, label_path in pair_images_and_labels(image_paths, label_paths, allow_unlabelled):
        image = load_image(image_path)
        boxes, labels, masks = _read_label_file(label_path, len(names), image.shape[1], image.shape[0])
        samples.append(AnnotatedImage(image, boxes, labels, masks, image_path.name))
    return samples, names


def yolo_splits(data_yaml: PathLike) -> dict[str, Path]:
    """``{split: images folder}`` for each of ``train``, ``val``, ``test`` the YAML names
    (checked like :func:`read_yolo`: a missing folder is a :class:`DatasetError`)."""
    data_yaml = Path(data_yaml)
    data = _load_yaml(data_yaml)
    return {split: _split_dir(data, split, data_yaml) for split in ("train", "val", "test") if data.get(split)}


def _load_yaml(data_yaml: Path) -> dict:
    import yaml

    if not data_yaml.is_file():
        raise DatasetError(f"{data_yaml}: dataset YAML not found")
    try:
        data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise DatasetError(f"{data_yaml}: not valid YAML ({error})") from error
    if not isinstance(data, dict) or "names" not in data:
        raise DatasetError(f"{data_yaml}: needs a 'names' entry (class names by id)")
    return data


def _class_names(data: dict, data_yaml: Path) -> list[str]:
    names = data["names"]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"{data_yaml}: 'names' keys must be 0..{len(names) - 1}")
        return [str(names[i]) for i in range(len(names))]
    return [str(name) for name in names]


def _split_dir(data: dict, split: str, data_yaml: Path) -> Path:
    if not isinstance(data.get(split), str):
        raise DatasetError(f"{data_yaml}: '{split}' must name an images folder, found {data.get(split)!r}")
    root = Path(data.get("path") or ".")
    root = root if root.is_absolute() else data_yaml.parent / root
    images_dir = root / data[split]
    if not images_dir.is_dir() and data[split].startswith("../"):  # Roboflow's exports: ultralytics retries so
        images_dir = root / data[split][3:]
    if not images_dir.is_dir():
        raise DatasetError(f"{data_yaml}: '{split}' folder {images_dir} not found")
    return images_dir


def _labels_dir(images_dir: Path) -> Path:
    """ultralytics' rule: the last ``images`` folder of the path becomes ``labels``."""
    parts = list(images_dir.parts)
    if "images" not in parts:
        raise DatasetError(f"{images_dir}: the images folder path must contain an 'images' folder")
    index = len(parts) - 1 - parts[::-1].index("images")
    parts[index] = "labels"
    return Path(*parts)


def _read_label_file(
    path: Path | None, num_classes: int, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    from pycocotools import mask as mask_utils  # optional: the detection extra

    boxes: list[np.ndarray] = []
    labels: list[int] = []
    polygons: list[np.ndarray] = []
    lines = path.read_text(encoding="utf-8-sig").splitlines() if path is not None else []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        source = f"{path}:{line_number}"
        label, box, polygon = _parse_row(line.split(), source, num_classes, width, height)
        if boxes and (polygon is not None) != bool(polygons):  # ultralytics refuses mixed files
            raise DatasetError(f"{source}: the file mixes box rows and polygon rows; use one kind")
        boxes.append(box)
        labels.append(label)
        if polygon is not None:
            polygons.append(polygon)
    box_array = np.array(boxes, np.float32).reshape(-1, 4)
    label_array = np.array(labels, np.int64)
    if boxes and not polygons:
        return box_array, label_array, None
    masks = np.zeros((len(polygons), height, width), bool)
    for k, polygon in enumerate(polygons):
        masks[k] = decode_rle(mask_utils.frPyObjects([polygon.reshape(-1).tolist()], height, width)[0])
    return box_array, label_array, masks


def _parse_row(
    fields: list[str], source: str, num_classes: int, width: int, height: int
) -> tuple[int, np.ndarray, np.ndarray | None]:
    """One label row -> (class id, pixel xyxy box, pixel polygon ``K x 2`` or None)."""
    if len(fields) != 5 and (len(fields) < 3 or len(fields) % 2 == 0):
        raise DatasetError(
            f"{source}: {len(fields)} fields; expected 5 ('cls cx cy w h') or an odd number >= 7 "
            "('cls x1 y1 x2 y2 x3 y3 ...')"
        )
    try:
        values = [float(v) for v in fields]
    except ValueError as error:
        raise DatasetError(f"{source}: not a number ({error})") from error
    label = int(check_class_ids(values[:1], num_classes, source)[0])
    coords = np.array(values[1:], dtype=np.float64)
    if not np.all(np.isfinite(coords)) or coords.min() < -YOLO_TOLERANCE or coords.max() > 1 + YOLO_TOLERANCE:
        raise DatasetError(
            f"{source}: coordinates {coords.round(4).tolist()} are outside [0, 1] beyond "
            f"{YOLO_TOLERANCE:g}; YOLO labels are normalised by the image width and height"
        )
    tolerance = YOLO_TOLERANCE * max(width, height)
    if len(fields) == 5:
        cx, cy, w, h = coords
        if w <= 0 or h <= 0:
            raise DatasetError(f"{source}: box has zero (or negative) width or height: w={w:g} h={h:g}")
        box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        return label, check_boxes([box], width, height, source, tolerance)[0], None
    polygon = check_polygon(coords, source) * [width, height]
    box = [*polygon.min(axis=0), *polygon.max(axis=0)]
    return label, check_boxes([box], width, height, source, tolerance)[0], polygon
