"""Augmentation presets for classification, detection and segmentation, in two libraries.

One set of strengths (:class:`AugmentSettings`) builds the *same* pipeline in torchvision
``transforms.v2`` and in albumentations 2.x: random resized crop, flips, affine (rotation,
translation, scale), colour jitter (brightness, contrast), HSV jitter, Gaussian noise, Gaussian
blur, motion blur, coarse dropout, normalisation and conversion to a tensor. A :class:`Preset`
wraps either pipeline behind one call, so boxes, labels and masks travel with the image::

    preset = train_preset("detection", "albumentations", size=160)
    out = preset(scene.image, boxes=scene.boxes, labels=scene.labels, masks=scene.masks)
    out["image"].shape, out["boxes"].shape      # (3, 160, 160) float32, (N', 4) xyxy pixels

Conventions (see docs/DESIGN.md): input images ``H x W x 3`` (or ``H x W``) ``uint8``; boxes
``N x 4`` xyxy pixels; instance masks ``bool N x H x W``; semantic masks ``uint8 H x W``.
Outputs are torch tensors: image ``float32 C x H x W`` (normalised when the settings have a
mean), boxes ``float32 N' x 4``, labels ``int64 N'``, masks ``bool N' x H x W``, mask ``int64``.

albumentations 2.x only *warns* about arguments it does not know and then uses its defaults, so
an old recipe runs but augments differently. :func:`albu` builds every albumentations transform
of this module with ``strict=True`` and turns construction warnings into errors: a misspelt or
outdated argument raises instead of being dropped.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cvhelpers.augment.ops import OLD_ARGUMENTS, CoarseDropout, RandomMotionBlur, albu

__all__ = [
    "Task", "Backend", "IMAGENET_MEAN", "IMAGENET_STD", "AugmentSettings", "preset_settings",
    "Preset", "train_preset", "eval_preset", "RECOMMENDED_BACKEND", "recommended_preset",
    "denormalize", "AugmentedDataset",
]

Task = Literal["classification", "detection", "segmentation"]
Backend = Literal["torchvision", "albumentations"]
TASKS: tuple[str, ...] = ("classification", "detection", "segmentation")
BACKENDS: tuple[str, ...] = ("torchvision", "albumentations")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentSettings:
    """Strengths and probabilities of every step of a training preset (one source for both
    libraries). ``*_p`` fields are probabilities; 0 leaves the step out.

    Attributes:
        size: output side in pixels (square).
        crop_scale: area fraction range of the random resized crop.
        hflip_p, vflip_p: flip probabilities.
        rotate: max rotation in degrees (either way); translate: max shift as a fraction of the
            side; scale: zoom range of the affine step.
        brightness, contrast: colour jitter strength (factor range ``1 +- x``).
        hue, saturation, value: HSV jitter, as fractions (hue of the full circle, saturation and
            value of their range). albumentations shifts them additively
            (``HueSaturationValue``); torchvision uses ``ColorJitter(hue, saturation,
            brightness)``, which works in HSV for the hue and multiplies for the other two.
        noise_std: Gaussian noise std range as a fraction of 255 (torchvision: its midpoint).
        blur_sigma: Gaussian blur sigma range in pixels.
        motion_blur: largest motion-blur kernel (odd, pixels).
        dropout_holes, dropout_size: coarse dropout: number of holes, and hole side range as a
            fraction of the image side. Holes are filled with black; labels are unchanged.
        mean, std: normalisation per channel (after scaling to [0, 1]); ``None`` skips it.
        min_box_side: boxes narrower or lower than this (pixels) after augmenting are dropped,
            with their labels and instance masks.
    """

    size: int = 224
    crop_scale: tuple[float, float] = (0.35, 1.0)
    hflip_p: float = 0.5
    vflip_p: float = 0.0
    rotate: float = 15.0
    translate: float = 0.05
    scale: tuple[float, float] = (0.9, 1.1)
    affine_p: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    color_p: float = 0.8
    hue: float = 0.015
    saturation: float = 0.4
    value: float = 0.2
    hsv_p: float = 0.5
    noise_std: tuple[float, float] = (0.02, 0.06)
    noise_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    blur_p: float = 0.1
    motion_blur: int = 7
    motion_blur_p: float = 0.1
    dropout_holes: tuple[int, int] = (1, 3)
    dropout_size: tuple[float, float] = (0.05, 0.15)
    dropout_p: float = 0.3
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    min_box_side: float = 2.0


# Detection keeps most of each object (a crop that cuts an object in half leaves a box around
# something that no longer looks like its class), rotates less (a rotated box is looser) and
# uses small dropout holes (a hole can hide a small object while its box stays).
_TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "classification": {},
    "detection": {"crop_scale": (0.6, 1.0), "rotate": 10.0, "dropout_size": (0.03, 0.08),
                  "dropout_p": 0.2},
    "segmentation": {"crop_scale": (0.5, 1.0)},
}


def preset_settings(task: Task, size: int = 224, **overrides: Any) -> AugmentSettings:
    """The course's default :class:`AugmentSettings` for ``task``, with ``overrides`` applied.

    >>> preset_settings("detection", size=160, rotate=0).rotate
    0
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return replace(AugmentSettings(size=size), **{**_TASK_DEFAULTS[task], **overrides})


# --------------------------------------------------------------------------- building presets
def _torchvision_train(s: AugmentSettings) -> v2.Compose:
    def maybe(p: float, *steps: Any) -> list[Any]:
        return [v2.RandomApply(list(steps), p=p)] if p > 0 else []

    blur_kernel = 2 * math.ceil(3 * s.blur_sigma[1]) + 1  # covers +-3 sigma
    steps: list[Any] = [
        v2.ToImage(),
        v2.RandomResizedCrop(s.size, scale=s.crop_scale, antialias=True),
        *([v2.RandomHorizontalFlip(s.hflip_p)] if s.hflip_p > 0 else []),
        *([v2.RandomVerticalFlip(s.vflip_p)] if s.vflip_p > 0 else []),
        *maybe(s.affine_p, v2.RandomAffine(degrees=s.rotate, translate=(s.translate, s.translate),
                                           scale=s.scale)),
        *maybe(s.color_p, v2.ColorJitter(brightness=s.brightness, contrast=s.contrast)),
        *maybe(s.hsv_p, v2.ColorJitter(brightness=s.value, saturation=s.saturation, hue=s.hue)),
        v2.ToDtype(torch.float32, scale=True),  # images only; masks keep their integer dtype
        *maybe(s.noise_p, v2.GaussianNoise(sigma=sum(s.noise_std) / 2)),
        *maybe(s.blur_p, v2.GaussianBlur(blur_kernel, sigma=s.blur_sigma)),
        *maybe(s.motion_blur_p, RandomMotionBlur(s.motion_blur)),
        *maybe(s.dropout_p, CoarseDropout(s.dropout_holes, s.dropout_size)),
    ]
    # Crops and affines move boxes out of the picture: clip them, then drop the ones thinner
    # than min_box_side together with their labels and instance masks. (Both need "boxes" and
    # "labels" in the sample; a Preset always passes them, maybe empty.)
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=s.min_box_side)]
    if s.mean is not None:
        steps.append(v2.Normalize(s.mean, s.std))
    return v2.Compose(steps)


def _albumentations_compose(steps: list[Any], s: AugmentSettings) -> Any:
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    steps.append(albu("Normalize", mean=s.mean, std=s.std) if s.mean is not None
                 else albu("Normalize", mean=0.0, std=1.0))  # only scales to [0, 1]
    steps.append(ToTensorV2())
    boxes = A.BboxParams(format="pascal_voc", label_fields=["labels", "instance_ids"], clip=True,
                         min_width=s.min_box_side, min_height=s.min_box_side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return A.Compose(steps, bbox_params=boxes, strict=True)


def _albumentations_train(s: AugmentSettings) -> Any:
    def maybe(p: float, name: str, **kwargs: Any) -> list[Any]:
        return [albu(name, p=p, **kwargs)] if p > 0 else []

    import cv2  # albumentations needs OpenCV; the torchvision presets do not

    steps = [
        # INTER_NEAREST_EXACT samples mask pixels at their centres, as the box arithmetic
        # assumes; OpenCV's plain INTER_NEAREST shifts masks by up to a pixel when enlarging.
        albu("RandomResizedCrop", size=(s.size, s.size), scale=s.crop_scale,
             mask_interpolation=cv2.INTER_NEAREST_EXACT),
        *maybe(s.hflip_p, "HorizontalFlip"),
        *maybe(s.vflip_p, "VerticalFlip"),
        *maybe(s.affine_p, "Affine", rotate=(-s.rotate, s.rotate), scale=s.scale,
               translate_percent=(-s.translate, s.translate)),
        *maybe(s.color_p, "ColorJitter", brightness=s.brightness, contrast=s.contrast,
               saturation=0.0, hue=0.0),
        # OpenCV's uint8 hue runs 0..179, saturation and value 0..255.
        *maybe(s.hsv_p, "HueSaturationValue", hue_shift_limit=s.hue * 180,
               sat_shift_limit=s.saturation * 255, val_shift_limit=s.value * 255),
        *maybe(s.noise_p, "GaussNoise", std_range=s.noise_std),
        *maybe(s.blur_p, "GaussianBlur", sigma_limit=s.blur_sigma),
        *maybe(s.motion_blur_p, "MotionBlur", blur_limit=(3, s.motion_blur)),
        # boxes stay put under the holes (see augment_ops): they must keep enclosing the masks
        *maybe(s.dropout_p, "CoarseDropoutKeepBoxes", num_holes_range=s.dropout_holes,
               hole_height_range=s.dropout_size, hole_width_range=s.dropout_size, fill=0),
    ]
    return _albumentations_compose(steps, s)


@dataclass
class Preset:
    """A pipeline of either library behind one call: ``preset(image, boxes=..., ...)``.

    Attributes:
        task, backend: what it was built for and with.
        pipeline: the library's own object (``v2.Compose`` or ``albumentations.Compose``), to
            print or to use directly. albumentations' one expects ``bboxes``, ``labels`` and
            ``instance_ids`` keys (empty arrays when there are no boxes).
        settings: the :class:`AugmentSettings` it was built from (``None`` for eval presets).
    """

    task: str
    backend: str
    pipeline: Any
    settings: AugmentSettings | None = None
    _seeded_for: int | None = field(default=None, init=False, repr=False, compare=False)

    def __call__(self, image: np.ndarray, boxes: np.ndarray | None = None,
                 labels: np.ndarray | None = None, masks: np.ndarray | None = None,
                 mask: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Transform one image and whatever labels it has, keeping them in sync.

        Args:
            image: ``uint8 H x W x 3`` RGB (or ``H x W`` grey) array.
            boxes: ``N x 4`` xyxy pixels; labels: ``N`` class ids (zeros when not given).
            masks: ``bool N x H x W`` instance masks (one per box, when boxes are given).
            mask: ``uint8 H x W`` semantic mask.

        Returns:
            ``{"image": float32 C x S x S}`` plus ``"boxes"`` (float32 ``N' x 4``),
            ``"labels"`` (int64 ``N'``), ``"masks"`` (bool ``N' x S x S``) and ``"mask"``
            (int64 ``S x S``) for the inputs given. Boxes dropped by the pipeline (outside the
            crop, thinner than ``min_box_side``) take their labels and masks with them.
        """
        image = np.asarray(image)
        if labels is None and boxes is not None:
            labels = np.zeros(len(boxes), dtype=np.int64)
        run = self._torchvision if self.backend == "torchvision" else self._albumentations
        return run(image, boxes, labels, masks, mask)

    def _torchvision(self, image, boxes, labels, masks, mask) -> dict[str, torch.Tensor]:
        sample: dict[str, Any] = {"image": tv_tensors.Image(torch.from_numpy(
            np.ascontiguousarray(image[..., None] if image.ndim == 2 else image)).permute(2, 0, 1))}
        # Always some boxes (maybe none): SanitizeBoundingBoxes needs boxes and labels to exist.
        box_array = np.asarray(boxes if boxes is not None else [], np.float32).reshape(-1, 4)
        sample["boxes"] = tv_tensors.BoundingBoxes(torch.from_numpy(box_array), format="XYXY",
                                                   canvas_size=image.shape[:2])
        sample["labels"] = torch.as_tensor(np.asarray(labels if labels is not None else [],
                                                      np.int64))
        if masks is not None:
            sample["masks"] = tv_tensors.Mask(torch.from_numpy(np.asarray(masks, np.uint8)))
        if mask is not None:
            sample["mask"] = tv_tensors.Mask(torch.from_numpy(np.asarray(mask, np.uint8)))
        out = self.pipeline(sample)
        result = {"image": out["image"].as_subclass(torch.Tensor)}
        if boxes is not None:
            result["boxes"] = out["boxes"].as_subclass(torch.Tensor).float()
            result["labels"] = out["labels"]
        if masks is not None:
            result["masks"] = out["masks"].as_subclass(torch.Tensor).bool()
        if mask is not None:
            result["mask"] = out["mask"].as_subclass(torch.Tensor).long()
        return result

    def _albumentations(self, image, boxes, labels, masks, mask) -> dict[str, torch.Tensor]:
        # albumentations keeps its own generators, seeded from OS entropy unless told: then no
        # two runs augment alike. Seed them from torch's generator whenever torch's seed is new:
        # once after seed_everything in the main process, and in every DataLoader worker each
        # epoch (torch reseeds workers per worker and epoch), so runs repeat and workers differ.
        if self._seeded_for != torch.initial_seed():
            self._seeded_for = torch.initial_seed()
            self.pipeline.set_random_seed(int(torch.randint(2**31, ())))
        n = 0 if boxes is None else len(boxes)
        data: dict[str, Any] = {
            "image": image,
            "bboxes": np.zeros((0, 4), np.float32) if boxes is None
            else np.asarray(boxes, np.float32).reshape(-1, 4),
            "labels": np.zeros(0, np.int64) if labels is None else np.asarray(labels),
            # albumentations drops filtered boxes but not the masks: the ids tell which survived.
            "instance_ids": np.arange(n),
        }
        if masks is not None:
            data["masks"] = np.asarray(masks, np.uint8)
        if mask is not None:
            data["mask"] = np.asarray(mask, np.uint8)
        out = self.pipeline(**data)
        result = {"image": out["image"]}
        if boxes is not None:
            result["boxes"] = torch.as_tensor(np.asarray(out["bboxes"], np.float32)).reshape(-1, 4)
            # albumentations hands label lists back as floats: cast before they reach a model.
            result["labels"] = torch.as_tensor(np.asarray(out["labels"]).astype(np.int64))
        if masks is not None:
            keep = np.asarray(out["instance_ids"]).astype(np.int64) if boxes is not None \
                else np.arange(len(masks))
            stacked = torch.as_tensor(np.asarray(out["masks"]))
            result["masks"] = stacked.reshape(-1, *result["image"].shape[-2:])[keep].bool()
        if mask is not None:
            result["mask"] = torch.as_tensor(np.asarray(out["mask"])).long()
        return result


def train_preset(task: Task, backend: Backend = "torchvision", size: int = 224,
                 settings: AugmentSettings | None = None, **overrides: Any) -> Preset:
    """The training augmentation preset for ``task`` in ``backend``.

    Args:
        task: ``"classification"``, ``"detection"`` or ``"segmentation"`` (the steps are the
            same; their strengths differ, see :func:`preset_settings`).
        backend: ``"torchvision"`` (``transforms.v2``) or ``"albumentations"``.
        size: output side in pixels (ignored when ``settings`` is given).
        settings: all strengths at once; ``overrides`` change single fields.

    >>> preset = train_preset("classification", "torchvision", size=64)
    >>> preset(np.zeros((80, 100, 3), np.uint8))["image"].shape
    torch.Size([3, 64, 64])
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if settings is None:
        settings = preset_settings(task, size, **overrides)
    else:
        settings = replace(settings, **overrides)
    build = _torchvision_train if backend == "torchvision" else _albumentations_train
    return Preset(task, backend, build(settings), settings)


def eval_preset(task: Task, backend: Backend = "torchvision", size: int = 224,
                mean: tuple[float, ...] | None = IMAGENET_MEAN,
                std: tuple[float, ...] | None = IMAGENET_STD) -> Preset:
    """Evaluation preprocessing: no randomness, the same normalisation as training.

    Classification resizes the shorter side to ``size`` and crops the centre; detection and
    segmentation resize the whole image to ``size x size`` (boxes and masks follow).
    """
    settings = AugmentSettings(size=size, mean=mean, std=std)
    if backend == "torchvision":
        resize = ([v2.Resize(size, antialias=True), v2.CenterCrop(size)] if task == "classification"
                  else [v2.Resize((size, size), antialias=True)])
        steps = [v2.ToImage(), *resize, v2.ToDtype(torch.float32, scale=True)]
        steps += [v2.Normalize(mean, std)] if mean is not None else []
        return Preset(task, backend, v2.Compose(steps))
    if backend != "albumentations":
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    import cv2  # albumentations needs OpenCV; the torchvision presets do not

    exact = {"mask_interpolation": cv2.INTER_NEAREST_EXACT}
    resize = ([albu("SmallestMaxSize", max_size=size, **exact),
               albu("CenterCrop", height=size, width=size)]
              if task == "classification" else [albu("Resize", height=size, width=size, **exact)])
    return Preset(task, backend, _albumentations_compose(resize, settings))


#: The faster library per task where both do the same steps, measured with
#: ``benchmarks/augmentation.py`` (one thread, as in a DataLoader worker; 2-core AMD EPYC,
#: shared and busy, 2026-11-27). Images/s torchvision -> albumentations: classification
#: 560 -> 2,177 (160 px scenes) and 303 -> 1,395 (photos to 224 px); detection with boxes
#: 509 -> 961; segmentation with masks 433 -> 1,493. Re-measure on your machine.
#: The same run found torchvision v2 per-image steps up to ~30x slower in a main process with
#: 2 torch threads on a busy CPU than with 1: augment in DataLoader workers (which use 1
#: thread) or call ``torch.set_num_threads(1)`` in a process that only augments.
RECOMMENDED_BACKEND: dict[str, str] = {
    "classification": "albumentations",
    "detection": "albumentations",
    "segmentation": "albumentations",
}


def recommended_preset(task: Task, size: int = 224, **overrides: Any) -> Preset:
    """:func:`train_preset` in the library that :data:`RECOMMENDED_BACKEND` measured faster."""
    return train_preset(task, RECOMMENDED_BACKEND[task], size, **overrides)


def denormalize(image: torch.Tensor, mean: tuple[float, ...] | None = IMAGENET_MEAN,
                std: tuple[float, ...] | None = IMAGENET_STD) -> np.ndarray:
    """Undo normalisation for display: ``float C x H x W`` -> ``uint8 H x W x C``
    (``H x W`` for one channel)."""
    image = image.detach().float().cpu()
    if mean is not None:
        image = image * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


class AugmentedDataset(Dataset):
    """Images in memory with labels, transformed by a :class:`Preset` (or any callable that
    returns ``{"image": tensor}``) each time an item is read: a new augmentation every epoch.

    Args:
        images: ``uint8 N x H x W x 3`` or ``N x H x W``; labels: ``N`` class ids.
        transform: e.g. ``train_preset("classification", size=28, mean=None, std=None)``.

    Items are ``(float32 C x S x S tensor, int64 label)``, ready for ``cvhelpers.train.engine.fit``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray,
                 transform: Callable[[np.ndarray], dict[str, torch.Tensor]]) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, np.asarray(labels, np.int64), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index])["image"], torch.tensor(self.labels[index])
