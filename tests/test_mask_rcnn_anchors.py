"""Mask R-CNN on Lite0-FPN with anchors fitted to the training boxes (notebook 07): the fitted
sizes and ratios reach torchvision's ``AnchorGenerator`` and the RPN head, and a training step
with masks runs on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvhelpers.data.scenes import generate_scenes
from cvhelpers.detection.anchors import base_anchors, suggest_anchors
from cvhelpers.detection.data import DetectionDataset, collate_detection
from cvhelpers.detection.models import DEFAULT_ANCHOR_SIZES, mask_rcnn_lite0

pytestmark = pytest.mark.filterwarnings("ignore:.*__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes("train", 4, seed=5, size=96, object_size=(16, 40))


def fitted_anchors(scenes, scale):
    boxes = np.concatenate([s.boxes for s in scenes])
    sizes, ratios = suggest_anchors(boxes, n_sizes=6, n_ratios=3, scale=scale, min_ratio_spread=1.0)
    return tuple(sizes[2 * level:2 * level + 2] for level in range(3)), ratios


def test_fitted_anchors_reach_the_rpn(scenes):
    per_level, ratios = fitted_anchors(scenes, scale=128 / 96)
    assert len(ratios) == 3 and per_level != DEFAULT_ANCHOR_SIZES
    model = mask_rcnn_lite0(num_classes=4, pretrained=False, min_size=128, fpn_channels=32,
                            anchor_sizes=per_level, aspect_ratios=ratios)
    generator = model.rpn.anchor_generator
    assert generator.sizes == per_level and all(r == tuple(ratios) for r in generator.aspect_ratios)
    assert generator.num_anchors_per_location() == [6, 6, 6]
    assert model.rpn.head.cls_logits.out_channels == 6  # one objectness score per anchor shape
    for level, sizes in enumerate(per_level):  # torchvision's own cell anchors equal the course's
        torch.testing.assert_close(generator.cell_anchors[level], base_anchors(sizes, ratios))


def test_a_mask_training_step_runs_on_fitted_anchors(scenes):
    torch.manual_seed(0)
    per_level, ratios = fitted_anchors(scenes, scale=128 / 96)
    model = mask_rcnn_lite0(num_classes=4, pretrained=False, min_size=128, fpn_channels=32,
                            anchor_sizes=per_level, aspect_ratios=ratios)
    images, targets = collate_detection([DetectionDataset(scenes, with_masks=True)[i] for i in range(2)])
    losses = model(list(images), list(targets))
    assert "loss_mask" in losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model([images[0]])[0]
    assert out["masks"].shape[1:] == (1, 96, 96)
