"""The detector mechanisms of cvhelpers.detection against torchvision's own implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from cvhelpers.detection.anchors import (anchor_coverage, base_anchors, grid_anchors, kmeans_anchors,
                                        plot_anchor_fit, suggest_anchors)
from cvhelpers.detection.boxes import batched_nms, decode_boxes, encode_boxes, nms
from cvhelpers.detection.losses import sigmoid_focal_loss
from cvhelpers.detection.metrics import precision_recall_at


def random_boxes(n: int, seed: int, size: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 3 + 1
    return torch.cat([xy, xy + wh], 1)


# ----------------------------------------------------------------------------- box coding
@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)])
def test_encode_decode_match_torchvision_box_coder(weights):
    anchors, targets = random_boxes(200, 0), random_boxes(200, 1)
    coder = BoxCoder(weights)
    ours = encode_boxes(targets, anchors, weights)
    torch.testing.assert_close(ours, coder.encode_single(targets, anchors), rtol=1e-5, atol=1e-5)
    deltas = torch.randn(200, 4)
    torch.testing.assert_close(decode_boxes(deltas, anchors, weights),
                               coder.decode_single(deltas, anchors), rtol=1e-5, atol=1e-4)


def test_decode_inverts_encode_and_clamps_huge_sizes():
    anchors, targets = random_boxes(50, 2), random_boxes(50, 3)
    torch.testing.assert_close(decode_boxes(encode_boxes(targets, anchors), anchors), targets,
                               rtol=1e-4, atol=1e-3)
    huge = torch.tensor([[0.0, 0.0, 1e4, 1e4]])
    box = decode_boxes(huge, torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    assert torch.isfinite(box).all() and (box[0, 2] - box[0, 0]) <= 10 * 1000 / 16 + 1e-3


# ---------------------------------------------------------------------------------- NMS
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_matches_torchvision_on_random_boxes(seed, threshold):
    boxes = random_boxes(150, seed)
    scores = torch.rand(150, generator=torch.Generator().manual_seed(seed + 100))
    assert nms(boxes, scores, threshold).tolist() == torchvision.ops.nms(boxes, scores, threshold).tolist()


def test_nms_ties_and_duplicates_match_torchvision():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60],
                          [50, 50, 60, 60], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.9, 0.9, 0.5, 0.5, 0.95])
    expected = torchvision.ops.nms(boxes, scores, 0.5).tolist()
    assert nms(boxes, scores, 0.5).tolist() == expected == [5, 3]
    # rounded scores give many exact ties on random boxes
    boxes = random_boxes(120, 7)
    scores = torch.round(torch.rand(120, generator=torch.Generator().manual_seed(7)) * 4) / 4
    assert nms(boxes, scores, 0.4).tolist() == torchvision.ops.nms(boxes, scores, 0.4).tolist()


def test_nms_iou_exactly_at_threshold_is_kept():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=torch.float32)  # IoU = 0.5 exactly
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]  # suppression needs IoU > threshold
    boxes = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10]], dtype=torch.float32)  # IoU = 1/3 in float32
    for threshold in (1 / 3, 0.3, 0.34):
        assert nms(boxes, scores, threshold).tolist() == torchvision.ops.nms(boxes, scores, threshold).tolist()


def test_nms_empty_input():
    empty = torch.zeros((0, 4))
    assert nms(empty, torch.zeros(0), 0.5).tolist() == torchvision.ops.nms(empty, torch.zeros(0), 0.5).tolist() == []
    classes = torch.zeros(0, dtype=torch.int64)
    assert batched_nms(empty, torch.zeros(0), classes, 0.5).tolist() == []
    assert torchvision.ops.batched_nms(empty, torch.zeros(0), classes, 0.5).tolist() == []


@pytest.mark.parametrize("seed", range(4))
def test_batched_nms_matches_torchvision(seed):
    boxes = random_boxes(200, seed)
    g = torch.Generator().manual_seed(seed + 50)
    scores, classes = torch.rand(200, generator=g), torch.randint(0, 4, (200,), generator=g)
    ours = batched_nms(boxes, scores, classes, 0.5).tolist()
    assert ours == torchvision.ops.batched_nms(boxes, scores, classes, 0.5).tolist()


def test_batched_nms_keeps_overlapping_boxes_of_other_classes():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=torch.float32)
    kept = batched_nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5)
    assert kept.tolist() == [0, 1]


# ---------------------------------------------------------------------------- focal loss
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 1.5)])
def test_focal_loss_matches_torchvision(reduction, alpha, gamma):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=g) * 4
    targets = (torch.rand(64, 5, generator=g) > 0.8).float()
    expected = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha, gamma, reduction), expected)


def test_focal_loss_gradients_match_torchvision():
    logits = torch.randn(32, requires_grad=True)
    targets = (torch.rand(32) > 0.5).float()
    sigmoid_focal_loss(logits, targets, reduction="sum").backward()
    ours = logits.grad.clone()
    logits.grad = None
    torchvision.ops.sigmoid_focal_loss(logits, targets, reduction="sum").backward()
    torch.testing.assert_close(ours, logits.grad)


def test_gamma_zero_is_weighted_cross_entropy():
    logits, targets = torch.randn(20), (torch.rand(20) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0), bce)


# ------------------------------------------------------------------------------- anchors
def test_anchors_match_torchvision_anchor_generator():
    sizes, ratios = ((32,), (64,)), ((0.5, 1.0, 2.0),) * 2
    generator = AnchorGenerator(sizes, ratios)
    image_list = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    features = [torch.zeros(1, 8, 8, 8), torch.zeros(1, 8, 4, 4)]
    expected = generator(image_list, features)[0]
    ours = torch.cat([grid_anchors(base_anchors(s, r), tuple(f.shape[-2:]), (stride, stride))
                      for s, r, f, stride in zip(sizes, ratios, features, (8, 16))])
    torch.testing.assert_close(ours, expected)


def test_suggest_anchors_and_coverage():
    rng = np.random.default_rng(0)
    side = rng.uniform(16, 64, 500)
    ratio = rng.choice([0.5, 1.0, 2.0], 500)
    w, h = side / np.sqrt(ratio), side * np.sqrt(ratio)
    boxes = np.stack([np.zeros(500), np.zeros(500), w, h], 1)
    sizes, ratios = suggest_anchors(boxes, n_sizes=3, n_ratios=3)
    assert ratios == (0.5, 1.0, 2.0)
    assert 16 < sizes[0] < sizes[1] < sizes[2] < 64
    good = anchor_coverage(boxes, sizes, ratios)
    bad = anchor_coverage(boxes, (200.0,), (1.0,))
    assert good[1] > 0.95 and bad[1] < 0.1 and good[0] > bad[0]
    assert suggest_anchors(boxes, 3, 3, scale=2.0)[0] == tuple(float(round(2 * s)) for s in
                                                                  np.quantile(np.sqrt(w * h), [0.05, 0.5, 0.95]))
    square = np.stack([np.zeros(500), np.zeros(500), side, side * rng.uniform(0.95, 1.05, 500)], 1)
    assert suggest_anchors(square, 2, 3)[1] == (1.0,)  # shapes barely vary: one ratio


def test_kmeans_anchors_find_clusters():
    rng = np.random.default_rng(1)
    wh = np.concatenate([rng.normal(20, 1, (100, 2)), rng.normal(60, 2, (100, 2))])
    boxes = np.concatenate([np.zeros((200, 2)), wh], 1)
    centres = kmeans_anchors(boxes, 2)
    np.testing.assert_allclose(centres, [[20, 20], [60, 60]], atol=1.5)
    with pytest.raises(ValueError):
        kmeans_anchors(boxes[:1], 2)


def test_plot_anchor_fit(tmp_path):
    boxes = np.array([[0, 0, 20, 20], [0, 0, 40, 30], [0, 0, 60, 64]], np.float32)
    fig = plot_anchor_fit(boxes, {"ours": ((20.0, 50.0), (1.0,))})
    fig.savefig(tmp_path / "a.png")
    assert "ours" in fig.axes[0].get_legend().get_texts()[1].get_text()


def test_precision_recall_at_threshold():
    from cvhelpers.data.coco import AnnotatedImage

    truth = [AnnotatedImage(np.zeros((50, 50, 3), np.uint8), np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32),
                            np.array([0, 1]))]
    prediction = [{"boxes": np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 40, 40], [1, 1, 5, 5]], np.float32),
                   "scores": np.array([0.9, 0.8, 0.3, 0.95], np.float32), "labels": np.array([0, 0, 0, 0])}]
    # 0.5: kept 0.95 (FP, IoU 0.16), 0.9 (TP), 0.8 (duplicate -> FP); 0.3 box has the wrong class
    assert precision_recall_at(prediction, truth, 0.5) == (pytest.approx(1 / 3), 0.5, 3)
    assert precision_recall_at(prediction, truth, 0.99) == (1.0, 0.0, 0)
    assert precision_recall_at(prediction, truth, 0.0)[:2] == (pytest.approx(1 / 4), 0.5)
