"""The mechanism pictures draw what torchvision computes: anchors, box encoding, NMS."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision.models.detection._utils import BoxCoder  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402

from cvhelpers.detection.figures import anchors_at, plot_anchors_on_image, plot_box_encoding, plot_nms  # noqa: E402

IMAGE = np.zeros((96, 128, 3), np.uint8)


def test_anchors_at_are_torchvisions_cell_anchors_moved_to_each_centre():
    sizes, ratios = (16, 32, 64), (0.5, 1.0, 2.0)
    reference = AnchorGenerator((sizes,), (ratios,)).generate_anchors(list(sizes), list(ratios))
    centres = torch.tensor([[10.0, 20.0], [64.0, 48.0]])
    anchors = anchors_at(centres, sizes, ratios).reshape(2, -1, 4)
    for centre, group in zip(centres, anchors):
        assert torch.allclose(group - centre.repeat(2), reference)


def test_anchor_picture_counts_positives_as_torchvision_iou_does():
    boxes = np.array([[10, 10, 42, 26], [60, 30, 124, 94]], np.float32)
    sizes, ratios = (16, 32, 64), (0.5, 1.0, 2.0)
    fig = plot_anchors_on_image(IMAGE, boxes, sizes, ratios, iou_threshold=0.5)
    expected = []  # torchvision's own cell anchors, moved to each object's centre
    cell = AnchorGenerator((sizes,), (ratios,)).generate_anchors(list(sizes), list(ratios))
    for box in torch.from_numpy(boxes):
        anchors = cell + ((box[:2] + box[2:]) / 2).repeat(2)
        expected.append(int((torchvision.ops.box_iou(anchors, box[None]) >= 0.5).sum()))
    assert fig.positives == expected == [4, 3]
    ax = fig.axes[0]
    assert "128 x 96 px" in ax.get_title() and ax.get_xlabel() == "x (pixels)"
    assert len(ax.patches) == 2 * (9 + 1)  # nine anchors and the object, per object


def test_box_encoding_picture_shows_torchvisions_targets():
    anchors = torch.tensor([[10.0, 10, 30, 50], [60, 20, 100, 60]])
    targets = torch.tensor([[14.0, 6, 34, 66], [58, 30, 110, 58]])
    fig = plot_box_encoding(IMAGE, anchors, targets)
    assert torch.allclose(fig.deltas, BoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(targets, anchors), atol=1e-5)
    assert len(fig.axes[0].texts) == 2


def test_nms_picture_keeps_what_torchvision_keeps():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + torch.rand(60, 2, generator=g) * 30 + 4], 1)
    scores = torch.rand(60, generator=g)
    fig = plot_nms(IMAGE, boxes, scores, iou_threshold=0.4, score_threshold=0.2)
    shown = torch.nonzero(scores >= 0.2).ravel()
    reference = shown[torchvision.ops.nms(boxes[shown], scores[shown], 0.4)]
    assert sorted(fig.kept.tolist()) == sorted(reference.tolist())
    before, after = fig.axes
    assert f"{len(shown)} boxes" in before.get_title() and f"{len(reference)} boxes" in after.get_title()
    assert len(after.patches) == len(reference)


def test_nms_picture_per_class_keeps_what_batched_nms_keeps():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(40, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 30], 1)
    scores, labels = torch.rand(40, generator=g), torch.randint(0, 3, (40,), generator=g)
    fig = plot_nms(IMAGE, boxes, scores, iou_threshold=0.5, labels=labels)
    reference = torchvision.ops.batched_nms(boxes, scores, labels, 0.5)
    assert sorted(fig.kept.tolist()) == sorted(reference.tolist())
