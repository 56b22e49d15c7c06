"""Augmentation presets: boxes and masks stay with the image; old albumentations spellings raise."""

import warnings

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import masks_to_boxes

from cvhelpers.data.scenes import generate_scenes
from cvhelpers.augment.presets import (BACKENDS, TASKS, AugmentedDataset, denormalize, eval_preset, preset_settings, recommended_preset, train_preset)
from cvhelpers.augment.ops import CoarseDropout, RandomMotionBlur, albu

PRESETS = [(task, backend) for task in TASKS for backend in BACKENDS]


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes("test", 8, seed=0)


@pytest.mark.parametrize("task,backend", PRESETS)
def test_boxes_enclose_their_masks_after_every_preset(scenes, task, backend):
    """The transformed box of each object still encloses its transformed mask (1 px slack)."""
    torch.manual_seed(0)
    np.random.seed(0)
    preset = train_preset(task, backend, size=128)
    kept = 0
    for _ in range(4):  # several random draws per scene
        for scene in scenes:
            out = preset(scene.image, boxes=scene.boxes, labels=scene.labels, masks=scene.masks,
                         mask=scene.semantic)
            boxes, labels, masks = out["boxes"], out["labels"], out["masks"]
            assert out["image"].shape == (3, 128, 128) and out["image"].dtype == torch.float32
            assert len(boxes) == len(labels) == len(masks) <= len(scene.boxes)
            assert labels.dtype == torch.int64
            assert set(labels.tolist()) <= set(scene.labels.tolist())
            assert out["mask"].shape == (128, 128)
            nonempty = masks.flatten(1).any(1)
            if not nonempty.any():
                continue
            # torchvision's reference box of each mask; its x2, y2 are the last pixel, ours the
            # edge after it, hence + 1.
            reference = masks_to_boxes(masks[nonempty])
            reference[:, 2:] += 1
            # The box on the pixel grid (edges rounded outwards) grown by one pixel holds the
            # whole mask. (Masks are resampled with nearest neighbours at every geometric step
            # while boxes are exact; torchvision's RandomResizedCrop resamples masks with
            # floor-nearest, so its masks stray up to ~1.3 px off-grid; albumentations' <= 1.)
            box = boxes[nonempty]
            assert (reference[:, :2] >= box[:, :2].floor() - 1).all(), (reference, box)
            assert (reference[:, 2:] <= box[:, 2:].ceil() + 1).all(), (reference, box)
            # the semantic mask went through the same geometry as the instance masks
            for k in torch.nonzero(nonempty).flatten().tolist():
                agree = (out["mask"][masks[k]] == labels[k] + 1).float().mean()
                assert agree > 0.95
            kept += int(nonempty.sum())
    assert kept > 20  # the check ran on many objects, not on an empty list


@pytest.mark.parametrize("backend", BACKENDS)
def test_flip_only_preset_keeps_boxes_tight(scenes, backend):
    """With geometry limited to a flip and no crop, boxes are exactly the masks' boxes."""
    settings = preset_settings("detection", size=160, crop_scale=(1.0, 1.0), hflip_p=1.0,
                               affine_p=0.0, dropout_p=0.0)
    out = train_preset("detection", backend, settings=settings)(
        scenes[0].image, boxes=scenes[0].boxes, labels=scenes[0].labels, masks=scenes[0].masks)
    reference = masks_to_boxes(out["masks"])
    reference[:, 2:] += 1  # the course's boxes use exclusive x2, y2
    torch.testing.assert_close(out["boxes"], reference)
    flipped = scenes[0].boxes.copy()
    flipped[:, [0, 2]] = 160 - scenes[0].boxes[:, [2, 0]]
    torch.testing.assert_close(out["boxes"], torch.from_numpy(flipped))


@pytest.mark.parametrize("task,backend", PRESETS)
def test_eval_preset_is_deterministic_and_normalised(scenes, task, backend):
    preset = eval_preset(task, backend, size=96)
    first, second = preset(scenes[0].image)["image"], preset(scenes[0].image)["image"]
    assert torch.equal(first, second) and first.shape == (3, 96, 96)
    back = denormalize(first)
    assert back.dtype == np.uint8 and back.shape == (96, 96, 3)
    # resized image vs OpenCV's resize of the same photo: close after the round trip
    if task != "classification":
        expected = cv2.resize(scenes[0].image, (96, 96), interpolation=cv2.INTER_AREA)
        assert np.abs(back.astype(int) - expected.astype(int)).mean() < 6


def test_torchvision_and_albumentations_eval_presets_agree(scenes):
    tv = eval_preset("segmentation", "torchvision", size=80)(scenes[1].image)["image"]
    al = eval_preset("segmentation", "albumentations", size=80)(scenes[1].image)["image"]
    assert (tv - al).abs().mean() < 0.1  # same normalisation; resize kernels differ slightly


# ----------------------------------------------------------------------------- old spellings
@pytest.mark.parametrize("name,kwargs,hint", [
    ("GaussNoise", {"var_limit": (10, 50)}, "std_range"),
    ("CoarseDropout", {"max_holes": 8, "max_height": 8, "max_width": 8}, "num_holes_range"),
    ("Rotate", {"limit": 30, "value": 0}, "fill"),
    ("ImageCompression", {"quality_lower": 50}, "quality_range"),
    ("RandomResizedCrop", {"height": 64, "width": 64}, "size"),
    ("ShiftScaleRotate", {}, "Affine"),
    ("Cutout", {}, "CoarseDropout"),
    ("HorizontalFlip", {"probability": 0.5}, "'probability' are not valid"),
])
def test_albu_raises_on_outdated_or_unknown_arguments(name, kwargs, hint):
    with pytest.raises(ValueError) as err:
        albu(name, **kwargs)
    assert hint in str(err.value)


def test_albumentations_itself_only_warns_about_unknown_arguments():
    """Why albu() exists: the library keeps going with its defaults after a warning."""
    with pytest.warns(UserWarning, match="var_limit"):
        noise = A.GaussNoise(var_limit=(10, 50))
    assert noise.std_range == (0.2, 0.44)  # the default, ~8x stronger than the recipe meant


def test_presets_reject_unknown_settings():
    with pytest.raises(TypeError, match="'rotation'"):
        train_preset("classification", "albumentations", size=64, rotation=10)
    with pytest.raises(ValueError, match="backend must be one of"):
        train_preset("classification", "keras")
    with pytest.raises(ValueError, match="task must be one of"):
        preset_settings("depth")


def test_presets_build_without_any_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for task, backend in PRESETS:
            train_preset(task, backend, size=64)
            eval_preset(task, backend, size=64)
        assert recommended_preset("detection", size=64).backend in BACKENDS


# ------------------------------------------------------------------- torchvision extra steps
def test_motion_blur_matches_opencv_filter2d():
    torch.manual_seed(3)
    blur = RandomMotionBlur(max_kernel=7)
    image = np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)
    params = blur.make_params([])
    ours = blur.transform(torch.from_numpy(image)[None].float(), params)[0].numpy()
    kernel = params["kernel"].numpy()
    assert kernel.sum() == pytest.approx(1.0)
    reference = cv2.filter2D(image.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REPLICATE)
    np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_coarse_dropout_blacks_out_image_only():
    from torchvision import tv_tensors

    torch.manual_seed(0)
    image = tv_tensors.Image(torch.full((3, 64, 64), 200, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(64, 64, dtype=torch.uint8))
    out_image, out_mask = CoarseDropout(holes=(3, 3), size=(0.2, 0.2))(image, mask)
    black = (out_image == 0).all(0).float().mean()
    assert 0.02 < black <= 3 * 0.2 * 0.2 + 1e-6
    assert torch.equal(out_mask, mask) and isinstance(out_image, tv_tensors.Image)


def test_augmented_dataset_serves_grey_images():
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    preset = train_preset("classification", "torchvision", size=28, mean=None, std=None)
    x, y = AugmentedDataset(images, np.arange(5), preset)[2]
    assert x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1 and int(y) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_coarse_dropout_leaves_boxes_enclosing_their_masks(scenes, backend):
    """Holes hide parts of objects but do not move their boxes (albumentations 2.x would shrink
    each box to its largest visible rectangle, leaving the object's mask sticking out)."""
    settings = preset_settings("detection", size=160, crop_scale=(1.0, 1.0), hflip_p=0.0,
                               affine_p=0.0, dropout_p=1.0, dropout_holes=(3, 3),
                               dropout_size=(0.3, 0.3))
    preset = train_preset("detection", backend, settings=settings)
    for scene in scenes:
        out = preset(scene.image, boxes=scene.boxes, labels=scene.labels, masks=scene.masks)
        torch.testing.assert_close(out["boxes"], torch.as_tensor(scene.boxes))
        assert torch.equal(out["masks"], torch.as_tensor(scene.masks))
        # and the holes were cut: black pixels (the fill), up to 3 holes of 48 x 48 px of 160 x 160
        black = (np.asarray(denormalize(out["image"])) == 0).all(-1).mean()
        assert 0.03 < black <= 3 * 0.3 ** 2 + 0.01, f"{black:.3f} of the pixels are black"


def test_albumentations_presets_repeat_with_the_seed_and_differ_between_workers():
    """albumentations seeds itself from OS entropy unless told; the course's presets take their
    seed from torch's generator, so a run repeats and DataLoader workers draw their own streams."""
    from torch.utils.data import DataLoader

    from cvhelpers.env import seed_everything

    image = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)

    class Images(torch.utils.data.Dataset):
        def __init__(self, preset):
            self.preset = preset

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return self.preset(image)["image"]

    def run(num_workers):
        seed_everything(0)
        loader = DataLoader(Images(train_preset("classification", "albumentations", size=48)),
                            batch_size=1, num_workers=num_workers,
                            generator=torch.Generator().manual_seed(0))
        return [batch[0] for batch in loader]

    first, again = run(0), run(0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])
    workers = run(2)
    assert all(torch.equal(a, b) for a, b in zip(workers, run(2)))
    assert not torch.equal(workers[0], workers[1])  # worker 0 and worker 1 took items 0 and 1
