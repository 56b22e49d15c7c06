"""Two-stage detectors: torchvision's Faster and Mask R-CNN on the offline EfficientNet-Lite0
ImageNet weights (timm feature extractor + FPN), sized for a CPU (input 320,
``box_batch_size_per_image=64``).

>>> model = faster_rcnn_lite0(num_classes=4)                                   # doctest: +SKIP
>>> history = fit(model, train_loader, val_loader, optimizer=opt, max_steps=475,
...               step_fn=detection_step, validator=DetectionValidator(num_classes=4),
...               monitor="val_map50")  # doctest: +SKIP

Training goes through the engine (:func:`cvhelpers.train.engine.fit` with
:func:`cvhelpers.detection.steps.detection_step`); prediction and the mAP validator are in
:mod:`cvhelpers.detection.steps`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cvhelpers.models.freezing import freeze_batchnorm
from cvhelpers.models.pretrained import LITE0_ARCH, LITE0_MEAN, LITE0_STD, load_lite0_weights

__all__ = ["LITE0_STRIDES", "LITE0_CHANNELS", "DEFAULT_ANCHOR_SIZES", "DEFAULT_ASPECT_RATIOS",
           "Lite0FPN", "lite0_fpn_backbone", "fpn_data_flow", "faster_rcnn_lite0", "mask_rcnn_lite0"]

#: Output strides and channels of the Lite0 stages the FPN reads (timm out_indices 2, 3, 4).
LITE0_STRIDES = (8, 16, 32)
LITE0_CHANNELS = (40, 112, 320)
#: Default anchors for scenes (objects 16-64 px, nearly square boxes) shown to the model at
#: 320 px: two sizes per FPN level, one aspect ratio (height / width), as notebook 05 derives
#: them from the training boxes with :func:`cvhelpers.detection.anchors.suggest_anchors`.
DEFAULT_ANCHOR_SIZES = ((39, 56), (71, 86), (102, 122))
DEFAULT_ASPECT_RATIOS = (1.0,)


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
        pretrained: load the offline ImageNet weights (:mod:`cvhelpers.models.pretrained`); ``False``
            initialises randomly (everything trains then, whatever ``trainable_blocks`` says).
        trainable_blocks: how many of Lite0's 7 stages, counted from the output end, train; the
            stem and earlier stages are frozen, their BatchNorms replaced by frozen ones
            (:func:`cvhelpers.models.freezing.freeze_batchnorm`), as torchvision freezes its
            ResNets. Early layers detect edges and colours, which
            ImageNet taught well; freezing them saves time and protects them from small batches.
        out_channels: FPN width (torchvision uses 256; 96 keeps a CPU fast).

    Returns:
        A :class:`Lite0FPN` in train mode.
    """
    import timm

    body = timm.create_model(LITE0_ARCH, pretrained=False, features_only=True, out_indices=(2, 3, 4))
    if pretrained:
        load_lite0_weights(body)
        body.conv_stem.requires_grad_(False)
        body.bn1 = freeze_batchnorm(body.bn1)
        for i in range(max(0, len(body.blocks) - trainable_blocks)):
            body.blocks[i] = freeze_batchnorm(body.blocks[i].requires_grad_(False))
    return Lite0FPN(body, out_channels)


def fpn_data_flow(backbone: Lite0FPN, x: torch.Tensor) -> tuple[list[tuple[str, tuple[int, int, int]]], list[tuple[int, int]]]:
    """The stages a :class:`Lite0FPN` passes ``x`` (``1 x 3 x H x W``) through, with their output
    shapes, and its lateral connections: the input to :func:`cvhelpers.viz.plot_data_flow`.

    Bottom-up, Lite0's stages C3, C4, C5 (strides 8, 16, 32); top-down, the pyramid P5, P4, P3,
    each the 1x1 "lateral" projection of its C level plus the upsampled level above, smoothed by a
    3x3 convolution (torchvision's ``FeaturePyramidNetwork``). Shapes are measured by running
    ``x`` through the module, not computed from the strides.

    Returns:
        ``(stages, laterals)``: ``[("input", (3, H, W)), ("C3 (stride 8)", ...), ..., ("P3", ...)]``
        and the ``(C stage, P stage)`` index pairs.
    """
    was_training = backbone.training
    with torch.no_grad():
        backbone.eval()
        features = backbone.body(x)
        pyramid = backbone.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
    backbone.train(was_training)
    bottom_up = [(f"C{3 + i} (stride {s})", tuple(f.shape[1:])) for i, (f, s) in enumerate(zip(features, LITE0_STRIDES))]
    levels = list(pyramid.values())
    top_down = [(f"P{3 + i}", tuple(levels[i].shape[1:])) for i in reversed(range(len(levels)))]
    stages = [("input", tuple(x.shape[1:])), *bottom_up, *top_down]
    n = len(features)
    laterals = [(1 + i, 2 * n - i) for i in range(n)]  # C3 -> P3 (last), ..., C5 -> P5 (first of top-down)
    return stages, laterals  # type: ignore[return-value]


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
            160 px scenes, so the smallest 16 px objects (32 px there) span four stride-8 cells.
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
