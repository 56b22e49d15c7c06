"""Your own data (cvhelpers.data.owndata, cvhelpers.recipes, deploy/predict_onnx.py for boxes and
masks) and notebook 12 in smoke on five formats: an image folder, a YOLO dataset and a COCO json
written by the tests, and the Pascal VOC and mask exports that labelme wrote (Debian's
labelme-examples)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvhelpers.data.coco import write_coco
from cvhelpers.data.imagefolder import write_image_folder
from cvhelpers.data.owndata import (IGNORE, data_stats, detect_format, find_data, letterbox, letterbox_mask,
                                    letterbox_sample, load_own_data, unletterbox_boxes)
from cvhelpers.data.scenes import CLASS_NAMES, generate_scenes
from cvhelpers.data.validate import DatasetError
from cvhelpers.data.yolo import write_yolo

ROOT = Path(__file__).resolve().parents[1]
LABELME = Path("/usr/share/doc/labelme-examples/examples")
LABELME_VOC = LABELME / "bbox_detection" / "data_dataset_voc"
LABELME_MASKS = LABELME / "semantic_segmentation" / "data_dataset_voc"
needs_labelme = pytest.mark.skipif(not LABELME_VOC.is_dir() or not LABELME_MASKS.is_dir(),
                                   reason="Debian's labelme-examples is not installed")


def load_deploy_script():
    spec = importlib.util.spec_from_file_location("predict_onnx", ROOT / "deploy" / "predict_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scenes():
    return {"train": generate_scenes("train", 12, seed=3), "val": generate_scenes("val", 4, seed=3)}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, scenes):
    """The formats the tests write: {format: path}."""
    root = tmp_path_factory.mktemp("own")
    crops, labels = [], []
    for scene in scenes["train"] + scenes["val"]:  # the biggest object of each scene, cropped: a classification set
        k = int(np.argmax((scene.boxes[:, 2] - scene.boxes[:, 0]) * (scene.boxes[:, 3] - scene.boxes[:, 1])))
        x1, y1, x2, y2 = scene.boxes[k].astype(int)
        crops.append(scene.image[y1:y2, x1:x2])
        labels.append(int(scene.labels[k]))
    write_image_folder(crops, labels, root / "folder", CLASS_NAMES)
    yaml_path = write_yolo(scenes, root / "yolo", CLASS_NAMES, segments=True)
    all_scenes = scenes["train"] + scenes["val"]
    write_coco(all_scenes, root / "coco" / "instances.json", CLASS_NAMES, root / "coco" / "images")
    for folder in ("images", "masks"):
        (root / "masks" / folder).mkdir(parents=True)
    for scene in all_scenes:
        Image.fromarray(scene.image).save(root / "masks" / "images" / scene.file_name)
        Image.fromarray(scene.semantic).save(root / "masks" / "masks" / Path(scene.file_name).with_suffix(".png"))
    (root / "masks" / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return {"imagefolder": root / "folder", "yolo": yaml_path, "coco": root / "coco" / "instances.json",
            "masks": root / "masks"}


# ------------------------------------------------------------------------------ formats
def test_each_format_is_recognised_and_read(datasets, scenes):
    expected_task = {"imagefolder": "classification", "yolo": "detection", "coco": "detection",
                     "masks": "segmentation"}
    for fmt, path in datasets.items():
        assert detect_format(path) == fmt
        data = load_own_data(path)
        assert (data.format, data.task) == (fmt, expected_task[fmt])
        assert len(data) == 16 and len(data.files) == 16 and all(Path(f).is_file() for f in data.files)
        assert data.class_names == (sorted(CLASS_NAMES) if fmt == "imagefolder" else list(CLASS_NAMES))
    yolo = load_own_data(datasets["yolo"])
    assert yolo.split.count("train") == 12 and yolo.split.count("val") == 4
    np.testing.assert_allclose(yolo.samples[0].boxes, scenes["train"][0].boxes, atol=1.0)
    masks = load_own_data(datasets["masks"])
    by_name = {s.file_name: s for s in scenes["train"] + scenes["val"]}
    np.testing.assert_array_equal(masks.masks[0], by_name[Path(masks.files[0]).name].semantic)


def test_polygons_give_segmentation_masks_and_boxes_only_refuse(datasets, tmp_path, scenes):
    data = load_own_data(datasets["coco"], task="segmentation")
    assert data.task == "segmentation" and data.masks[0].shape == data.images[0].shape[:2]
    assert set(np.unique(np.concatenate([m.ravel() for m in data.masks]))) <= set(range(len(CLASS_NAMES) + 1))
    by_name = {s.file_name: s for s in scenes["train"] + scenes["val"]}
    for mask, file in zip(data.masks, data.files):  # the polygons rasterised back onto the scenes' own masks
        truth = by_name[Path(file).name].semantic
        assert (mask == truth).mean() > 0.97, f"{file}: {(mask == truth).mean():.3f} of the pixels agree"
    boxes_only = write_yolo({"train": scenes["train"][:2]}, tmp_path / "boxes", CLASS_NAMES)
    with pytest.raises(DatasetError, match="no instance masks"):
        load_own_data(boxes_only, task="segmentation")
    with pytest.raises(DatasetError, match="imagefolder dataset cannot train detection"):
        load_own_data(datasets["imagefolder"], task="detection")
    with pytest.raises(ValueError, match="TASK must be one of"):
        load_own_data(datasets["yolo"], task="tracking")


def test_a_folder_of_splits_keeps_its_splits(tmp_path, scenes):
    for split, part in scenes.items():
        write_coco(part, tmp_path / split / "annotations.json", CLASS_NAMES, tmp_path / split / "images")
    data = load_own_data(tmp_path)
    assert data.format == "coco" and data.split.count("train") == 12 and data.split.count("val") == 4
    train, val, how = data.split_indices()
    assert (len(train), len(val)) == (12, 4) and "own split" in how
    small = load_own_data(tmp_path, max_images=3)
    assert small.split.count("train") == 3 and small.split.count("val") == 3


def test_coco_exports_of_other_tools_are_found(tmp_path, scenes):
    """Roboflow: train/_annotations.coco.json with the images beside it, a 'valid' split; Label
    Studio and others: file_name 'images/x.png' relative to the json's folder."""
    for split, part in (("train", scenes["train"]), ("valid", scenes["val"])):
        write_coco(part, tmp_path / "rf" / split / "_annotations.coco.json", CLASS_NAMES, tmp_path / "rf" / split)
    for split in ("train", "valid"):  # Roboflow's unused parent category, id 0, named by the others
        path = tmp_path / "rf" / split / "_annotations.coco.json"
        coco = json.loads(path.read_text())
        coco["categories"] = [{"id": 0, "name": "shapes", "supercategory": "none"}] + [
            {**c, "supercategory": "shapes"} for c in coco["categories"]]
        if split == "valid":  # other ids, in another order, in the second file: mapped by name, not by id
            new_id = {c["id"]: 20 - c["id"] for c in coco["categories"][1:]}  # 1..4 -> 19..16
            coco["categories"] = coco["categories"][:1] + [{**c, "id": new_id[c["id"]]} for c in coco["categories"][1:]]
            coco["annotations"] = [{**a, "category_id": new_id[a["category_id"]]} for a in coco["annotations"]]
        path.write_text(json.dumps(coco))
    data = load_own_data(tmp_path / "rf")
    assert data.format == "coco" and data.split.count("valid") == 4 and "valid" in data.split_indices()[2]
    assert data.class_names == list(CLASS_NAMES)
    assert len(data.samples[12:]) == len(scenes["val"]) == 4
    for sample, scene in zip(data.samples[12:], scenes["val"]):
        np.testing.assert_array_equal(sample.labels, scene.labels)
    json_path = tmp_path / "ls" / "result.json"
    write_coco(scenes["val"], json_path, CLASS_NAMES, tmp_path / "ls" / "images")
    coco = json.loads(json_path.read_text())
    for image in coco["images"]:
        image["file_name"] = "images/" + image["file_name"]
    json_path.write_text(json.dumps(coco))
    assert detect_format(tmp_path / "ls") == "coco" and len(load_own_data(tmp_path / "ls")) == 4
    assert len(load_own_data(json_path)) == 4


def test_yolo_quirks_val_equal_to_train_and_roboflow_paths(tmp_path, scenes):
    yaml_path = write_yolo({"train": scenes["train"][:6]}, tmp_path / "y", CLASS_NAMES)
    text = yaml_path.read_text()
    yaml_path.write_text(text + "val: images/train\n")  # the same folder twice: a leak, not a split
    data = load_own_data(yaml_path)
    assert len(data) == 6 and set(data.split) == {"train"}
    train, val, how = data.split_indices()
    assert len(val) >= 1 and "same folder" in how
    (tmp_path / "y" / "sub").mkdir()
    (tmp_path / "y" / "sub" / "data.yaml").write_text(  # Roboflow writes ../train/images from the yaml's folder
        "names: " + json.dumps(list(CLASS_NAMES)) + "\npath: ..\ntrain: ../images/train\n")
    assert len(load_own_data(tmp_path / "y" / "sub" / "data.yaml")) == 6


def test_a_lone_json_that_is_not_coco_is_not_taken_for_coco(datasets, tmp_path):
    import shutil

    folder = shutil.copytree(datasets["imagefolder"], tmp_path / "folder")
    (folder / "labels.json").write_text(json.dumps({"made_by": "a camera app"}))
    assert detect_format(folder) == "imagefolder"


def test_every_class_with_one_image_still_leaves_something_to_score(tmp_path):
    write_image_folder([np.full((8, 8, 3), v, np.uint8) for v in (0, 80, 160)], [0, 1, 2], tmp_path / "f", ["a", "b", "c"])
    train, val, _ = load_own_data(tmp_path / "f").split_indices()
    assert len(val) == 1 and len(train) == 2


def test_split_without_a_split_is_seeded_and_stratified(datasets):
    data = load_own_data(datasets["imagefolder"])
    train, val, how = data.split_indices(0.25, seed=1)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(data)
    assert "per class" in how
    for label in np.unique(data.labels):  # every class with 2+ images is scored
        if (data.labels == label).sum() > 1:
            assert (data.labels[val] == label).any()
    again = data.split_indices(0.25, seed=1)
    np.testing.assert_array_equal(again[1], val)


def test_errors_name_what_is_wrong(tmp_path, datasets):
    with pytest.raises(DatasetError, match="no such file"):
        detect_format(tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match=r"notes\.txt: a \.txt file"):
        detect_format(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot tell the dataset's format.*data.yaml"):
        detect_format(tmp_path / "empty")
    with pytest.raises(DatasetError, match="looked in"):
        find_data("surely/not/here", also_under=(tmp_path,))
    assert find_data(datasets["coco"].name, also_under=(datasets["coco"].parent,)) == datasets["coco"].resolve()
    # a corrupt image in a class folder: the message names it
    bad = tmp_path / "broken"
    write_image_folder([np.zeros((8, 8, 3), np.uint8)] * 2, [0, 1], bad, ["a", "b"])
    (bad / "a" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"0\.png"):
        load_own_data(bad)


def test_a_mask_value_outside_the_classes_names_the_mask(tmp_path, scenes):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    scene = scenes["train"][0]
    Image.fromarray(scene.image).save(tmp_path / "images" / "a.png")
    mask = scene.semantic.copy()
    mask[0, 0] = 9
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    (tmp_path / "classes.txt").write_text("\n".join(CLASS_NAMES))
    with pytest.raises(DatasetError, match=r"masks/a\.png: mask holds value\(s\) \[9\]"):
        load_own_data(tmp_path)
    mask[0, 0] = IGNORE  # VOC's border value is allowed: it is ignored, not a class
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    assert load_own_data(tmp_path).masks[0][0, 0] == IGNORE


@needs_labelme
def test_labelme_exports_are_read_with_their_class_list():
    voc = load_own_data(LABELME_VOC)
    assert (voc.format, voc.task, len(voc)) == ("voc", "detection", 3) and len(voc.class_names) == 20
    assert "_background_" not in voc.class_names
    masks = load_own_data(LABELME_MASKS)
    assert (masks.format, masks.task, len(masks)) == ("masks", "segmentation", 3)
    assert masks.class_names == voc.class_names  # the same 20 VOC classes, background dropped
    values = np.unique(np.concatenate([m.ravel() for m in masks.masks]))
    assert IGNORE in values and values.max() == IGNORE and 0 in values  # labelme marks borders 255
    stats = data_stats(masks)
    assert stats["unit"] == "pixels" and sum(stats["class_counts"]) > 0


# ---------------------------------------------------------------------------- letterbox
def test_letterbox_keeps_the_aspect_and_centres():
    image = np.full((300, 600, 3), 200, np.uint8)
    out, scale, (pad_x, pad_y) = letterbox(image, 320)
    assert out.shape == (320, 320, 3) and scale == pytest.approx(320 / 600) and (pad_x, pad_y) == (0, 80)
    assert (out[:80] == 114).all() and (out[240:] == 114).all() and (out[80:240] == 200).all()
    mask = np.zeros((300, 600), np.uint8)
    mask[100:200, 100:300] = 3
    boxed = letterbox_mask(mask, 320)
    assert (boxed[:80] == IGNORE).all() and set(np.unique(boxed)) == {0, 3, IGNORE}  # no invented class ids


def test_letterboxed_boxes_map_back_to_the_original(scenes):
    scene = scenes["train"][0]
    big = np.repeat(np.repeat(scene.image, 3, 0), 2, 1)  # 480 x 320: not square
    sample = type(scene)(big, scene.boxes * np.array([2, 3, 2, 3], np.float32), scene.labels,
                         np.repeat(np.repeat(scene.masks, 3, 1), 2, 2), "big.png")
    boxed = letterbox_sample(sample, 320)
    _, scale, pad = letterbox(big, 320)
    assert boxed.image.shape == (320, 320, 3) and boxed.masks.shape[1:] == (320, 320)
    np.testing.assert_allclose(unletterbox_boxes(boxed.boxes, scale, pad, big.shape), sample.boxes, atol=1e-3)
    for mask, box in zip(boxed.masks, boxed.boxes):  # each mask still lies inside its moved box
        ys, xs = np.nonzero(mask)
        assert xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1 and ys.min() >= box[1] - 1 and ys.max() <= box[3] + 1


def test_deploy_letterbox_is_the_library_letterbox():
    predict_onnx = load_deploy_script()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (213, 517, 3), dtype=np.uint8)
    meta = {"input_shape": [3, 320, 320], "color_mode": "RGB", "mean": [0.0], "std": [1.0], "resize": "letterbox"}
    x, moved = predict_onnx.prepare_input(image, meta)
    ours, scale, pad = letterbox(image, 320)
    np.testing.assert_allclose(x[0].transpose(1, 2, 0) * 255, ours, atol=1e-3)
    assert moved["scale"] == pytest.approx(scale) and moved["pad"] == pad


# ---------------------------------------------------------------------- ignore in scores
def test_ignored_pixels_count_in_no_loss_or_score():
    from cvhelpers.segmentation.losses import CEDiceLoss, dice_loss
    from cvhelpers.segmentation.metrics import segmentation_scores

    target = torch.tensor([[[0, 1], [1, IGNORE]]])
    logits = torch.randn(1, 2, 2, 2)
    moved = logits.clone()
    moved[..., 1, 1] = torch.tensor([50.0, -50.0])  # change only the ignored pixel
    loss = CEDiceLoss(ignore_index=IGNORE)
    assert loss(logits, target) == pytest.approx(float(loss(moved, target)), abs=1e-6)
    assert dice_loss(logits, target, ignore_index=IGNORE) == pytest.approx(
        float(dice_loss(moved, target, ignore_index=IGNORE)), abs=1e-6)
    with pytest.raises(IndexError, match="out of bounds"):  # without ignore_index, 255 is no class of 2: refused, not silently scored
        CEDiceLoss()(logits, target)
    pred = np.array([[0, 1], [1, 0]])
    assert segmentation_scores(pred, target[0].numpy(), 2, ignore_index=IGNORE).miou == 1.0
    assert segmentation_scores(pred, np.array([[0, 1], [1, 1]]), 2).miou < 1.0


# ------------------------------------------------------------------------ recipes + deploy
@pytest.mark.parametrize("fmt", ["coco", "masks"])
def test_recipe_export_runs_in_the_deploy_script_at_the_image_size(fmt, datasets, tmp_path):
    """Detection and segmentation: the ONNX file agrees with PyTorch, and predict_onnx.py maps
    its boxes or mask back to the original image's pixels (here 160 px letterboxed to 320)."""
    from cvhelpers import recipes

    predict_onnx = load_deploy_script()
    data = load_own_data(datasets[fmt], max_images=6)
    train, val, _ = data.split_indices()
    prepared = recipes.prepare(data, train, val)
    model = recipes.build_model(prepared, pretrained=False)
    recipes.train(prepared, model, max_steps=1, progress=False, device="cpu")
    path = recipes.export(prepared, model, tmp_path / "model.onnx")
    assert recipes.onnx_parity(prepared, model, path) <= 0.01
    session, meta = predict_onnx.load_model(path)
    assert meta["task"] == data.task and meta["resize"] == "letterbox"
    image = data.images[int(val[0])]
    if fmt == "coco":
        found = predict_onnx.predict_detections(session, meta, image, score=0.0)
        torch_out = recipes.predict(prepared, model)[0]
        _, scale, pad = letterbox(image, prepared.size)
        expected = unletterbox_boxes(torch_out["boxes"][:5], scale, pad, image.shape)
        got = np.array([o["box"] for o in found], np.float32)
        assert len(expected) == 5 and len(got) >= 5  # an untrained detector at score 0 still proposes boxes
        for box in expected:  # each of PyTorch's best five, found by the script in original pixels
            assert np.abs(got - box).max(1).min() <= 0.1
    else:
        mask, shares = predict_onnx.predict_segmentation(session, meta, image)
        assert mask.shape == image.shape[:2] and sum(shares.values()) == pytest.approx(1.0)
        torch_mask = recipes.predict(prepared, model)[0].astype(np.uint8)  # 320 x 320 of a 160 px image
        back = np.asarray(Image.fromarray(torch_mask).resize(image.shape[1::-1], Image.Resampling.NEAREST))
        assert (mask == back).mean() > 0.999
    run = subprocess.run([sys.executable, "-I", str(ROOT / "deploy" / "predict_onnx.py"), data.files[int(val[0])],
                          str(path), "--json", "--score", "0.0"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["task"] == data.task


def test_the_deploy_script_refuses_a_model_of_another_task(datasets, tmp_path):
    from cvhelpers import recipes

    predict_onnx = load_deploy_script()
    data = load_own_data(datasets["masks"], max_images=4)
    train, val, _ = data.split_indices()
    prepared = recipes.prepare(data, train, val, size=64)
    model = recipes.build_model(prepared, pretrained=False)
    session, meta = predict_onnx.load_model(recipes.export(prepared, model, tmp_path / "seg.onnx"))
    with pytest.raises(predict_onnx.InputError, match="segmentation model; this function runs a classification"):
        predict_onnx.predict(session, meta, data.images[0])


# ---------------------------------------------------------------- the notebook, five formats
NOTEBOOK = ROOT / "notebooks" / "12_your_own_data.ipynb"


def run_notebook(data: Path, out: Path) -> dict:
    """The README's command (papermill from the repository folder), smoke profile."""
    results = out / "metrics.json"
    run = subprocess.run(
        [sys.executable, "-m", "papermill", str(NOTEBOOK), str(out / "run.ipynb"), "-p", "DATA", str(data),
         "-p", "PROFILE", "smoke", "-p", "RESULTS_FILE", str(results), "-p", "OUTPUT_DIR", str(out / "outputs"),
         "-k", "python3", "--no-progress-bar"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return {m["name"]: m for m in json.loads(results.read_text())["metrics"]}


@pytest.mark.parametrize("fmt", ["imagefolder", "yolo", "coco", "voc", "masks"])
def test_notebook_12_runs_in_smoke_on_each_format(fmt, datasets, tmp_path):
    if fmt in ("voc", "masks") and not LABELME_VOC.is_dir():
        pytest.skip("Debian's labelme-examples is not installed")
    data = {"voc": LABELME_VOC, "masks": LABELME_MASKS}.get(fmt) or datasets[fmt]
    metrics = run_notebook(data, tmp_path)
    for name in ("deploy_script_exit_code", "deploy_script_task_matches", "onnx_max_abs_diff", "images_read"):
        assert metrics[name]["passed"] is True, metrics[name]
    main = {"imagefolder": "classification_accuracy", "yolo": "detection_map50", "coco": "detection_map50",
            "voc": "detection_map50", "masks": "segmentation_miou"}[fmt]
    assert 0.0 <= metrics[main]["value"] <= 1.0
    assert metrics["exercise_letterbox_arithmetic"]["value"] == 1.0
