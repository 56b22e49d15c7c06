"""Your own data: find its format, read and check it, split it, letterbox it, describe it.

One entry point, :func:`load_own_data`, takes what a learner has on disk and returns an
:class:`OwnData` for any of the three tasks. The format is recognised from the path:

===============  =========================================================  ==============
format           what the path is                                           default task
===============  =========================================================  ==============
``imagefolder``  a folder of class folders: ``root/<class>/<image>``        classification
``yolo``         a YOLO ``data.yaml`` (or a folder holding one)             detection
``coco``         a COCO ``.json`` (images where its ``file_name`` entries     detection
                 resolve: beside it or in ``images/``), or a folder holding
                 ``annotations.json``, ``_annotations.coco.json`` or one ``.json``
``voc``          a Pascal VOC folder: ``Annotations/*.xml`` + ``JPEGImages/``  detection
``masks``        ``images/`` + ``masks/`` (index PNGs), or a VOC segmentation  segmentation
                 folder: ``JPEGImages/`` + ``SegmentationClassPNG/``
===============  =========================================================  ==============

A folder whose ``train/`` (and ``val/``, ``valid/``, ``test/``) sub-folders each hold one of
these is read split by split, and the splits are kept. Every reader is the course's checked
one (:mod:`cvhelpers.data.coco`, ``yolo``, ``voc``, ``imagefolder``,
:mod:`cvhelpers.data.masks`), so every problem is a :class:`DatasetError` that starts
with the file at fault.

Sizes: models here see square inputs of one size. Classification resizes the shorter side
and centre-crops (the ImageNet convention: the object is usually central). Detection and
segmentation **letterbox** (:func:`letterbox`): scale the longer side to the size, keep the
aspect ratio, pad the rest with grey, so nothing is cropped away and no shape is stretched;
boxes and masks move with the pixels, and :func:`unletterbox_boxes` maps predictions back.

Example:
    >>> data = load_own_data("my_photos/")          # doctest: +SKIP
    >>> data.format, data.task, data.class_names    # doctest: +SKIP
    ('imagefolder', 'classification', ['cat', 'dog'])
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cvhelpers.data.coco import AnnotatedImage, read_coco
from cvhelpers.data.imagefolder import IMAGE_SUFFIXES, read_image_folder
from cvhelpers.data.masks import load_segmentation_folder
from cvhelpers.data.validate import DatasetError, PathLike, load_image
from cvhelpers.data.voc import VOC_BACKGROUND, read_voc
from cvhelpers.data.yolo import read_yolo, yolo_splits

__all__ = ["FORMATS", "TASKS", "DEFAULT_TASK", "IGNORE", "LETTERBOX_FILL", "OwnData", "detect_format",
           "load_own_data", "find_data", "letterbox", "letterbox_sample", "letterbox_mask", "unletterbox_boxes",
           "data_stats", "plot_data_stats"]

FORMATS = ("imagefolder", "yolo", "coco", "voc", "masks")
TASKS = ("classification", "detection", "segmentation")
DEFAULT_TASK = {"imagefolder": "classification", "yolo": "detection", "coco": "detection",
                "voc": "detection", "masks": "segmentation"}
#: Which tasks each format can feed (instance masks of COCO/YOLO polygons give semantic masks).
POSSIBLE_TASKS = {"imagefolder": ("classification",), "yolo": ("detection", "segmentation"),
                  "coco": ("detection", "segmentation"), "voc": ("detection",), "masks": ("segmentation",)}
SPLIT_NAMES = ("train", "val", "valid", "test")
#: Mask value that no loss or score counts (VOC's object borders, letterbox padding).
IGNORE = 255
#: Grey of the letterbox padding (ultralytics' value); ``deploy/predict_onnx.py`` uses the same.
LETTERBOX_FILL = 114
_MASK_DIRS = (("images", "masks"), ("JPEGImages", "SegmentationClassPNG"))


@dataclass
class OwnData:
    """A dataset from disk, checked, in memory.

    Attributes:
        source: the path given.
        format: one of :data:`FORMATS`; task: one of :data:`TASKS`.
        class_names: object classes (segmentation: without the background, which is mask value 0).
        images: ``uint8 H x W x 3`` RGB, as stored (EXIF orientation applied).
        files: each image's path as the reader saw it.
        split: each image's split (``"train"``, ``"val"``, ``"test"``) when the data came split,
            else ``""``.
        labels: classification: one class id per image.
        samples: detection: one :class:`AnnotatedImage` per image (boxes, 0-based labels).
        masks: segmentation: ``uint8 H x W`` per image: 0 background, class id + 1, and
            :data:`IGNORE` where nothing is counted.
    """

    source: Path
    format: str
    task: str
    class_names: list[str]
    images: list[np.ndarray]
    files: list[str]
    split: list[str]
    labels: np.ndarray | None = None
    samples: list[AnnotatedImage] | None = None
    masks: list[np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def split_indices(self, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
        """``(train, val, how)``: indices to train on and to score on, and a sentence saying why.

        Data that came split keeps its split: ``train`` trains, ``val`` (``valid``, else
        ``test``) scores. Otherwise a seeded ``val_fraction`` of the images is held out,
        stratified by class for classification so every class with two or more images is
        scored. Both sides get at least one image.
        """
        split = np.array(self.split)
        for held in ("val", "valid", "test"):
            if (split == "train").any() and (split == held).any():
                return (np.flatnonzero(split == "train"), np.flatnonzero(split == held),
                        f"the data's own split: {int((split == 'train').sum())} train, "
                        f"{int((split == held).sum())} {held}")
        n = len(self)
        if n < 2:
            raise DatasetError(f"{self.source}: {n} image(s); at least 2 are needed (one to train, one to score)")
        rng = np.random.default_rng(seed)
        if self.labels is not None:
            val = []
            for label in np.unique(self.labels):
                members = rng.permutation(np.flatnonzero(self.labels == label))
                if len(members) > 1:
                    val.extend(members[:max(1, round(val_fraction * len(members)))])
            val = np.sort(np.array(val, dtype=np.int64))
        else:
            val = np.sort(rng.permutation(n)[:max(1, round(val_fraction * n))])
        if len(val) == 0:  # every class has one image: score on one anyway
            val = np.array([int(rng.integers(n))])
        if len(val) == n:
            val = val[:-1]
        train = np.setdiff1d(np.arange(n), val)
        notes = "".join(f" (note: {note})" for note in self.notes)
        return train, val, (f"no split given: a seeded {val_fraction:.0%} hold-out"
                            f"{' per class (a class with one image only trains)' if self.labels is not None else ''} "
                            f"(seed {seed}): {len(train)} train, {len(val)} val{notes}")


# ------------------------------------------------------------------------------------ formats
def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*"))


def _yaml_in(folder: Path) -> Path | None:
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    return found[0] if len(found) == 1 else None


def _coco_json_in(folder: Path) -> Path | None:
    for name in ("annotations.json", "_annotations.coco.json", "instances.json"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.json"))
    if len(found) != 1:
        return None
    try:  # a lone json counts only if it looks like COCO instances (not a metadata file)
        keys = json.loads(found[0].read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    return found[0] if isinstance(keys, dict) and {"images", "annotations", "categories"} <= set(keys) else None


def _coco_categories(json_path: Path) -> tuple[list[str] | None, list[str]]:
    """``(class names in id order, parent categories to ignore)``. Roboflow's exports carry one
    unused category (id 0) that the real classes name as their ``supercategory``: it is not a
    class. ``(None, [])`` when the file cannot be read: :func:`read_coco` then says why."""
    try:
        coco = json.loads(json_path.read_text(encoding="utf-8"))
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        used = {a["category_id"] for a in coco.get("annotations", [])}
        supers = {c.get("supercategory") for c in categories}
        parents = [c["name"] for c in categories if c["id"] not in used and c["name"] in supers]
        return [c["name"] for c in categories if c["name"] not in parents], parents
    except (ValueError, OSError, KeyError, TypeError):
        return None, []


def _coco_images_dir(json_path: Path) -> Path:
    """Where the json's ``file_name`` entries are: beside it, else in ``images/`` beside it."""
    try:
        first = next(iter(json.loads(json_path.read_text(encoding="utf-8")).get("images", [])), {})
    except (ValueError, AttributeError, OSError):
        first = {}  # read_coco reports what is wrong with the file
    name = first.get("file_name", "") if isinstance(first, dict) else ""
    beside, images = json_path.parent, json_path.parent / "images"
    if name and (beside / name).is_file():
        return beside
    return images if images.is_dir() else beside


def detect_format(path: PathLike) -> str:
    """The format of ``path`` (see the module docstring), or a :class:`DatasetError` saying what
    was looked for. A folder of splits reports the format of its ``train`` folder."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            return "yolo"
        if suffix == ".json":
            return "coco"
        raise DatasetError(f"{path}: a {suffix or 'suffix-less'} file; give a YOLO .yaml, a COCO .json, "
                           "or a folder (class folders, VOC, images/ + masks/)")
    if (path / "train").is_dir() and not _yaml_in(path):
        return detect_format(path / "train")
    if _yaml_in(path):
        return "yolo"
    if (path / "Annotations").is_dir():
        return "voc"
    if _coco_json_in(path):
        return "coco"
    if any((path / images).is_dir() and (path / masks).is_dir() for images, masks in _MASK_DIRS):
        return "masks"
    class_dirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if class_dirs and all(_has_images(p) for p in class_dirs):
        return "imagefolder"
    raise DatasetError(
        f"{path}: cannot tell the dataset's format. Looked for: class folders with images "
        "(classification), a data.yaml (YOLO), a COCO .json, Annotations/ (Pascal VOC), "
        "images/ + masks/ or JPEGImages/ + SegmentationClassPNG/ (masks), or train/ holding one of these")


def find_data(path: PathLike, also_under: tuple[PathLike, ...] = ()) -> Path:
    """``path`` if it exists (absolute, or relative to the working directory), else the first
    ``folder / path`` of ``also_under`` that does; else a :class:`DatasetError` naming every
    place looked in. (A notebook runs in ``notebooks/``, papermill often from the repository.)"""
    path = Path(path).expanduser()
    tried = [path] if path.is_absolute() else [path, *(Path(f) / path for f in also_under)]
    for candidate in tried:
        if candidate.exists():
            return candidate.resolve()
    raise DatasetError(f"{path}: no such file or folder (looked in: {', '.join(str(Path(t).resolve()) for t in tried)})")


def _splits(path: Path) -> list[tuple[str, Path]]:
    """``[(split, folder)]`` for a folder of splits, else ``[("", path)]``."""
    if path.is_dir() and (path / "train").is_dir() and not _yaml_in(path):
        return [(name, path / name) for name in SPLIT_NAMES if (path / name).is_dir()]
    return [("", path)]


def _mask_class_names(folder: Path) -> list[str] | None:
    for candidate in (folder / "class_names.txt", folder / "classes.txt", folder.parent / "classes.txt",
                      folder.parent / "class_names.txt"):
        if candidate.is_file():
            names = [n.strip() for n in candidate.read_text(encoding="utf-8").splitlines() if n.strip()]
            return [n for n in names if n != VOC_BACKGROUND]
    return None


def _read_masks(folder: Path, class_names: list[str] | None) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[str]]:
    images_dir, masks_dir = next((folder / i, folder / m) for i, m in _MASK_DIRS
                                 if (folder / i).is_dir() and (folder / m).is_dir())
    names = class_names or _mask_class_names(folder)
    if names is None:  # no class list: the values say how many classes there are
        top = 0
        for mask_path in sorted(masks_dir.glob("*.png")):
            with Image.open(mask_path) as mask:
                values = np.unique(np.asarray(mask))
            top = max(top, int(values[values != IGNORE].max(initial=0)))
        names = [f"class_{k}" for k in range(1, top + 1)]
    images, masks, files = load_segmentation_folder(images_dir, masks_dir, names, ignore_value=IGNORE)
    return images, masks, [str(images_dir / f) for f in files], names


def _read_split(fmt: str, folder: Path, class_names: list[str] | None, notes: list[str]
                ) -> tuple[list[np.ndarray], list[str], Any, list[str], list[str] | None]:
    """``(images, files, targets, class_names, splits)`` of one folder; ``splits`` is each
    image's split when the format itself names them (a YOLO yaml), else ``None``. Anything
    worth telling the user is appended to ``notes``."""
    if fmt == "imagefolder":
        paths, labels, names = read_image_folder(folder, check_images=False)
        if class_names is not None and names != class_names:
            raise DatasetError(f"{folder}: class folders {names} differ from the train split's {class_names}")
        return [load_image(p) for p in paths], [str(p) for p in paths], labels, names, None
    if fmt == "masks":
        images, masks, files, names = _read_masks(folder, class_names)
        return images, files, masks, names, None
    if fmt == "yolo":
        yaml_path = folder if folder.is_file() else _yaml_in(folder)
        samples: list[AnnotatedImage] = []
        names: list[str] = []
        split_of: list[str] = []
        files: list[str] = []
        seen: dict[Path, str] = {}
        for split, images_dir in yolo_splits(yaml_path).items():
            if images_dir.resolve() in seen:  # 'val: same folder as train' would score on training images
                notes.append(f"{yaml_path}: '{split}' is the same folder as '{seen[images_dir.resolve()]}'; "
                             f"it is read once, and a hold-out is drawn instead")
                continue
            seen[images_dir.resolve()] = split
            part, names = read_yolo(yaml_path, split)
            samples += part
            split_of += [split] * len(part)
            where = {p.name: p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
            files += [str(where.get(s.file_name, images_dir / s.file_name)) for s in part]
        if not samples:
            raise DatasetError(f"{yaml_path}: no 'train', 'val' or 'test' split with images")
        return [s.image for s in samples], files, samples, names, split_of
    if fmt == "coco":
        json_path = folder if folder.is_file() else _coco_json_in(folder)
        images_dir = _coco_images_dir(json_path)
        here, parents = _coco_categories(json_path)
        if class_names is not None and here is not None and set(here) - set(class_names):
            raise DatasetError(f"{json_path}: classes {sorted(set(here) - set(class_names))} are not in the "
                               f"first split's {class_names}")
        wanted = class_names if class_names is not None else here  # later splits map by name to the first's ids
        samples, names = read_coco(json_path, images_dir, None if wanted is None else [*wanted, *parents])
        names = names[:len(names) - len(parents)]  # parents have no annotations, so no label points at them
        return [s.image for s in samples], [str(images_dir / s.file_name) for s in samples], samples, names, None
    if fmt == "voc":
        samples, names = read_voc(folder, class_names=class_names)
        return ([s.image for s in samples], [str(folder / "JPEGImages" / s.file_name) for s in samples],
                samples, names, None)
    raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")


def load_own_data(path: PathLike, task: str | None = None, max_images: int | None = None,
                  seed: int = 0) -> OwnData:
    """Read and check a dataset in any of the :data:`FORMATS` for one of the :data:`TASKS`.

    Args:
        path: see the module docstring.
        task: ``None`` takes the format's :data:`DEFAULT_TASK`; ``"segmentation"`` also reads
            the instance masks of COCO or YOLO polygon files as semantic masks.
        max_images: keep at most this many images per split (a seeded random choice), for a
            quick training run on a big dataset (every image is still read and checked first).
        seed: for that choice.

    Raises:
        DatasetError: the path, the format, the task or any file is wrong (the message names it).
    """
    path = Path(path)
    fmt = detect_format(path)
    task = task or DEFAULT_TASK[fmt]
    if task not in TASKS:
        raise ValueError(f"TASK must be one of {TASKS} or None, got {task!r}")
    if task not in POSSIBLE_TASKS[fmt]:
        raise DatasetError(f"{path}: a {fmt} dataset cannot train {task}; it can train "
                           f"{' or '.join(POSSIBLE_TASKS[fmt])}")
    images: list[np.ndarray] = []
    files: list[str] = []
    split: list[str] = []
    targets: list[Any] = []
    names: list[str] | None = None
    notes: list[str] = []
    rng = np.random.default_rng(seed)
    for split_name, folder in _splits(path):
        part_images, part_files, part_targets, names, own_split = _read_split(fmt, folder, names, notes)
        part_split = own_split or [split_name] * len(part_images)
        keep = np.arange(len(part_images))
        if max_images is not None:
            keep = np.concatenate([np.sort(rng.permutation(np.flatnonzero(np.array(part_split) == s))[:max_images])
                                   for s in dict.fromkeys(part_split)])
        images += [part_images[i] for i in keep]
        files += [part_files[i] for i in keep]
        split += [part_split[i] for i in keep]
        targets += [part_targets[i] for i in keep]
    if not images:
        raise DatasetError(f"{path}: no images found")
    data = OwnData(path, fmt, task, list(names or []), images, files, split, notes=notes)
    if task == "classification":
        data.labels = np.asarray(targets, dtype=np.int64)
    elif task == "detection":
        data.samples = targets
    elif fmt == "masks":
        data.masks = targets
    else:  # segmentation from instance masks
        for sample in targets:
            if sample.masks is None:
                raise DatasetError(f"{path}: {sample.file_name} has boxes but no instance masks, so no "
                                   "segmentation masks; use TASK='detection' or label polygons")
        data.masks = [t.semantic for t in targets]
    return data


# ---------------------------------------------------------------------------------- letterbox
def letterbox(image: np.ndarray, size: int, fill: int = LETTERBOX_FILL,
              resample: Image.Resampling = Image.Resampling.BILINEAR) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Scale ``image`` so its longer side is ``size``, then pad it to ``size x size``, centred.

    Returns:
        ``(square image, scale, (pad_x, pad_y))``: a pixel ``(x, y)`` of the original lands at
        ``(x * scale + pad_x, y * scale + pad_y)``.
    """
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample))
    out = np.full((size, size, *image.shape[2:]), fill, dtype=image.dtype)
    out[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = resized
    return out, scale, (pad_x, pad_y)


def letterbox_mask(mask: np.ndarray, size: int, fill: int = IGNORE) -> np.ndarray:
    """:func:`letterbox` for a class-id mask: nearest-neighbour (no invented class ids), padding
    ``fill`` (:data:`IGNORE`: the padding is neither background nor object)."""
    return letterbox(mask, size, fill=fill, resample=Image.Resampling.NEAREST)[0]


def letterbox_sample(sample: AnnotatedImage, size: int) -> AnnotatedImage:
    """A letterboxed copy of a detection sample: image, boxes and instance masks moved together."""
    image, scale, (pad_x, pad_y) = letterbox(sample.image, size)
    boxes = np.asarray(sample.boxes, np.float32).reshape(-1, 4) * scale + np.array([pad_x, pad_y] * 2, np.float32)
    masks = None
    if sample.masks is not None:
        masks = np.stack([letterbox_mask(m.astype(np.uint8), size, fill=0) for m in sample.masks]).astype(bool) \
            if len(sample.masks) else np.zeros((0, size, size), bool)
    return AnnotatedImage(image, boxes.astype(np.float32), np.asarray(sample.labels, np.int64), masks,
                          sample.file_name, sample.iscrowd, sample.difficult, sample.truncated)


def unletterbox_boxes(boxes: np.ndarray, scale: float, pad: tuple[int, int],
                      image_shape: tuple[int, ...]) -> np.ndarray:
    """Map ``xyxy`` boxes predicted on a letterboxed image back to the original image's pixels
    (clipped to it)."""
    boxes = (np.asarray(boxes, np.float32).reshape(-1, 4) - np.array([*pad, *pad], np.float32)) / scale
    height, width = image_shape[:2]
    return np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)


# -------------------------------------------------------------------------------- statistics
def data_stats(data: OwnData) -> dict[str, Any]:
    """What :func:`plot_data_stats` draws, as numbers: per-class counts (images for
    classification, objects for detection, pixels for segmentation), image sizes, and for
    detection each box's width and height in pixels."""
    sizes = np.array([image.shape[:2] for image in data.images], dtype=np.int64)  # H, W
    counts: Counter = Counter()
    boxes = np.zeros((0, 2), np.float32)
    if data.labels is not None:
        counts.update(int(k) for k in data.labels)
    elif data.samples is not None:
        for sample in data.samples:
            counts.update(int(k) for k in sample.labels)
        boxes = np.concatenate([np.c_[s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1]]
                                for s in data.samples if len(s.boxes)] or [boxes])
    elif data.masks is not None:
        for mask in data.masks:
            values, n = np.unique(mask, return_counts=True)
            counts.update({int(v) - 1: int(c) for v, c in zip(values, n) if 0 < v < IGNORE})
    return {"class_counts": [counts.get(k, 0) for k in range(len(data.class_names))],
            "unit": {"classification": "images", "detection": "objects", "segmentation": "pixels"}[data.task],
            "image_hw": sizes, "aspect": sizes[:, 1] / sizes[:, 0], "box_wh": boxes}


def plot_data_stats(data: OwnData) -> Any:
    """One figure of the dataset: class counts, image sizes, aspect ratios, and box sizes
    (detection) or the share of each class's pixels (segmentation)."""
    import matplotlib.pyplot as plt

    stats = data_stats(data)
    from matplotlib.ticker import MaxNLocator

    names = data.class_names
    fig, axes = plt.subplots(1, 4 if data.task == "detection" else 3,
                             figsize=(15 if data.task == "detection" else 12, max(3.4, 1.2 + 0.17 * len(names))))
    axes[0].barh(range(len(names)), stats["class_counts"], color="tab:blue")
    axes[0].set(yticks=range(len(names)), yticklabels=names, xlabel=stats["unit"],
                title=f"Class counts ({stats['unit']})")
    axes[0].invert_yaxis()
    hw = stats["image_hw"]
    axes[1].scatter(hw[:, 1], hw[:, 0], s=12, alpha=0.6)
    axes[1].set(xlabel="width (px)", ylabel="height (px)", title=f"Image sizes ({len(hw)} images)")
    axes[2].hist(stats["aspect"], bins=20, color="tab:green")
    axes[2].set(xlabel="width / height", ylabel="images", title="Aspect ratios")
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    if data.task == "detection":
        wh = stats["box_wh"]
        axes[3].scatter(wh[:, 0], wh[:, 1], s=8, alpha=0.5, color="tab:red")
        axes[3].set(xlabel="box width (px)", ylabel="box height (px)", title=f"Box sizes ({len(wh)} boxes)",
                    xscale="log", yscale="log")
    fig.suptitle(f"{data.source.name}: {data.format}, {data.task}, {len(data)} images, {len(names)} classes")
    fig.tight_layout()
    return fig
