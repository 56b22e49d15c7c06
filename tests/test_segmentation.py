"""Semantic segmentation helpers: metrics against torchmetrics, data checks, models, training."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.classification import multiclass_f1_score, multiclass_jaccard_index

from cvhelpers.data.coco import read_coco
from cvhelpers.data.validate import DatasetError
from cvhelpers.segmentation.data import (SegmentationDataset, check_class_mask, load_segmentation_folder)
from cvhelpers.segmentation.metrics import (dice_from_confusion, iou_from_confusion, per_image_miou, segmentation_scores)
from cvhelpers.viz import error_overlay
from cvhelpers.data.loading import make_loader
from cvhelpers.evaluation.metrics import worst_indices
from cvhelpers.segmentation.steps import SegmentationValidator, predict_masks
from cvhelpers.segmentation.models import smp_model
from cvhelpers.segmentation.unet import UNet
from cvhelpers.train.engine import fit
from cvhelpers.train.schedules import warmup_cosine


def _random_masks(seed: int, n: int = 4, c: int = 5, size: int = 24):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, c, (n, size, size))
    pred = np.where(rng.random((n, size, size)) < 0.7, target, rng.integers(0, c, (n, size, size)))
    return pred, target


@pytest.mark.parametrize("seed", range(3))
def test_iou_and_dice_match_torchmetrics(seed):
    pred, target = _random_masks(seed)
    scores = segmentation_scores(pred, target, 5)
    p, t = torch.from_numpy(pred), torch.from_numpy(target)
    tm_iou = multiclass_jaccard_index(p, t, num_classes=5, average=None).numpy()
    tm_dice = multiclass_f1_score(p, t, num_classes=5, average=None, multidim_average="global").numpy()
    np.testing.assert_allclose(scores.iou, tm_iou, atol=1e-6)
    np.testing.assert_allclose(scores.dice, tm_dice, atol=1e-6)
    assert scores.miou == pytest.approx(tm_iou[1:].mean(), abs=1e-6)  # background left out
    assert scores.mdice == pytest.approx(tm_dice[1:].mean(), abs=1e-6)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    target = np.array([[0, 1], [1, 0]])
    scores = segmentation_scores(target, target, 3)
    assert np.isnan(scores.iou[2]) and scores.miou == 1.0
    cm = np.array([[3, 1], [0, 2]])
    assert iou_from_confusion(cm).tolist() == pytest.approx([3 / 4, 2 / 3])
    assert dice_from_confusion(cm).tolist() == pytest.approx([6 / 7, 4 / 5])
    assert "mean over objects" in scores.table(["bg", "a", "b"])


def test_worst_images_and_error_overlay():
    target = np.zeros((3, 8, 8), np.uint8)
    target[:, 2:6, 2:6] = 1
    pred = target.copy()
    pred[1] = 0                 # image 1: object missed entirely
    pred[2, 2:4, 2:6] = 2       # image 2: half of it with the wrong class
    assert per_image_miou(pred, target, 3).tolist() == pytest.approx([1.0, 0.0, 0.25])
    assert worst_indices(per_image_miou(pred, target, 3), k=2).tolist() == [1, 2]
    image = np.full((8, 8, 3), 100, np.uint8)
    shown = error_overlay(image, pred[2], target[2])
    assert (shown[0, 0] == 100).all() and shown[2, 2, 0] > 180 and shown[2, 2, 2] < 100


def test_dataset_augmentation_moves_image_and_mask_together():
    image = np.zeros((16, 16, 3), np.uint8)
    image[:4, :8] = 255
    mask = (image[..., 0] > 0).astype(np.uint8)
    ds = SegmentationDataset([image] * 8, [mask] * 8, augment=True, mean=(0, 0, 0), std=(1, 1, 1))
    for i in range(8):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and y.dtype == torch.int64
        assert torch.equal((x[0] > 0.5).long(), y)


def test_object_crops_keep_image_and_mask_aligned_and_find_the_objects():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[50:54, 4:8] = 3  # one small object in a corner
    image[..., 0] = np.where(mask > 0, 255, 0)  # the red channel marks the object
    torch.manual_seed(0)
    ds = SegmentationDataset([image] * 20, [mask] * 20, augment=True, mean=(0, 0, 0), std=(1, 1, 1),
                             crop=32, p_object=1.0, rotate=False)
    for i in range(20):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and y.shape == (32, 32)
        assert (y == 3).any(), "p_object=1 must put the object in every crop"
        assert torch.equal((x[0] > 0.5).long() * 3, y)
    # p_object=0: windows anywhere, so some miss the corner object
    anywhere = SegmentationDataset([image] * 40, [mask] * 40, augment=True, crop=32, p_object=0.0)
    assert not all((anywhere[i][1] == 3).any() for i in range(40))
    # no crop at evaluation time: the whole image
    assert SegmentationDataset([image], [mask], crop=32)[0][1].shape == (64, 64)


def test_rotate_false_only_flips_left_right():
    image = np.zeros((8, 8, 3), np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[0, 1] = 1
    torch.manual_seed(0)
    ds = SegmentationDataset([image] * 30, [mask] * 30, augment=True, rotate=False)
    seen = {tuple(np.argwhere(ds[i][1].numpy() == 1)[0]) for i in range(30)}
    assert seen == {(0, 1), (0, 6)}


def test_crop_that_does_not_fit_is_refused():
    image, mask = np.zeros((16, 24, 3), np.uint8), np.zeros((16, 24), np.uint8)
    with pytest.raises(ValueError, match="crop 32 does not fit image 0 of size 24 x 16"):
        SegmentationDataset([image], [mask], crop=32)
    with pytest.raises(ValueError, match="p_object"):
        SegmentationDataset([image], [mask], crop=8, p_object=2)


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_reader_names_the_bad_mask(tmp_path):
    image = np.zeros((10, 12, 3), np.uint8)
    _write(tmp_path / "images" / "a.png", image)
    _write(tmp_path / "masks" / "a.png", np.zeros((10, 12), np.uint8))
    images, masks, names = load_segmentation_folder(tmp_path / "images", tmp_path / "masks", ["x", "y"])
    assert names == ["a.png"] and masks[0].shape == (10, 12)

    _write(tmp_path / "masks" / "a.png", np.zeros((12, 10), np.uint8))
    with pytest.raises(DatasetError, match=r"masks/a\.png: mask size 10x12 \(WxH\) does not match"):
        load_segmentation_folder(tmp_path / "images", tmp_path / "masks", ["x", "y"])

    bad = np.zeros((10, 12), np.uint8)
    bad[0, 0] = 3
    _write(tmp_path / "masks" / "a.png", bad)
    with pytest.raises(DatasetError, match=r"masks/a\.png: mask holds value\(s\) \[3\]"):
        load_segmentation_folder(tmp_path / "images", tmp_path / "masks", ["x", "y"])


def test_check_class_mask_allows_the_label_map():
    assert check_class_mask(np.array([[0, 2]]), 3, "m.png").shape == (1, 2)
    with pytest.raises(DatasetError, match="m.png: .*255"):
        check_class_mask(np.array([[0, 255]], np.uint8), 3, "m.png")


def test_polygon_with_two_points_names_the_file(tmp_path):
    _write(tmp_path / "a.png", np.zeros((10, 10, 3), np.uint8))
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
            "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3],
                             "segmentation": [[1, 1, 4, 4]]}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=r"ann\.json: annotation id 7 .* 2 point\(s\); a polygon needs at least 3"):
        read_coco(tmp_path / "ann.json")


def test_smp_models_get_all_lite0_weights():
    from cvhelpers.models.pretrained import lite0_state_dict_for_timm

    model = smp_model("unet", num_classes=5)
    stem = lite0_state_dict_for_timm()["conv_stem.weight"]
    assert torch.equal(model.encoder.model.conv_stem.weight, stem)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5, 64, 64)
    scratch = smp_model("deeplabv3plus", num_classes=3, pretrained=False)
    assert not torch.equal(scratch.encoder.model.conv_stem.weight, stem)
    with pytest.raises(ValueError, match="offline weights"):
        smp_model("unet", encoder="resnet18")


def _tiny_task():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(8)]
    masks = [(im[..., 0] > 127).astype(np.uint8) for im in images]
    ds = SegmentationDataset(images, masks, mean=(0.5,) * 3, std=(0.5,) * 3)
    return ds, masks, make_loader(ds, batch_size=4, shuffle=True, seed=0)


def test_fit_with_a_fixed_number_of_steps_brings_the_lr_down():
    """The lessons' segmentation set-up: fixed steps, warm-up + cosine over the run's progress."""
    torch.manual_seed(0)
    ds, _, loader = _tiny_task()
    model = UNet(3, 2, width=4, depth=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    history = fit(model, loader, None, optimizer=opt, max_steps=5, monitor="train_loss", restore_best=False,
                  lr_schedule=warmup_cosine(0.05), device="cpu", progress=False)
    assert history.total_steps == 5 and history.stop_reason == "max_steps" and len(history.step_loss) == 5
    assert history.epoch == [1, 2, 3] and history.steps == [2, 4, 5]  # 2 batches an epoch; the last one cut short
    assert history.lr[-1] < max(history.lr) and history.lr[-1] < 1e-2 * 0.2  # the schedule brought the lr down
    assert history.seconds > 0


def test_fit_respects_a_time_budget():
    torch.manual_seed(0)
    _, _, loader = _tiny_task()
    model = UNet(3, 2, width=4, depth=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    kw = dict(optimizer=opt, monitor="train_loss", lr_schedule=warmup_cosine(0.1), device="cpu", progress=False)
    fit(model, loader, None, max_steps=1, **kw)  # first steps pay one-time setup costs
    history = fit(model, loader, None, time_budget_s=1.5, **kw)
    assert 1.5 <= history.seconds < 4.0 and history.total_steps >= 3 and history.stop_reason == "time_budget"
    assert history.lr[-1] < max(history.lr)  # the clock brought the lr down


def test_warmup_cosine_warms_up_then_decays_to_zero():
    schedule = warmup_cosine(0.1)
    assert schedule(0.0) == 0.05 and schedule(0.05) == pytest.approx(0.5)
    assert schedule(0.1) == pytest.approx(1.0) and schedule(1.0) == pytest.approx(0.0)
    assert schedule(0.55) == pytest.approx(0.5)


def test_fit_learns_and_the_validator_scores_miou():
    torch.manual_seed(0)
    ds, masks, loader = _tiny_task()
    model = UNet(3, 2, width=4, depth=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    val_loader = make_loader(ds, batch_size=4, shuffle=False)
    history = fit(model, loader, val_loader, optimizer=opt, epochs=40, validator=SegmentationValidator(2),
                  monitor="val_miou", restore_best=False, device="cpu", progress=False)  # constant lr 1e-2
    assert len(history.epoch) == 40 and history.total_steps == 80 and history.stop_reason == "epochs"
    assert set(history.val_metrics) == {"miou", "mdice", "pixel_accuracy"} and history.monitor == "val_miou"
    assert history.best_epoch == int(np.argmax(history.val_metrics["miou"])) + 1
    pred = predict_masks(model, ds)
    assert pred.shape == (8, 16, 16) and pred.dtype == np.uint8
    final = segmentation_scores(pred, np.stack(masks), 2)
    assert final.miou > 0.8
    assert history.val_metrics["miou"][-1] == pytest.approx(final.miou, abs=1e-9)
    assert history.val_metrics["mdice"][-1] == pytest.approx(final.mdice, abs=1e-9)
    assert model.training  # fit leaves the model in train mode; predict_masks restored it


def test_resized_input_runs_smaller_and_answers_at_full_size():
    import torch
    from torch import nn

    from cvhelpers.segmentation.models import ResizedInput

    seen = []
    probe = nn.Conv2d(3, 5, 1)
    probe.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    wrapped = ResizedInput(probe, 0.5)
    assert wrapped(torch.zeros(2, 3, 160, 96)).shape == (2, 5, 160, 96)
    assert seen == [(80, 48)]
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(ResizedInput(probe, 1)(x), probe(x))
    with pytest.raises(ValueError, match="scale must be in"):
        ResizedInput(probe, 1.5)
