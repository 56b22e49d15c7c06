"""Real photographed objects on real photos: the course's harder detection benchmark.

The shapes benchmark (:mod:`cvhelpers.data.scenes`) is learnable in minutes: four flat-coloured
polygons. Here the objects are **product photographs**: Fashion-MNIST's 70,000 greyscale photos
of clothes, shoes and bags (10 classes, four of them easy to confuse: T-shirt/top, pullover,
coat and shirt). Each instance is cut out by its silhouette (Fashion-MNIST photographed every
product on black, so the silhouette is the non-black pixels, holes filled), scaled so its longer
side is 24-72 px (log-uniform), tinted a random colour, and placed on a random crop of one of the
course's real photos; later objects may hide part of earlier ones. Boxes and instance masks
describe the **visible** part; a placement that would leave an earlier object less than half
visible is rejected (as in the scenes).

No object is shared between splits, and no test object was ever seen in training: ``train``
draws from 54,000 of Fashion-MNIST's training photos, ``val`` from the other 6,000 (a fixed,
seeded partition), ``test`` from Fashion-MNIST's own 10,000 test photos. Each split's
``sources.json`` names the photo behind every object: ``{"fashion_mnist_split": "train" or
"test", "objects": {file name: [Fashion-MNIST index of each object, in annotation order]}}``.

Same ``seed`` -> byte-identical files; each image has its own random stream,
``numpy.random.default_rng([seed, 7, split_code, index])``. On disk, the layout of the scenes
(``classes.txt``, ``meta.json``, ``<split>/images``, ``<split>/masks``,
``<split>/annotations.json`` in COCO), so every reader and notebook that takes the scenes takes
this too.

Example:
    >>> root = make_objects_dataset("datasets/objects", fashion_root="datasets")  # doctest: +SKIP
    >>> from cvhelpers.data.owndata import load_own_data                          # doctest: +SKIP
    >>> load_own_data(root).class_names[:3]                                        # doctest: +SKIP
    ['T-shirt/top', 'Trouser', 'Pullover']
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cvhelpers.data.fashion_mnist import CLASS_NAMES as FASHION_CLASSES
from cvhelpers.data.fashion_mnist import load_fashion_mnist
from cvhelpers.data.scenes import (Scene, dataset_is_current, finish_dataset, masks_to_boxes, photo_background, photo_library,
                                   split_code, start_dataset, write_scene_split)
from cvhelpers.data.validate import PathLike

__all__ = ["CLASS_NAMES", "ObjectPool", "object_pools", "silhouette", "generate_object_scene",
           "generate_object_scenes", "make_objects_dataset"]

CLASS_NAMES: tuple[str, ...] = tuple(FASHION_CLASSES)
GENERATOR_VERSION = 1
#: Fashion-MNIST training photos kept for ``val`` (the rest are ``train``'s); ``test`` uses its test set.
VAL_POOL = 6000
_PLACEMENT_TRIES = 25
_MIN_CONTRAST = 45.0  # mean RGB distance between an object and the photo under it
_STREAM = 7  # keeps these streams apart from the scenes' ([seed, split, index])


@dataclass
class ObjectPool:
    """The Fashion-MNIST photos one split draws its objects from.

    Attributes:
        images: ``uint8 N x 28 x 28``; labels: ``int64 N``.
        source_split: ``"train"`` or ``"test"`` (Fashion-MNIST's); indices: each photo's index there.
    """

    images: np.ndarray
    labels: np.ndarray
    source_split: str
    indices: np.ndarray


def object_pools(fashion_root: PathLike, seed: int = 0) -> dict[str, ObjectPool]:
    """``{"train", "val", "test"}`` pools: disjoint, test from Fashion-MNIST's test split."""
    train_images, train_labels = load_fashion_mnist(fashion_root, "train")
    test_images, test_labels = load_fashion_mnist(fashion_root, "test")
    order = np.random.default_rng([seed, _STREAM]).permutation(len(train_images))
    val_idx, train_idx = np.sort(order[:VAL_POOL]), np.sort(order[VAL_POOL:])
    return {
        "train": ObjectPool(train_images[train_idx], train_labels[train_idx], "train", train_idx),
        "val": ObjectPool(train_images[val_idx], train_labels[val_idx], "train", val_idx),
        "test": ObjectPool(test_images, test_labels, "test", np.arange(len(test_images))),
    }


def silhouette(photo: np.ndarray, threshold: int = 12) -> np.ndarray:
    """The product's mask in a Fashion-MNIST photo: pixels brighter than the black backdrop,
    holes filled (dark prints and shadows inside a garment belong to it)."""
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(photo > threshold)


def _cutout(rng: np.random.Generator, photo: np.ndarray, object_size: tuple[int, int]
            ) -> tuple[np.ndarray, np.ndarray] | None:
    """The photo cropped to its silhouette and scaled so its longer side is drawn from
    ``object_size`` (log-uniform): ``(grey float H x W, mask bool H x W)``, or None if empty."""
    mask = silhouette(photo)
    if mask.sum() < 20:
        return None
    ys, xs = np.nonzero(mask)
    crop, mask = photo[ys.min():ys.max() + 1, xs.min():xs.max() + 1], mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    side = float(np.exp(rng.uniform(np.log(object_size[0]), np.log(object_size[1]))))
    scale = side / max(crop.shape)
    new = (max(4, round(crop.shape[1] * scale)), max(4, round(crop.shape[0] * scale)))
    grey = np.asarray(Image.fromarray(crop).resize(new, Image.Resampling.BICUBIC), np.float64)
    alpha = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(new, Image.Resampling.BILINEAR)) >= 128
    return grey.clip(0, 255), alpha


def _tint(rng: np.random.Generator, grey: np.ndarray, under: np.ndarray) -> np.ndarray:
    """Colour the grey product photo (its shading kept) so it stands out from what lies under it."""
    best, best_gap = None, -1.0
    for _ in range(8):
        colour = rng.uniform(0.25, 1.0, 3)
        gain = rng.uniform(0.9, 1.6)
        rgb = np.clip(30.0 + grey[..., None] * colour * gain, 0, 255)
        gap = float(np.linalg.norm(rgb.reshape(-1, 3).mean(0) - under.reshape(-1, 3).mean(0)))
        if gap >= _MIN_CONTRAST:
            return rgb
        if gap > best_gap:
            best, best_gap = rgb, gap
    return best


def generate_object_scene(split: str, index: int, pool: ObjectPool, seed: int = 0, size: int = 160,
                          objects: tuple[int, int] = (1, 4), object_size: tuple[int, int] = (24, 72),
                          min_visible: float = 0.5) -> tuple[Scene, list[int]]:
    """Scene number ``index`` of a split, and the pool index behind each of its objects."""
    rng = np.random.default_rng([seed, _STREAM, split_code(split), index])
    canvas = photo_background(rng, size)
    full_masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    labels: list[int] = []
    sources: list[int] = []
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        pick = int(rng.integers(len(pool.labels)))
        cut = _cutout(rng, pool.images[pick], object_size)
        if cut is None:
            continue
        grey, alpha = cut
        height, width = alpha.shape
        if height > size or width > size:
            continue
        for _try in range(_PLACEMENT_TRIES):
            top, left = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - width + 1))
            mask = np.zeros((size, size), bool)
            mask[top:top + height, left:left + width] = alpha
            if all((v & ~mask).sum() >= min_visible * f.sum() for v, f in zip(visible, full_masks)):
                break
        else:
            continue
        region = canvas[top:top + height, left:left + width]
        rgb = _tint(rng, grey, region[alpha])
        region[alpha] = rgb[alpha]
        visible = [v & ~mask for v in visible] + [mask]
        full_masks.append(mask)
        labels.append(int(pool.labels[pick]))
        sources.append(pick)
    noise = rng.normal(0.0, rng.uniform(2.0, 8.0), canvas.shape)
    image = np.clip(np.rint(canvas + noise), 0, 255).astype(np.uint8)
    masks = np.array(visible, dtype=bool).reshape(-1, size, size)
    full = np.array(full_masks, dtype=bool).reshape(-1, size, size)
    scene = Scene(image=image, boxes=masks_to_boxes(masks), labels=np.array(labels, dtype=np.int64), masks=masks,
                  file_name=f"{split}_{index:05d}.png", iscrowd=np.zeros(len(labels), dtype=bool),
                  full_boxes=masks_to_boxes(full), full_areas=full.sum(axis=(1, 2)).astype(np.int64))
    return scene, sources


def generate_object_scenes(split: str, n: int, pool: ObjectPool, seed: int = 0, **kwargs) -> tuple[list[Scene], list[list[int]]]:
    """``n`` scenes of one split (see :func:`generate_object_scene`) and their objects' pool indices."""
    made = [generate_object_scene(split, i, pool, seed=seed, **kwargs) for i in range(n)]
    return [m[0] for m in made], [m[1] for m in made]


def make_objects_dataset(root: PathLike, fashion_root: PathLike = "datasets", n_train: int = 1200,
                         n_val: int = 300, n_test: int = 300, seed: int = 0, size: int = 160) -> Path:
    """Write the benchmark in the scenes' on-disk form, plus ``<split>/sources.json``.

    Idempotent like :func:`cvhelpers.data.scenes.make_scenes_dataset`: when ``meta.json``
    records the same parameters and the files hash to its ``content_hash``, nothing is written.
    """
    root = Path(root)
    splits = {"train": n_train, "val": n_val, "test": n_test}
    params = {"generator_version": GENERATOR_VERSION, "seed": seed, "size": size, "splits": splits,
              "class_names": list(CLASS_NAMES), "photos": [name for name, _ in photo_library()],
              "object_size": [24, 72], "objects": [1, 4], "min_visible": 0.5}
    if dataset_is_current(root, params, splits):
        return root
    start_dataset(root, CLASS_NAMES)
    pools = object_pools(fashion_root, seed=seed)
    for split, n in splits.items():
        scenes, sources = generate_object_scenes(split, n, pools[split], seed=seed, size=size)
        write_scene_split(root / split, scenes, CLASS_NAMES)
        pool = pools[split]
        (root / split / "sources.json").write_text(json.dumps({
            "fashion_mnist_split": pool.source_split,
            "objects": {scene.file_name: [int(pool.indices[k]) for k in picks] for scene, picks in zip(scenes, sources)},
        }) + "\n")
    finish_dataset(root, params, splits)
    return root
