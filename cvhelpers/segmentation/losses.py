"""Segmentation losses: Dice for several classes, cross-entropy + Dice, class weights.

A network for semantic segmentation outputs ``N x C x H x W`` logits, one score per class and
pixel; the target is ``N x H x W`` integer class ids (0 = background). Cross-entropy compares
them pixel by pixel, so a class that covers 2 % of the pixels contributes 2 % of the loss.
Dice compares, for each class, the predicted region with the true one as a whole, so a small
class counts as much as a big one. The two together train fast (cross-entropy) and chase
overlap (Dice); weighting cross-entropy by inverse class frequency helps the small classes more.

Example::

    weights = class_weights(train_masks, num_classes=5)      # background gets the smallest
    loss_fn = CEDiceLoss(weight=weights)
    loss = loss_fn(model(images), masks)                    # logits N x 5 x H x W, masks N x H x W
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["one_hot_masks", "dice_loss", "DiceLoss", "CEDiceLoss", "class_pixel_counts",
           "class_weights", "naive_dice_loss"]


def one_hot_masks(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class-index masks ``N x H x W`` (int64) -> one-hot ``N x C x H x W`` float32.

    Channel ``c`` is 1 where the pixel belongs to class ``c``: the same layout as the logits,
    which is what lets a per-class overlap be computed at all.
    """
    if target.dtype not in (torch.int64, torch.int32, torch.uint8):
        raise TypeError(f"target must hold integer class ids, got {target.dtype}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"target holds class ids in [{int(target.min())}, {int(target.max())}] "
                         f"but there are {num_classes} classes")
    return F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).float()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-7,
              classes: Iterable[int] | None = None, ignore_index: int | None = None) -> torch.Tensor:
    """Multi-class soft Dice loss, ``1 - mean over classes of 2|P∩T| / (|P| + |T|)``.

    Args:
        logits: ``N x C x H x W`` raw scores (softmax is applied here).
        target: ``N x H x W`` int64 class ids in ``0 .. C-1``.
        eps: keeps the ratio finite when a class is absent from both prediction and target.
        classes: only these classes enter the mean (default: all).
        ignore_index: target pixels of this value count on neither side (borders, padding).

    Returns:
        A scalar tensor in [0, 1]; 0 for a perfect, confident prediction. Sums run over the
        whole batch per class; a class absent from the batch's target contributes 0 (it has no
        region to overlap), as in ``segmentation_models_pytorch.losses.DiceLoss`` (multiclass).
    """
    if logits.ndim != 4 or target.ndim != 3 or logits.shape[0] != target.shape[0] \
            or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"expected logits N x C x H x W and target N x H x W, got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    probs = logits.float().softmax(dim=1)
    if ignore_index is not None:
        valid = (target != ignore_index).unsqueeze(1)
        target = target.masked_fill(~valid.squeeze(1), 0)
        probs = probs * valid
        truth = one_hot_masks(target, logits.shape[1]) * valid
    else:
        truth = one_hot_masks(target, logits.shape[1])
    dims = (0, 2, 3)  # sum over images and pixels, keep classes
    intersection = (probs * truth).sum(dims)
    cardinality = (probs + truth).sum(dims)
    dice = 2 * intersection / cardinality.clamp_min(eps)
    loss = (1 - dice) * (truth.sum(dims) > 0).float()
    if classes is not None:
        loss = loss[list(classes)]
    return loss.mean()


class DiceLoss(nn.Module):
    """:func:`dice_loss` as a module (``loss_fn(logits, target)``)."""

    def __init__(self, eps: float = 1e-7, classes: Iterable[int] | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.classes = None if classes is None else list(classes)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_loss(logits, target, self.eps, self.classes)


class CEDiceLoss(nn.Module):
    """Cross-entropy (optionally class-weighted) plus Dice: ``ce_weight * CE + dice_weight * Dice``.

    Args:
        weight: ``C`` per-class weights for cross-entropy (see :func:`class_weights`), or None.
        ce_weight, dice_weight: how much each term counts.
        ignore_index: target pixels of this value are left out of both terms.
    """

    def __init__(self, weight: torch.Tensor | None = None, ce_weight: float = 1.0,
                 dice_weight: float = 1.0, ignore_index: int | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.ce_weight, self.dice_weight, self.ignore_index = ce_weight, dice_weight, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), target, weight=self.weight,
                             ignore_index=-100 if self.ignore_index is None else self.ignore_index)
        return self.ce_weight * ce + self.dice_weight * dice_loss(logits, target, ignore_index=self.ignore_index)


def class_pixel_counts(masks: Iterable[np.ndarray], num_classes: int) -> np.ndarray:
    """How many pixels of each class a set of ``H x W`` class-index masks holds (``int64 C``)."""
    counts = np.zeros(num_classes, np.int64)
    for mask in masks:
        counts += np.bincount(np.asarray(mask, np.int64).ravel(), minlength=num_classes)[:num_classes]
    return counts


def class_weights(masks: Iterable[np.ndarray], num_classes: int, power: float = 0.5) -> torch.Tensor:
    """Cross-entropy weights from pixel frequencies: ``(1 / frequency) ** power``, mean 1.

    ``power=1`` is plain inverse frequency (a class with 1 % of the pixels weighs 90x a class
    with 90 %, which makes training jumpy); the default square root is gentler. Classes with
    no pixels get the largest weight seen.

    Returns:
        float32 tensor of ``C`` weights whose mean is 1.
    """
    counts = class_pixel_counts(masks, num_classes).astype(np.float64)
    freq = counts / max(counts.sum(), 1.0)
    weights = np.zeros(num_classes)
    seen = freq > 0
    weights[seen] = (1.0 / freq[seen]) ** power
    weights[~seen] = weights[seen].max() if seen.any() else 1.0
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def naive_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """WRONG ON PURPOSE, for the lesson: the binary Dice formula pasted onto several classes.

    It flattens the softmax output (``N*C*H*W`` numbers) and the class-index target
    (``N*H*W`` numbers, or ``N*C*H*W`` once "fixed" by broadcasting it over the channels) and
    multiplies them. With ``C > 1`` the first raises a shape error; the broadcast "fix" runs but
    treats the class *id* as a probability (class 3 counts 3 times, background not at all), so
    a perfect prediction does not score 0. Use :func:`dice_loss`.
    """
    probs = logits.softmax(dim=1).reshape(-1)
    truth = target.float().reshape(-1)
    intersection = (probs * truth).sum()
    return 1 - 2 * intersection / (probs.sum() + truth.sum())
