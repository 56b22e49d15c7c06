"""Detection in the engine: the training step, prediction, and the mAP validator.

A torchvision detector computes its own losses: in train mode ``model(images, targets)``
returns a dict (``loss_classifier``, ``loss_box_reg``, ``loss_objectness``,
``loss_rpn_box_reg``, and ``loss_mask`` for Mask R-CNN). :func:`detection_step` hands that dict
to the engine, which trains on the sum and logs every part. In eval mode the model returns
boxes instead of losses, so the validation metric is COCO mAP (:class:`DetectionValidator`,
the course's own evaluator, checked against pycocotools).

>>> history = fit(model, make_loader(train, 8, shuffle=True, collate_fn=collate_detection),
...               make_loader(val, 8, shuffle=False, collate_fn=collate_detection),
...               optimizer=opt, max_steps=475, step_fn=detection_step,
...               validator=DetectionValidator(num_classes=4), monitor="val_map50")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cvhelpers.env import pick_device
from cvhelpers.models.freezing import eval_mode

__all__ = ["detection_step", "predict_detector", "DetectionValidator"]


def detection_step(model: nn.Module, batch: Any, loss_fn: Callable[..., torch.Tensor] | None = None
                   ) -> tuple[dict[str, torch.Tensor], None, None]:
    """``step_fn`` for torchvision detectors: ``batch = (images, targets)`` as
    :func:`cvhelpers.detection.data.collate_detection` makes it -> the model's loss dict.

    ``loss_fn`` is ignored (the detector has its own losses); there is no accuracy to count.
    """
    images, targets = batch
    return model(list(images), list(targets)), None, None


def predict_detector(model: nn.Module, images: Sequence[np.ndarray] | Iterable, batch_size: int = 8,
                     device: str | torch.device | None = None, mask_threshold: float = 0.5,
                     ) -> list[dict[str, np.ndarray]]:
    """Run a torchvision detector on RGB images; per-image dicts for the COCO evaluators.

    Args:
        model: a torchvision detector (its labels 1-based, 0 = background); its train/eval
            mode is restored afterwards.
        images: ``uint8`` ``H x W x 3`` RGB arrays, or a loader of ``(images, targets)``
            batches of ``float`` ``3 x H x W`` tensors in ``[0, 1]``.
        device: ``None`` keeps the model where it is; anything else moves it there.
        mask_threshold: a Mask R-CNN's mask probabilities above this are the object.

    Returns:
        One dict per image: ``boxes`` ``float32`` ``N x 4`` xyxy, ``scores`` ``float32``,
        ``labels`` ``int64`` **0-based**, and ``masks`` ``bool`` ``N x H x W`` if the model
        predicts masks.
    """
    if device is not None:
        model.to(pick_device(str(device)))
    first = next(model.parameters(), None)  # a model without parameters runs on the CPU
    device = first.device if first is not None else torch.device("cpu")
    if isinstance(images, Sequence):
        batches: Iterable = (
            [torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)
             for image in images[start:start + batch_size]]
            for start in range(0, len(images), batch_size))
    else:
        batches = (list(batch[0]) for batch in images)
    outputs = []
    with eval_mode(model), torch.inference_mode():
        for batch in batches:
            for result in model([image.to(device) for image in batch]):
                prediction = {
                    "boxes": result["boxes"].cpu().numpy().astype(np.float32),
                    "scores": result["scores"].cpu().numpy().astype(np.float32),
                    "labels": result["labels"].cpu().numpy().astype(np.int64) - 1,
                }
                if "masks" in result:
                    prediction["masks"] = result["masks"][:, 0].cpu().numpy() > mask_threshold
                outputs.append(prediction)
    return outputs


class DetectionValidator:
    """``fit``'s validator for torchvision detectors: COCO ``map50`` and ``map50_95`` (and the
    mask scores ``mask_map50``, ``mask_map50_95`` with ``masks=True``) on the validation loader,
    from the course's NumPy evaluator (:func:`cvhelpers.detection.coco_eval.evaluate_detections`).

    Args:
        num_classes: object classes, without background.
        masks: also score the predicted masks (Mask R-CNN).
    """

    def __init__(self, num_classes: int, masks: bool = False) -> None:
        self.num_classes, self.masks = num_classes, masks

    def __call__(self, model: nn.Module, loader: Iterable, device: torch.device) -> dict[str, float]:
        from cvhelpers.detection.coco_eval import evaluate_detections

        truth = []
        for _, targets in loader:
            for t in targets:
                sample = {"boxes": t["boxes"].numpy(), "labels": t["labels"].numpy() - 1}
                if self.masks:
                    sample["masks"] = t["masks"].numpy().astype(bool)
                truth.append(sample)
        predictions = predict_detector(model, loader)
        scores = {}
        for kind in ("bbox", "segm") if self.masks else ("bbox",):
            result = evaluate_detections(predictions, truth, iou_type=kind,
                                         num_classes=self.num_classes)
            prefix = "mask_" if kind == "segm" else ""
            scores[f"{prefix}map50"] = float(result.mean_ap(0.5))
            scores[f"{prefix}map50_95"] = float(result.mean_ap())
        return scores
