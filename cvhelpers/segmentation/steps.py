"""Segmentation in the engine: prediction and the mIoU validator.

A segmentation model trains through the engine's default step
(:func:`cvhelpers.train.steps.supervised_step`: logits ``B x C x H x W`` against class-id
masks ``B x H x W`` with a loss such as :class:`cvhelpers.segmentation.losses.CEDiceLoss`).
What is its own is the metric: :class:`SegmentationValidator` gives ``fit`` the validation
mIoU, so early stopping and the best checkpoint follow it.

>>> history = fit(model, train_loader, val_loader, optimizer=opt, epochs=10, loss_fn=CEDiceLoss(),
...               validator=SegmentationValidator(num_classes=5), monitor="val_miou")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cvhelpers.env import pick_device
from cvhelpers.models.freezing import eval_mode
from cvhelpers.segmentation.metrics import segmentation_scores
from cvhelpers.train.steps import autocast

__all__ = ["predict_masks", "SegmentationValidator"]


def predict_masks(model: nn.Module, data: Dataset | Iterable, batch_size: int = 32,
                  device: str | torch.device | None = None,
                  amp_dtype: torch.dtype | None = None) -> np.ndarray:
    """Predicted class ids for every item: ``uint8`` ``N x H x W`` (argmax over the classes).

    Args:
        model: ``B x 3 x H x W`` -> ``B x C x H x W`` logits; its train/eval mode is restored.
        data: a dataset of ``(image, mask)`` items, or a loader of such batches.
        device: ``None`` keeps the model where it is; anything else moves it there.
        amp_dtype: run the forward pass under autocast (``torch.bfloat16``), or ``None``.
    """
    if device is not None:
        model.to(pick_device(str(device)))
    device = next(model.parameters()).device
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
    out = []
    with eval_mode(model), torch.inference_mode():
        for images, *_ in loader:
            with autocast(device, amp_dtype):
                logits = model(images.to(device))
            out.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


class SegmentationValidator:
    """``fit``'s validator for segmentation: ``{"miou", "mdice", "pixel_accuracy"}`` on the
    validation loader (means over the object classes; class 0 = background).

    Args:
        num_classes: classes including the background.
        amp_dtype: autocast for the forward pass (``None``: float32).
        ignore_index: mask pixels of this value are not scored.
    """

    def __init__(self, num_classes: int, amp_dtype: torch.dtype | None = None,
                 ignore_index: int | None = None) -> None:
        self.num_classes, self.amp_dtype, self.ignore_index = num_classes, amp_dtype, ignore_index

    def __call__(self, model: nn.Module, loader: Iterable, device: torch.device) -> dict[str, float]:
        masks = np.concatenate([m.numpy() for _, m, *_ in loader])
        pred = predict_masks(model, loader, amp_dtype=self.amp_dtype)
        scores = segmentation_scores(pred, masks, self.num_classes, ignore_index=self.ignore_index)
        return {"miou": scores.miou, "mdice": scores.mdice, "pixel_accuracy": scores.pixel_accuracy}
