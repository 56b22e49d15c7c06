"""Two-stage detectors on scenes: dataset targets, Lite0 backbones, training through the engine
(``fit`` + ``detection_step`` + ``DetectionValidator``), predictions, Detectron2 dataset dicts
(checked with pycocotools, without Detectron2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from cvhelpers.data.loading import make_loader
from cvhelpers.data.scenes import CLASS_NAMES, generate_scenes
from cvhelpers.detection.coco_eval import evaluate_coco
from cvhelpers.detection.data import DetectionDataset, collate_detection
from cvhelpers.detection.detectron2 import to_detectron2_dicts
from cvhelpers.detection.models import faster_rcnn_lite0, lite0_fpn_backbone, mask_rcnn_lite0
from cvhelpers.detection.steps import DetectionValidator, detection_step, predict_detector
from cvhelpers.train.engine import fit
from cvhelpers.train.schedules import warmup_cosine

pytestmark = pytest.mark.filterwarnings("ignore:.*__array__ implementation:DeprecationWarning")

SMALL = dict(min_size=128, fpn_channels=32)


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes("train", 4, seed=3, size=96, object_size=(16, 40))


def loader(scenes, with_masks=False, shuffle=True, augment=False, batch_size=2):
    dataset = DetectionDataset(scenes, augment=augment, with_masks=with_masks)
    return make_loader(dataset, batch_size, shuffle=shuffle, collate_fn=collate_detection,
                       drop_last=shuffle)


def sgd(model, lr):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                           weight_decay=1e-4)


def record_lrs(optimizer):
    """The learning rate of every optimizer step, as the step sees it."""
    lrs = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    return lrs


def test_dataset_targets(scenes):
    image, target = DetectionDataset(scenes)[0]
    scene = scenes[0]
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert target["labels"].tolist() == (scene.labels + 1).tolist()  # torchvision: 0 is background
    np.testing.assert_array_equal(target["boxes"].numpy(), scene.boxes)
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (len(scene.labels), 96, 96)
    assert "masks" not in DetectionDataset(scenes, with_masks=False)[0][1]


def test_flip_moves_boxes_with_masks(scenes):
    dataset = DetectionDataset(scenes, augment=True)

    def flips(seed):
        torch.manual_seed(seed)  # the flips come from torch's global generator
        flipped = []
        for _ in range(12):
            image, target = dataset[1]
            masks = target["masks"].numpy().astype(bool)
            for box, mask in zip(target["boxes"].numpy(), masks):
                ys, xs = np.nonzero(mask)
                np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1)
            flipped.append(not np.array_equal(target["boxes"].numpy(), scenes[1].boxes))
        return flipped

    assert 0 < sum(flips(0)) < 12
    assert flips(0) == flips(0)  # the same seed, the same flips


def test_pretrained_backbone_loads_weights_and_freezes_early_stages():
    from cvhelpers.models.pretrained import lite0_state_dict_for_timm

    backbone = lite0_fpn_backbone(pretrained=True, trainable_blocks=3, out_channels=32)
    weights = lite0_state_dict_for_timm()
    torch.testing.assert_close(backbone.body.conv_stem.weight, weights["conv_stem.weight"])
    torch.testing.assert_close(backbone.body.blocks[6][0].conv_pwl.weight, weights["blocks.6.0.conv_pwl.weight"])
    assert not backbone.body.blocks[3][0].conv_pw.weight.requires_grad
    assert backbone.body.blocks[4][0].conv_pw.weight.requires_grad
    backbone.train()
    frozen_stats = backbone.body.bn1.running_mean.clone()
    trained_stats = backbone.body.blocks[6][0].bn1.running_mean.clone()
    features = backbone(torch.rand(2, 3, 64, 64))
    # in train mode the frozen stem BatchNorm keeps ImageNet's statistics; a late one updates its own
    torch.testing.assert_close(backbone.body.bn1.running_mean, frozen_stats, rtol=0, atol=0)
    assert not torch.equal(backbone.body.blocks[6][0].bn1.running_mean, trained_stats)
    assert [tuple(f.shape) for f in features.values()] == [(2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2)]
    scratch = lite0_fpn_backbone(pretrained=False, out_channels=32)
    assert all(p.requires_grad for p in scratch.parameters())


@pytest.mark.parametrize("builder", [faster_rcnn_lite0, mask_rcnn_lite0])
def test_detector_trains_and_predicts(builder, scenes):
    torch.manual_seed(0)
    masks = builder is mask_rcnn_lite0
    model = builder(num_classes=4, pretrained=False, **SMALL)
    optimizer = sgd(model, 0.005)
    logged = []
    history = fit(model, loader(scenes, with_masks=masks, augment=True),
                  loader(scenes[:2], with_masks=masks, shuffle=False), optimizer=optimizer, epochs=1,
                  step_fn=detection_step, validator=DetectionValidator(len(CLASS_NAMES), masks=masks),
                  monitor="val_map50", grad_clip_norm=10.0, device="cpu", progress=False,
                  log_fn=logged.append)
    assert history.steps == [2] and history.total_steps == 2 and history.stop_reason == "epochs"
    assert len(history.step_loss) == 2 and all(np.isfinite(history.step_loss))
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(history.train_parts)
    assert ("loss_mask" in history.train_parts) == masks
    # the total is the sum of the parts
    assert history.train_loss[0] == pytest.approx(sum(v[0] for v in history.train_parts.values()), rel=1e-4)
    scores = {"map50", "map50_95"} | ({"mask_map50", "mask_map50_95"} if masks else set())
    assert set(history.val_metrics) == scores
    assert all(0 <= v[0] <= 1 for v in history.val_metrics.values())
    assert logged and "train_loss_box_reg" in logged[-1] and "val_map50" in logged[-1]
    assert model.training  # the validator gives the mode back
    predictions = predict_detector(model, [s.image for s in scenes[:2]], batch_size=1)
    assert model.training and len(predictions) == 2
    for p in predictions:
        assert p["boxes"].dtype == np.float32 and p["boxes"].shape[1:] == (4,)
        assert p["labels"].dtype == np.int64 and set(p["labels"].tolist()) <= {0, 1, 2, 3}
        if masks:
            assert p["masks"].dtype == bool and p["masks"].shape == (len(p["boxes"]), 96, 96)
        else:
            assert "masks" not in p
    result = evaluate_coco(predictions, scenes[:2], CLASS_NAMES)
    assert 0 <= result["map50"] <= 1


def test_fixed_steps_with_the_old_detector_schedule(scenes):
    """Notebook 05's schedule: SGD, linear warm-up then cosine over a fixed number of steps,
    clipped gradients; a run over several epochs ends at ``max_steps`` mid-epoch."""
    torch.manual_seed(0)
    model = faster_rcnn_lite0(num_classes=4, pretrained=False, **SMALL)
    optimizer = sgd(model, 0.01)
    lrs = record_lrs(optimizer)
    history = fit(model, loader(scenes), optimizer=optimizer, max_steps=5, step_fn=detection_step,
                  monitor="train_loss", lr_schedule=warmup_cosine(warmup=2 / 5), grad_clip_norm=10.0,
                  device="cpu", progress=False)
    assert history.stop_reason == "max_steps" and history.total_steps == 5 and history.steps == [2, 4, 5]
    assert len(history.step_loss) == 5 and all(np.isfinite(history.step_loss))
    schedule = warmup_cosine(warmup=2 / 5)
    assert lrs == pytest.approx([0.01 * schedule(step / 5) for step in range(5)])
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(0.01) and lrs[2] > lrs[3] > lrs[4] > 0
    with pytest.raises(ValueError, match="time_budget_s"):
        fit(model, loader(scenes), optimizer=optimizer, step_fn=detection_step, monitor="train_loss")


def test_time_budget_stops_training(scenes):
    model = faster_rcnn_lite0(num_classes=4, pretrained=False, **SMALL)
    optimizer = sgd(model, 0.01)
    lrs = record_lrs(optimizer)
    history = fit(model, loader(scenes), optimizer=optimizer, time_budget_s=0.5, step_fn=detection_step,
                  monitor="train_loss", lr_schedule=warmup_cosine(warmup=0.0), device="cpu", progress=False)
    # no epoch or step limit: it stopped because of the clock, at most one step after the budget
    assert history.stop_reason == "time_budget" and history.total_steps >= 1
    assert history.seconds <= 0.5 + max(history.epoch_seconds) + 0.05
    # no warm-up: a cosine from the full rate that follows the clock (the progress when each step
    # is taken) towards 0
    assert 0 <= lrs[-1] <= lrs[0] <= 0.01 and all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert len(lrs) == 1 or lrs[-1] < lrs[0]


class Oracle(torch.nn.Module):
    """A fake torchvision detector that returns each scene's truth, labels ``1-based + shift``."""

    def __init__(self, scenes, shift: int = 0) -> None:
        super().__init__()
        self.scenes, self.shift = scenes, shift

    def forward(self, images):
        out = []
        for image in images:
            scene = next(s for s in self.scenes if np.allclose(s.image.transpose(2, 0, 1) / 255, image.numpy()))
            out.append({"boxes": torch.from_numpy(scene.boxes),
                        "labels": torch.from_numpy(scene.labels + 1 + self.shift),
                        "scores": torch.ones(len(scene.labels)),
                        "masks": torch.from_numpy(scene.masks[:, None].astype(np.float32))})
        return out


def test_predict_format_scores_perfectly_when_right(scenes):
    """A fake detector that returns the truth (1-based) must score mAP 1 after conversion."""
    predictions = predict_detector(Oracle(scenes), [s.image for s in scenes])
    assert evaluate_coco(predictions, scenes, CLASS_NAMES)["map50_95"] == pytest.approx(1.0)
    assert evaluate_coco(predictions, scenes, CLASS_NAMES, iou_type="segm")["map50_95"] == pytest.approx(1.0)


def test_fits_validator_scores_the_truth_one_and_a_label_off_by_one_near_zero(scenes):
    """``DetectionValidator`` converts the loader's 1-based labels itself: the truth must score 1
    on boxes and masks, and the same boxes one class off must not."""
    loader = make_loader(DetectionDataset(scenes, augment=False, with_masks=True), 4, shuffle=False,
                         collate_fn=collate_detection)
    validator = DetectionValidator(len(CLASS_NAMES), masks=True)
    right = validator(Oracle(scenes), loader, torch.device("cpu"))
    assert right == pytest.approx({"map50": 1.0, "map50_95": 1.0, "mask_map50": 1.0, "mask_map50_95": 1.0})
    shifted = Oracle(scenes, shift=1)  # class k named k + 1 (the last class falls off the end)
    wrong = validator(shifted, loader, torch.device("cpu"))
    assert wrong["map50"] < 0.1 and wrong["mask_map50"] < 0.1


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
    with pytest.raises(ValueError, match="samples but 1 image paths"):
        to_detectron2_dicts(scenes, paths[:1])


def test_detectron2_dicts_without_masks(scenes):
    from cvhelpers.data.coco import AnnotatedImage

    sample = AnnotatedImage(scenes[0].image, scenes[0].boxes, scenes[0].labels, None, "a.png")
    record = to_detectron2_dicts([sample], ["a.png"])[0]
    assert all("segmentation" not in a for a in record["annotations"])
