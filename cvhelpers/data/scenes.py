"""Deterministic synthetic scenes for detection and segmentation: the course's benchmark.

Each scene is a ``size x size`` RGB image (default 160) with 1-4 shapes (circle, triangle,
square, star) on a textured or real-photo background. Shapes have random colours, sizes,
rotations and a soft shading, may overlap (a later shape hides part of an earlier one), and the
whole image gets sensor-like noise. Labels stay honest: a placement that would leave an earlier
shape less than half visible is rejected, and boxes/masks describe the *visible* part.

Same ``seed`` -> byte-identical images and files. Each image has its own random stream,
``numpy.random.default_rng([seed, split_code, index])``, so splits never share a stream and
image ``i`` does not depend on how many images are generated.

Canonical on-disk form written by :func:`make_scenes_dataset`::

    root/classes.txt                  one class name per line (class id = line index)
    root/meta.json                    generator parameters + content hash (idempotency)
    root/<split>/images/<split>_00000.png
    root/<split>/masks/<split>_00000.png        semantic, uint8 mode L: 0 bg, class id + 1
    root/<split>/annotations.json     COCO instances, RLE masks (see cvhelpers.data.coco)

Example:
    >>> scenes = generate_scenes("train", 8, seed=0)
    >>> scenes[0].image.shape, scenes[0].boxes.dtype
    ((160, 160, 3), dtype('float32'))
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cvhelpers.data.coco import AnnotatedImage, read_coco, write_coco
from cvhelpers.data.photos import load_photo
from cvhelpers.data.validate import DatasetError, PathLike, check_mask, load_label_mask

CLASS_NAMES: tuple[str, ...] = ("circle", "triangle", "square", "star")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# Bump when the generator's output changes, so make_scenes_dataset regenerates old copies.
GENERATOR_VERSION = 1
_PLACEMENT_TRIES = 25
_MIN_CONTRAST = 80.0  # RGB distance between a shape's colour and what lies under it
BACKGROUND_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower")


@dataclass
class Scene(AnnotatedImage):
    """A generated scene: an :class:`~cvhelpers.data.coco.AnnotatedImage` plus the whole shapes.

    Attributes (besides ``image``, ``boxes``, ``labels``, ``masks``, ``file_name``, ``semantic``):
        full_boxes: ``float32`` ``N x 4`` xyxy box of each *whole* shape before occlusion (the
            size the generator drew), or ``None`` for scenes read back from disk.
        full_areas: ``int64`` ``N`` pixel count of each whole shape (so
            ``masks.sum((1, 2)) / full_areas`` is the visible fraction), or ``None``.
    """

    full_boxes: np.ndarray | None = None
    full_areas: np.ndarray | None = None


# ------------------------------------------------------------------------------------ generation
def generate_scenes(
    split: str,
    n: int,
    seed: int = 0,
    size: int = 160,
    objects: tuple[int, int] = (1, 4),
    object_size: tuple[int, int] = (16, 64),
    min_visible: float = 0.5,
    photo_backgrounds: bool = True,
) -> list[Scene]:
    """Generate ``n`` scenes of one split.

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` (or any name: it is hashed into the seed).
        n: Number of scenes.
        seed: Dataset seed; the same seed gives identical scenes.
        size: Image side in pixels (square images).
        objects: Inclusive range of shapes per image. Fewer are placed when no honest
            placement is found in 25 tries (rare; the first shape always fits).
        object_size: Inclusive range, in pixels, of *both* sides of each whole shape's box
            (``full_boxes``, before occlusion; measured on the rasterised mask).
        min_visible: Each shape keeps at least this fraction of its pixels visible.
        photo_backgrounds: Use random crops of real photos (:func:`photo_library`) for ~40 %
            of backgrounds; textures (smooth colour noise, gradients, soft or hard stripes)
            otherwise, and for all of them when no photo is installed.

    Returns:
        Scenes named ``f"{split}_{index:05d}.png"``; instances in painting order (later on top).
    """
    return [
        generate_scene(split, index, seed, size, objects, object_size, min_visible, photo_backgrounds)
        for index in range(n)
    ]


def generate_scene(
    split: str,
    index: int,
    seed: int = 0,
    size: int = 160,
    objects: tuple[int, int] = (1, 4),
    object_size: tuple[int, int] = (16, 64),
    min_visible: float = 0.5,
    photo_backgrounds: bool = True,
) -> Scene:
    """Generate scene number ``index`` of a split (see :func:`generate_scenes`)."""
    rng = np.random.default_rng([seed, split_code(split), index])
    canvas = _background(rng, size, photo_backgrounds)
    full_masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    labels: list[int] = []
    colours: list[np.ndarray] = []
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        label = int(rng.integers(len(CLASS_NAMES)))
        mask = _place_shape(rng, label, size, object_size, full_masks, visible, min_visible)
        if mask is None:
            continue
        colour = _pick_colour(rng, canvas, mask, [c for c, v in zip(colours, visible) if (v & mask).any()])
        _paint(rng, canvas, mask, colour)
        visible = [v & ~mask for v in visible] + [mask]
        full_masks.append(mask)
        labels.append(label)
        colours.append(colour)
    noise = rng.normal(0.0, rng.uniform(2.0, 8.0), canvas.shape)
    image = np.clip(np.rint(canvas + noise), 0, 255).astype(np.uint8)
    masks = np.array(visible, dtype=bool).reshape(-1, size, size)
    full = np.array(full_masks, dtype=bool).reshape(-1, size, size)
    return Scene(
        image=image,
        boxes=masks_to_boxes(masks),
        labels=np.array(labels, dtype=np.int64),
        masks=masks,
        file_name=f"{split}_{index:05d}.png",
        iscrowd=np.zeros(len(labels), dtype=bool),
        full_boxes=masks_to_boxes(full),
        full_areas=full.sum(axis=(1, 2)).astype(np.int64),
    )


def split_code(split: str) -> int:
    """Stable integer per split name (0/1/2 for train/val/test; a CRC32 for other names)."""
    return SPLIT_CODES.get(split, zlib.crc32(split.encode()) + len(SPLIT_CODES))


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """``bool`` ``N x H x W`` -> ``float32`` ``N x 4`` xyxy boxes (x2, y2 exclusive edges)."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs):
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


# -------------------------------------------------------------------------------------- shapes
def _unit_polygon(label: int, angle: float) -> np.ndarray | None:
    """Vertices (``K x 2``) of a shape with circumradius 1, or ``None`` for the circle."""
    name = CLASS_NAMES[label]
    if name == "circle":
        return None
    if name == "triangle":
        radii, count = np.ones(3), 3
    elif name == "square":
        radii, count = np.ones(4), 4
    else:  # star: 5 outer points alternating with inner ones
        radii, count = np.tile([1.0, 0.45], 5), 10
    theta = angle + np.arange(count) * 2 * np.pi / count
    return np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1)


def _place_shape(
    rng: np.random.Generator,
    label: int,
    size: int,
    object_size: tuple[int, int],
    full_masks: list[np.ndarray],
    visible: list[np.ndarray],
    min_visible: float,
) -> np.ndarray | None:
    """Find a pose for a new shape that keeps every earlier shape >= min_visible visible."""
    for _ in range(_PLACEMENT_TRIES):
        mask = _random_shape_mask(rng, label, size, object_size)
        if mask is None:
            continue
        if all((v & ~mask).sum() >= min_visible * f.sum() for v, f in zip(visible, full_masks)):
            return mask
    return None


def _random_shape_mask(
    rng: np.random.Generator, label: int, size: int, object_size: tuple[int, int]
) -> np.ndarray | None:
    """Rasterise one randomly posed shape fully inside the image; ``None`` if its box misses
    ``object_size`` (rotation and rasterisation make the box differ from the drawn size)."""
    side = rng.uniform(object_size[0], object_size[1])
    polygon = _unit_polygon(label, rng.uniform(0, 2 * np.pi))
    if polygon is None:
        polygon = np.array([[-1.0, -1.0], [1.0, 1.0]])  # the circle's box
    polygon = polygon * (side / (polygon.max(0) - polygon.min(0)).max())
    low, high = polygon.min(0), polygon.max(0)
    offset = rng.uniform(-low, size - high - 1)
    polygon = polygon + offset
    canvas = Image.new("L", (size, size), 0)
    points = [tuple(p) for p in polygon.tolist()]
    if label == CLASS_NAMES.index("circle"):
        ImageDraw.Draw(canvas).ellipse(points, fill=1)
    else:
        ImageDraw.Draw(canvas).polygon(points, fill=1)
    mask = np.asarray(canvas, dtype=bool)
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    width, height = xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()
    if not (object_size[0] <= width <= object_size[1] and object_size[0] <= height <= object_size[1]):
        return None
    return mask


def _pick_colour(
    rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, neighbours: list[np.ndarray]
) -> np.ndarray:
    """A random colour that stands out from the background under the shape and from the
    shapes it overlaps; an invisible shape would be a wrong label, not a hard example."""
    under = canvas[mask].mean(axis=0)
    colour = rng.uniform(0, 255, 3)
    for _ in range(20):
        if all(np.linalg.norm(colour - ref) >= _MIN_CONTRAST for ref in [under, *neighbours]):
            break
        colour = rng.uniform(0, 255, 3)
    else:
        colour = np.where(under > 127, rng.uniform(0, 60, 3), rng.uniform(195, 255, 3))
    return colour


def _paint(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """Fill the mask with the colour under a soft linear shading (+-15 %)."""
    size = canvas.shape[0]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    shade = 1.0 + 0.3 * (np.cos(angle) * xx + np.sin(angle) * yy - 0.5)
    canvas[mask] = np.clip(colour[None, :] * shade[mask][:, None], 0, 255)


# --------------------------------------------------------------------------------- backgrounds
def _background(rng: np.random.Generator, size: int, photo_backgrounds: bool) -> np.ndarray:
    """``float64`` ``size x size x 3`` background in 0..255."""
    photos = photo_library() if photo_backgrounds else ()
    kinds = ["photo", "noise", "gradient", "stripes"] if photos else ["noise", "gradient", "stripes"]
    weights = np.array([0.4, 0.2, 0.2, 0.2] if photos else [1 / 3] * 3)
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    if kind == "photo":
        return _photo_crop(rng, photos[int(rng.integers(len(photos)))][1], size)
    if kind == "noise":  # smooth colour noise: a coarse random grid upsampled
        cells = int(rng.integers(3, 9))
        grid = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    along = np.cos(angle) * xx + np.sin(angle) * yy
    first, second = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if kind == "gradient":
        t = (along - along.min()) / (along.max() - along.min())
    else:  # stripes, soft (sine) or hard (square wave)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * along / rng.uniform(6, 30))
        if rng.random() < 0.5:
            t = (t > 0.5).astype(np.float64)
    return first + t[..., None] * (second - first)


def photo_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop of one of the real photos (:func:`photo_library`), resized to
    ``size`` and maybe mirrored: ``float64 size x size x 3`` in 0..255 (a synthetic texture
    when no photo is installed)."""
    photos = photo_library()
    if not photos:
        return _background(rng, size, photo_backgrounds=False)
    return _photo_crop(rng, photos[int(rng.integers(len(photos)))][1], size)


def _photo_crop(rng: np.random.Generator, photo: np.ndarray, size: int) -> np.ndarray:
    height, width = photo.shape[:2]
    side = int(rng.integers(min(size, height, width), min(height, width) + 1))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
    array = np.asarray(crop, dtype=np.float64)
    return array[:, ::-1] if rng.random() < 0.5 else array


@functools.lru_cache(maxsize=1)
def photo_library() -> tuple[tuple[str, np.ndarray], ...]:
    """The real photos used as backgrounds: ``((name, uint8 H x W x 3), ...)``, fixed order.

    A fixed list from :mod:`cvhelpers.data.photos` (files inside the scikit-image and
    scikit-learn wheels), so the dataset does not change when that catalogue grows. Photos
    that are not installed are left out; their names are recorded in ``meta.json``.
    """
    photos = []
    for name in BACKGROUND_PHOTOS:
        try:
            photos.append((name, load_photo(name)))
        except (KeyError, OSError):  # unknown name or missing package: fewer photos, no failure
            continue
    return tuple(photos)


# ------------------------------------------------------------------------------------ on disk
def make_scenes_dataset(
    root: PathLike,
    n_train: int = 600,
    n_val: int = 150,
    n_test: int = 150,
    seed: int = 0,
    size: int = 160,
) -> Path:
    """Write the scenes benchmark in its canonical form (see the module docstring).

    Idempotent: when ``root/meta.json`` records the same parameters and the files still hash
    to its ``content_hash``, nothing is written. Otherwise the split folders are regenerated
    (other files under ``root`` are left alone).

    Returns:
        ``Path(root)``.
    """
    root = Path(root)
    splits = {"train": n_train, "val": n_val, "test": n_test}
    params = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "splits": splits,
        "class_names": list(CLASS_NAMES),
        "photos": [name for name, _ in photo_library()],
    }
    if dataset_is_current(root, params, splits):
        return root
    start_dataset(root, CLASS_NAMES)
    for split, n in splits.items():
        write_scene_split(root / split, generate_scenes(split, n, seed=seed, size=size), CLASS_NAMES)
    finish_dataset(root, params, splits)
    return root


def dataset_is_current(root: Path, params: dict, splits: dict[str, int]) -> bool:
    """``root/meta.json`` records ``params`` and the files still hash to its ``content_hash``."""
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    return meta.get("params") == params and meta.get("content_hash") == content_hash(root, splits)


def start_dataset(root: Path, class_names: Sequence[str]) -> None:
    """Remove ``meta.json`` (an interrupted run must not look complete), write ``classes.txt``."""
    (root / "meta.json").unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in class_names))


def finish_dataset(root: Path, params: dict, splits: dict[str, int]) -> None:
    """Write ``meta.json``: the parameters and the hash of every file, the mark of a complete dataset."""
    meta = {"params": params, "content_hash": content_hash(root, splits)}
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def write_scene_split(split_dir: Path, scenes: Sequence[AnnotatedImage], class_names: Sequence[str]) -> None:
    """One split in the canonical form: ``images/``, ``masks/`` (semantic PNGs), ``annotations.json``."""
    if split_dir.exists():
        shutil.rmtree(split_dir)
    (split_dir / "masks").mkdir(parents=True)
    write_coco(scenes, split_dir / "annotations.json", class_names, split_dir / "images")
    for scene in scenes:
        Image.fromarray(scene.semantic).save(split_dir / "masks" / scene.file_name)


def content_hash(root: Path, splits: dict[str, int]) -> str:
    """SHA-256 over the relative path and bytes of every file of the dataset."""
    digest = hashlib.sha256()
    files = [root / "classes.txt"] + [p for s in splits for p in sorted((root / s).rglob("*")) if p.is_file()]
    for path in files:
        if not path.is_file():
            return ""
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_scenes(root: PathLike, split: str) -> list[Scene]:
    """Read one split of the canonical form back (``full_boxes``, ``full_areas`` are ``None``).

    Reads ``annotations.json`` with :func:`cvhelpers.data.coco.read_coco` (which checks
    images, boxes and masks) and checks each semantic mask PNG against the instance masks.
    """
    root = Path(root)
    split_dir = root / split
    if not (split_dir / "annotations.json").is_file():
        raise DatasetError(
            f"{split_dir / 'annotations.json'}: not found; create the dataset with "
            "cvhelpers.data.scenes.make_scenes_dataset(root)"
        )
    class_names = [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    samples, _ = read_coco(split_dir / "annotations.json", split_dir / "images", class_names)
    scenes = []
    for sample in samples:
        mask_path = split_dir / "masks" / sample.file_name
        semantic = check_mask(load_label_mask(mask_path), sample.image.shape, str(mask_path))
        if sample.masks is None or not np.array_equal(semantic, sample.semantic):
            raise DatasetError(f"{mask_path}: semantic mask disagrees with the instance masks in annotations.json")
        scenes.append(Scene(**{f.name: getattr(sample, f.name) for f in fields(AnnotatedImage)}))
    return scenes
