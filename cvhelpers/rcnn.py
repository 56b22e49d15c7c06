"""Two-stage detectors (torchvision Faster / Mask R-CNN) on the course's scenes.

* :class:`DetectionDataset`: ``AnnotatedImage``/``Scene`` objects as torchvision detection
  samples (``image, target``; labels **1-based**, 0 is torchvision's background), masks included.
* :func:`lite0_fpn_backbone`, :func:`faster_rcnn_lite0`, :func:`mask_rcnn_lite0`: detectors on
  the offline EfficientNet-Lite0 ImageNet weights (timm feature extractor + FPN), sized for a
  CPU (input 320, ``box_batch_size_per_image=64``).
* :func:`train_detector`: a time-budgeted training loop for any torchvision detector.
* :func:`predict_detector`: per-image dicts (0-based labels) that
  :func:`cvhelpers.coco_eval.evaluate_coco` scores.

The same data in Detectron2's dataset format: :func:`cvhelpers.data.detectron2.to_detectron2_dicts`.

Example:
    >>> model = faster_rcnn_lite0(num_classes=4)                                   # doctest: +SKIP
    >>> history = train_detector(model, DetectionDataset(train, augment=True), time_budget_s=180)  # doctest: +SKIP
    >>> evaluate_coco(predict_detector(model, [s.image for s in test]), test, CLASS_NAMES)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

# re-exported: notebooks import the Detectron2 conversion from here too
from cvhelpers.data.detectron2 import DETECTRON2_XYXY_ABS, to_detectron2_dicts  # noqa: F401
from cvhelpers.models import eval_mode
from cvhelpers.pretrained import LITE0_ARCH, LITE0_MEAN, LITE0_STD, load_lite0_weights

#: Output strides and channels of the Lite0 stages the FPN reads (timm out_indices 2, 3, 4).
LITE0_STRIDES = (8, 16, 32)
LITE0_CHANNELS = (40, 112, 320)
#: Default anchors for scenes (objects 16-64 px, nearly square boxes) shown to the model at
#: 320 px: two sizes per FPN level, one aspect ratio (height / width), as notebook 05 derives
#: them from the training boxes with :func:`cvhelpers.detection.suggest_anchors`.
DEFAULT_ANCHOR_SIZES = ((39, 56), (71, 86), (102, 122))
DEFAULT_ASPECT_RATIOS = (1.0,)


# ------------------------------------------------------------------------------------- data
class DetectionDataset(Dataset):
    """Annotated images as torchvision detection samples.

    Item ``i`` is ``(image, target)``: ``image`` ``float32`` ``3 x H x W`` in ``[0, 1]`` (the
    detector normalises inside), ``target`` a dict with ``boxes`` ``float32`` ``N x 4`` xyxy,
    ``labels`` ``int64`` **1-based** (class id + 1), ``masks`` ``uint8`` ``N x H x W`` (when the
    sample has masks), ``image_id``, ``area``, ``iscrowd``.

    Args:
        samples: ``AnnotatedImage``/``Scene`` objects (0-based labels).
        augment: random horizontal flips (boxes and masks flipped too).
        with_masks: include ``masks`` (Mask R-CNN needs them; Faster R-CNN ignores them).
    """

    def __init__(self, samples: Sequence[Any], augment: bool = False, with_masks: bool = True,
                 seed: int = 0) -> None:
        self.samples = samples
        self.augment = augment
        self.with_masks = with_masks
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self.samples[index]
        image = np.asarray(sample.image)
        boxes = np.asarray(sample.boxes, np.float32).reshape(-1, 4).copy()
        masks = sample.masks if self.with_masks and sample.masks is not None else None
        if self.augment and self.rng.random() < 0.5:
            width = image.shape[1]
            image = image[:, ::-1]
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
            masks = None if masks is None else masks[:, :, ::-1]
        target = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.as_tensor(np.asarray(sample.labels), dtype=torch.int64) + 1,
            "image_id": torch.tensor(index),
            "area": torch.from_numpy((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])),
            "iscrowd": torch.zeros(len(boxes), dtype=torch.int64),
        }
        if masks is not None:
            target["masks"] = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8))
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
        return tensor, target


def collate_detection(batch: Sequence[Any]) -> tuple[tuple, ...]:
    """Keep images and targets as tuples: detection images may differ in size."""
    return tuple(zip(*batch))


# ---------------------------------------------------------------------------------- models
class Lite0FPN(nn.Module):
    """EfficientNet-Lite0 feature maps (strides 8, 16, 32) through a feature pyramid.

    Returns an ``OrderedDict`` ``{"0": stride 8, "1": 16, "2": 32}``, each ``out_channels`` deep,
    the form torchvision's detectors take (they read ``self.out_channels``).
    """

    def __init__(self, body: nn.Module, out_channels: int) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.body = body
        self.fpn = FeaturePyramidNetwork(list(LITE0_CHANNELS), out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def lite0_fpn_backbone(pretrained: bool = True, trainable_blocks: int = 4,
                       out_channels: int = 96) -> Lite0FPN:
    """timm ``tf_efficientnet_lite0`` (``features_only``) + FPN, for torchvision detectors.

    Args:
        pretrained: load the offline ImageNet weights (:mod:`cvhelpers.pretrained`); ``False``
            initialises randomly (everything trains then, whatever ``trainable_blocks`` says).
        trainable_blocks: how many of Lite0's 7 stages, counted from the output end, train; the
            stem and earlier stages are frozen (their BatchNorms stay in eval mode too, as
            torchvision freezes its ResNets). Early layers detect edges and colours, which
            ImageNet taught well; freezing them saves time and protects them from small batches.
        out_channels: FPN width (torchvision uses 256; 96 keeps a CPU fast).

    Returns:
        A :class:`Lite0FPN` in train mode.
    """
    import timm

    body = timm.create_model(LITE0_ARCH, pretrained=False, features_only=True, out_indices=(2, 3, 4))
    if pretrained:
        load_lite0_weights(body)
        frozen: list[nn.Module] = [body.conv_stem, body.bn1]
        frozen += list(body.blocks[: max(0, len(body.blocks) - trainable_blocks)])
        for module in frozen:
            module.requires_grad_(False)
            for m in module.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
                    m.train = _stay_in_eval.__get__(m)  # type: ignore[method-assign]
    return Lite0FPN(body, out_channels)


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement ``train()`` for frozen BatchNorms: their running statistics never update."""
    return nn.Module.train(self, False)


def _detector_kwargs(min_size: int, anchor_sizes: Sequence[Sequence[float]],
                     aspect_ratios: Sequence[float], box_batch_size_per_image: int) -> dict[str, Any]:
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    anchors = AnchorGenerator(tuple(tuple(s) for s in anchor_sizes),
                              (tuple(aspect_ratios),) * len(anchor_sizes))
    return dict(
        min_size=min_size, max_size=min_size, image_mean=list(LITE0_MEAN), image_std=list(LITE0_STD),
        rpn_anchor_generator=anchors, box_batch_size_per_image=box_batch_size_per_image,
        rpn_batch_size_per_image=128, rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300, box_score_thresh=0.001,
        box_detections_per_img=100,
    )


def faster_rcnn_lite0(num_classes: int, pretrained: bool = True, min_size: int = 320,
                      anchor_sizes: Sequence[Sequence[float]] = DEFAULT_ANCHOR_SIZES,
                      aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
                      trainable_blocks: int = 4, fpn_channels: int = 96,
                      box_batch_size_per_image: int = 64) -> nn.Module:
    """torchvision ``FasterRCNN`` on :func:`lite0_fpn_backbone`.

    Args:
        num_classes: object classes **without** background (4 for the scenes); the model's
            predictor has ``num_classes + 1`` outputs and predicts labels ``1..num_classes``.
        pretrained: ImageNet backbone (offline weights) or random initialisation.
        min_size: images are resized to this (and at most this) before the backbone; 320 for
            160 px scenes, so the smallest 16 px objects cover two stride-8 cells.
        anchor_sizes: one tuple of sizes (pixels *at the model's input size*) per FPN level
            (strides 8, 16, 32); aspect_ratios: height / width, shared by all levels.
        trainable_blocks, fpn_channels: see :func:`lite0_fpn_backbone`.
        box_batch_size_per_image: RoIs sampled per image for the box head's loss
            (torchvision's 512 is unusably slow on a CPU).

    Returns:
        The model in train mode (``model(images, targets)`` gives losses; in eval mode
        ``model(images)`` gives ``[{"boxes", "labels", "scores"}]``).
    """
    from torchvision.models.detection import FasterRCNN

    backbone = lite0_fpn_backbone(pretrained, trainable_blocks, fpn_channels)
    return FasterRCNN(
        backbone, num_classes=None, **_box_head_parts(fpn_channels, num_classes),
        **_detector_kwargs(min_size, anchor_sizes, aspect_ratios, box_batch_size_per_image),
    )


def _box_head_parts(fpn_channels: int, num_classes: int) -> dict[str, nn.Module]:
    """RoI pooling over the three FPN levels, a two-layer box head and the class/box predictor."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    representation = 512
    return {
        "box_roi_pool": MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2),
        "box_head": TwoMLPHead(fpn_channels * 7 * 7, representation),
        "box_predictor": FastRCNNPredictor(representation, num_classes + 1),
    }


def mask_rcnn_lite0(num_classes: int, pretrained: bool = True, min_size: int = 320,
                    anchor_sizes: Sequence[Sequence[float]] = DEFAULT_ANCHOR_SIZES,
                    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
                    trainable_blocks: int = 4, fpn_channels: int = 96,
                    box_batch_size_per_image: int = 64, mask_head_layers: int = 2) -> nn.Module:
    """torchvision ``MaskRCNN`` on :func:`lite0_fpn_backbone`: Faster R-CNN plus a mask head.

    Same arguments as :func:`faster_rcnn_lite0` (``num_classes`` without background), plus
    ``mask_head_layers``: 3x3 convolutions in the mask head (torchvision uses 4 of width 256;
    here ``fpn_channels`` wide). Training targets need ``masks`` (``uint8`` ``N x H x W``); in
    eval mode outputs carry ``masks`` ``float`` ``N x 1 x H x W`` probabilities.
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    backbone = lite0_fpn_backbone(pretrained, trainable_blocks, fpn_channels)
    return MaskRCNN(
        backbone, num_classes=None, **_box_head_parts(fpn_channels, num_classes),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels] * mask_head_layers, 1),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1),
        **_detector_kwargs(min_size, anchor_sizes, aspect_ratios, box_batch_size_per_image),
    )


# -------------------------------------------------------------------------------- training
def train_detector(
    model: nn.Module,
    dataset: Dataset,
    time_budget_s: float | None = None,
    epochs: int | None = None,
    batch_size: int = 8,
    lr: float = 0.02,
    optimizer: str = "sgd",
    weight_decay: float = 1e-4,
    warmup_steps: int = 50,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    log_every_s: float = 30.0,
    log_fn: Callable[[str], None] = print,
) -> dict[str, list[float]]:
    """Train a torchvision detector until a time budget or a number of epochs runs out.

    The learning rate warms up linearly for ``warmup_steps`` steps, then follows a cosine
    from ``lr`` to 0 over the *budget*: with ``time_budget_s`` the position in the schedule is
    the fraction of the time used, so the schedule ends when the time does, however fast the
    machine is. Without a time budget it is the fraction of the steps of ``epochs`` epochs.

    Args:
        model: a torchvision detector in train mode (``model(images, targets)`` -> loss dict).
        dataset: yields ``(image, target)`` as :class:`DetectionDataset` does.
        time_budget_s, epochs: stop at whichever comes first (at least one must be given).
        optimizer: ``"sgd"`` (momentum 0.9; ``lr`` ~0.02 at batch 8) or ``"adamw"`` (``lr`` ~1e-3).
        log_every_s: print a line with the mean losses this often.

    Returns:
        ``{"step": [...], "seconds": [...], "loss": [...], "lr": [...], "<each loss>": [...]}``
        one entry per step.
    """
    if time_budget_s is None and epochs is None:
        raise ValueError("give time_budget_s, epochs or both")
    device = torch.device(device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate_detection,
                        num_workers=num_workers, drop_last=len(dataset) > batch_size)
    total_steps = None if epochs is None else epochs * len(loader)
    history: dict[str, list[float]] = {"step": [], "seconds": [], "loss": [], "lr": []}
    start = last_log = time.perf_counter()
    step = 0
    while True:
        for images, targets in loader:
            elapsed = time.perf_counter() - start
            progress = _progress(elapsed, time_budget_s, step, total_steps)
            if progress >= 1:
                _log_line(history, log_fn, step, elapsed, final=True)
                return history
            lr_now = lr * min(1.0, (step + 1) / warmup_steps) * 0.5 * (1 + math.cos(math.pi * progress))
            for group in opt.param_groups:
                group["lr"] = lr_now
            images = [image.to(device) for image in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step}: loss is {loss.item()} ({ {k: v.item() for k, v in losses.items()} })")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            step += 1
            history["step"].append(step)
            history["seconds"].append(time.perf_counter() - start)
            history["loss"].append(loss.item())
            history["lr"].append(lr_now)
            for name, value in losses.items():
                history.setdefault(name, []).append(value.item())
            if time.perf_counter() - last_log >= log_every_s:
                last_log = time.perf_counter()
                _log_line(history, log_fn, step, last_log - start)


def _progress(elapsed: float, budget_s: float | None, step: int, total_steps: int | None) -> float:
    fractions = []
    if budget_s is not None:
        fractions.append(elapsed / budget_s)
    if total_steps is not None:
        fractions.append(step / max(1, total_steps))
    return max(fractions)


def _log_line(history: dict[str, list[float]], log_fn: Callable[[str], None], step: int,
              elapsed: float, final: bool = False) -> None:
    recent = history["loss"][-20:]
    mean = sum(recent) / len(recent) if recent else float("nan")
    log_fn(f"{'done: ' if final else ''}step {step}, {elapsed:.0f} s, loss {mean:.3f} (last 20 steps)")


# ------------------------------------------------------------------------------ prediction
@torch.no_grad()
def predict_detector(model: nn.Module, images: Sequence[np.ndarray], batch_size: int = 8,
                     device: str | torch.device = "cpu", mask_threshold: float = 0.5,
                     ) -> list[dict[str, np.ndarray]]:
    """Run a torchvision detector on RGB images; per-image dicts for ``evaluate_coco``.

    Args:
        model: a torchvision detector (its labels 1-based, 0 = background).
        images: ``uint8`` ``H x W x 3`` RGB arrays.
        mask_threshold: a Mask R-CNN's mask probabilities above this are the object.

    Returns:
        One dict per image: ``boxes`` ``float32`` ``N x 4`` xyxy, ``scores`` ``float32``,
        ``labels`` ``int64`` **0-based**, and ``masks`` ``bool`` ``N x H x W`` if the model
        predicts masks.
    """
    model.to(device)
    outputs = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            batch = [torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255).to(device)
                     for image in images[start:start + batch_size]]
            for result in model(batch):
                prediction = {
                    "boxes": result["boxes"].cpu().numpy().astype(np.float32),
                    "scores": result["scores"].cpu().numpy().astype(np.float32),
                    "labels": result["labels"].cpu().numpy().astype(np.int64) - 1,
                }
                if "masks" in result:
                    prediction["masks"] = result["masks"][:, 0].cpu().numpy() > mask_threshold
                outputs.append(prediction)
    return outputs
