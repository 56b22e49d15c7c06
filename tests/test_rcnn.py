"""Two-stage detectors on scenes: dataset targets, Lite0 backbones, training loop, predictions,
Detectron2 dataset dicts (checked with pycocotools, without Detectron2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from cvhelpers import rcnn
from cvhelpers.detection.coco_eval import evaluate_coco
from cvhelpers.detection.detectron2 import to_detectron2_dicts
from cvhelpers.data.scenes import CLASS_NAMES, generate_scenes

pytestmark = pytest.mark.filterwarnings("ignore:.*__array__ implementation:DeprecationWarning")

SMALL = dict(min_size=128, fpn_channels=32)


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes("train", 4, seed=3, size=96, object_size=(16, 40))


def test_dataset_targets(scenes):
    image, target = rcnn.DetectionDataset(scenes)[0]
    scene = scenes[0]
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert target["labels"].tolist() == (scene.labels + 1).tolist()  # torchvision: 0 is background
    np.testing.assert_array_equal(target["boxes"].numpy(), scene.boxes)
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (len(scene.labels), 96, 96)
    assert "masks" not in rcnn.DetectionDataset(scenes, with_masks=False)[0][1]


def test_flip_moves_boxes_with_masks(scenes):
    dataset = rcnn.DetectionDataset(scenes, augment=True, seed=0)
    flipped = 0
    for _ in range(12):
        image, target = dataset[1]
        masks = target["masks"].numpy().astype(bool)
        for box, mask in zip(target["boxes"].numpy(), masks):
            ys, xs = np.nonzero(mask)
            np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1)
        flipped += not np.array_equal(target["boxes"].numpy(), scenes[1].boxes)
    assert 0 < flipped < 12


def test_pretrained_backbone_loads_weights_and_freezes_early_stages():
    from cvhelpers.models.pretrained import lite0_state_dict_for_timm

    backbone = rcnn.lite0_fpn_backbone(pretrained=True, trainable_blocks=3, out_channels=32)
    weights = lite0_state_dict_for_timm()
    torch.testing.assert_close(backbone.body.conv_stem.weight, weights["conv_stem.weight"])
    torch.testing.assert_close(backbone.body.blocks[6][0].conv_pwl.weight, weights["blocks.6.0.conv_pwl.weight"])
    assert not backbone.body.blocks[3][0].conv_pw.weight.requires_grad
    assert backbone.body.blocks[4][0].conv_pw.weight.requires_grad
    backbone.train()
    assert not backbone.body.bn1.training and backbone.body.blocks[6][0].bn1.training
    features = backbone(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape) for f in features.values()] == [(1, 32, 8, 8), (1, 32, 4, 4), (1, 32, 2, 2)]
    scratch = rcnn.lite0_fpn_backbone(pretrained=False, out_channels=32)
    assert all(p.requires_grad for p in scratch.parameters())


@pytest.mark.parametrize("builder", [rcnn.faster_rcnn_lite0, rcnn.mask_rcnn_lite0])
def test_detector_trains_and_predicts(builder, scenes):
    torch.manual_seed(0)
    model = builder(num_classes=4, pretrained=False, **SMALL)
    lines = []
    history = rcnn.train_detector(model, rcnn.DetectionDataset(scenes), epochs=1, batch_size=2,
                                  lr=0.005, warmup_steps=1, log_fn=lines.append)
    assert history["step"] == [1, 2] and all(np.isfinite(history["loss"]))
    assert "loss_box_reg" in history and lines and lines[-1].startswith("done")
    assert model.training  # predict_detector gives the mode back
    predictions = rcnn.predict_detector(model, [s.image for s in scenes[:2]], batch_size=1)
    assert model.training and len(predictions) == 2
    for p in predictions:
        assert p["boxes"].dtype == np.float32 and p["boxes"].shape[1:] == (4,)
        assert p["labels"].dtype == np.int64 and set(p["labels"].tolist()) <= {0, 1, 2, 3}
        if builder is rcnn.mask_rcnn_lite0:
            assert p["masks"].dtype == bool and p["masks"].shape == (len(p["boxes"]), 96, 96)
        else:
            assert "masks" not in p
    result = evaluate_coco(predictions, scenes[:2], CLASS_NAMES)
    assert 0 <= result["map50"] <= 1


def test_time_budget_stops_training(scenes):
    model = rcnn.faster_rcnn_lite0(num_classes=4, pretrained=False, **SMALL)
    history = rcnn.train_detector(model, rcnn.DetectionDataset(scenes), time_budget_s=0.5, batch_size=2,
                                  lr=0.01, warmup_steps=1, log_fn=lambda _: None)
    # no epoch limit: it stopped because of the clock, at most one step after the budget
    steps = np.diff([0.0, *history["seconds"]])
    assert len(steps) >= 1 and history["seconds"][-1] <= 0.5 + steps.max() + 0.05
    assert history["lr"][0] == pytest.approx(0.01, rel=1e-3)  # warm-up of one step, then the cosine
    assert len(steps) == 1 or history["lr"][-1] < history["lr"][0]  # follows the clock towards 0
    with pytest.raises(ValueError, match="time_budget_s"):
        rcnn.train_detector(model, rcnn.DetectionDataset(scenes))


def test_predict_format_scores_perfectly_when_right(scenes):
    """A fake detector that returns the truth (1-based) must score mAP 1 after conversion."""

    class Oracle(torch.nn.Module):
        def forward(self, images):
            out = []
            for image in images:
                scene = next(s for s in scenes if np.allclose(s.image.transpose(2, 0, 1) / 255, image.numpy()))
                out.append({"boxes": torch.from_numpy(scene.boxes), "labels": torch.from_numpy(scene.labels + 1),
                            "scores": torch.ones(len(scene.labels)),
                            "masks": torch.from_numpy(scene.masks[:, None].astype(np.float32))})
            return out

    predictions = rcnn.predict_detector(Oracle(), [s.image for s in scenes])
    assert evaluate_coco(predictions, scenes, CLASS_NAMES)["map50_95"] == pytest.approx(1.0)
    assert evaluate_coco(predictions, scenes, CLASS_NAMES, iou_type="segm")["map50_95"] == pytest.approx(1.0)


def test_detectron2_dicts(scenes):
    paths = [f"/data/{s.file_name}" for s in scenes]
    records = to_detectron2_dicts(scenes, paths)
    assert [r["image_id"] for r in records] == list(range(len(scenes)))
    for record, scene, path in zip(records, scenes, paths):
        assert record["file_name"] == path and (record["height"], record["width"]) == (96, 96)
        assert [a["category_id"] for a in record["annotations"]] == scene.labels.tolist()  # 0-based
        for annotation, box, mask in zip(record["annotations"], scene.boxes, scene.masks):
            assert annotation["bbox_mode"] == 0 and annotation["iscrowd"] == 0  # BoxMode.XYXY_ABS
            np.testing.assert_allclose(annotation["bbox"], box)
            rle = dict(annotation["segmentation"], counts=annotation["segmentation"]["counts"].encode())
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
    with pytest.raises(ValueError):
        to_detectron2_dicts(scenes, paths[:1])


def test_detectron2_dicts_without_masks(scenes):
    from cvhelpers.data.coco import AnnotatedImage

    sample = AnnotatedImage(scenes[0].image, scenes[0].boxes, scenes[0].labels, None, "a.png")
    record = to_detectron2_dicts([sample], ["a.png"])[0]
    assert all("segmentation" not in a for a in record["annotations"])
