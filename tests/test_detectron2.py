"""Detectron2 in the course (issue 17): the installer, the guarded compatibility fixes, the Lite0-FPN
backbone and config, and Detectron2's COCOEvaluator against the course's evaluators.

``make test`` installs Detectron2 first (``make detectron2``), so these run in CI; on a machine
without it the Detectron2 tests skip with that reason (the installer's tests still run)."""

from __future__ import annotations

import importlib.util
import io
import random
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("install_detectron2", ROOT / "tools" / "install_detectron2.py")
installer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(installer)

from cvhelpers.detection import d2compat  # noqa: E402

needs_detectron2 = pytest.mark.skipif(not d2compat.detectron2_available(),
                                      reason="Detectron2 is not installed (make detectron2)")


# --- the installer --------------------------------------------------------------------------

def test_pins_name_the_sdist_its_hash_and_the_runtime_dependencies():
    version, sha256, deps = installer.read_pins()
    assert version == "0.6" and len(sha256) == 64 and int(sha256, 16) >= 0
    names = {d.split("==")[0].lower() for d in deps}
    assert {"fvcore", "iopath", "omegaconf", "hydra-core", "yacs", "tensorboard"} <= names
    assert all("==" in d for d in deps), "every runtime dependency is pinned"
    course = {line.split("==")[0].lower() for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    assert not names & course, "Detectron2's pins must not move a course pin"


def test_pins_without_a_hash_are_refused(tmp_path):
    pins = tmp_path / "pins.txt"
    pins.write_text("pb1-detectron2==0.6\nfvcore==0.1.5\n")
    with pytest.raises(SystemExit, match="hash"):
        installer.read_pins(pins)


def _sdist(tmp_path: Path, setup_py: str, with_configs: bool = True) -> Path:
    path = tmp_path / "pb1-detectron2-0.6.tar.gz"
    files = {"pb1-detectron2-0.6/setup.py": setup_py}
    if with_configs:
        files["pb1-detectron2-0.6/detectron2/model_zoo/configs/Base-RCNN-FPN.yaml"] = "MODEL: {}\n"
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_prepare_source_builds_no_extension_and_moves_the_configs(tmp_path):
    sdist = _sdist(tmp_path, "setup(\n    ext_modules=get_extensions(),\n)\n")
    source = installer.prepare_source(sdist, tmp_path / "src")
    assert "ext_modules=[]," in (source / "setup.py").read_text()
    assert (source / "configs" / "Base-RCNN-FPN.yaml").is_file()
    assert not (source / "detectron2" / "model_zoo" / "configs").exists()


def test_prepare_source_refuses_an_unexpected_setup_py(tmp_path):
    with pytest.raises(SystemExit, match="setup.py"):
        installer.prepare_source(_sdist(tmp_path, "setup()\n"), tmp_path / "src")
    with pytest.raises(SystemExit, match="configs"):
        installer.prepare_source(_sdist(tmp_path, "ext_modules=get_extensions(),", with_configs=False), tmp_path / "src2")


def test_make_installs_detectron2_before_the_course_and_the_tests():
    makefile = (ROOT / "Makefile").read_text()
    assert "data: venv detectron2" in makefile
    assert "tools/install_detectron2.py" in makefile


# --- the guarded fixes ------------------------------------------------------------------------

def test_not_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(d2compat, "detectron2_available", lambda: False)
    with pytest.raises(ModuleNotFoundError, match="make detectron2"):
        d2compat.import_detectron2()


def test_pil_linear_is_added_only_when_missing(monkeypatch):
    from PIL import Image

    # set, then delete: monkeypatch then undoes both, so the fix's alias does not outlive the test
    monkeypatch.setattr(Image, "LINEAR", None, raising=False)
    monkeypatch.delattr(Image, "LINEAR")
    assert d2compat._fix_pil_linear() is True
    assert Image.LINEAR == Image.BILINEAR
    assert d2compat._fix_pil_linear() is False


def test_numpy_aliases_are_the_builtins_and_added_only_when_missing(monkeypatch):
    for name in ("int", "float", "str", "object"):  # set, then delete: both undone after the test
        monkeypatch.setattr(np, name, None, raising=False)
        monkeypatch.delattr(np, name)
    assert not hasattr(np, "int")
    added = d2compat._fix_numpy_aliases()
    assert set(added) == {"int", "float", "str", "object"}
    assert np.int is int and np.float is float and np.str is str  # type: ignore[attr-defined]
    assert np.zeros(2, dtype=np.int).dtype == np.zeros(2, dtype=int).dtype  # type: ignore[attr-defined]
    assert d2compat._fix_numpy_aliases() == []


def test_sampleable_set_is_what_random_sample_needs():
    with pytest.raises(TypeError, match="sequence"):
        random.Random(0).sample({1, 2, 3}, k=1)  # the Python 3.11 error the fix prevents
    candidates = d2compat._SampleableSet({4, 7, 9})
    assert random.Random(0).sample(candidates, k=1)[0] in {4, 7, 9}
    candidates.discard(7)
    candidates.add(11)
    assert sorted(candidates) == [4, 9, 11]


@needs_detectron2
def test_import_applies_each_fix_once_and_leaves_no_pkg_resources():
    d2compat.import_detectron2()
    assert d2compat.import_detectron2() == []
    assert "pkg_resources" not in sys.modules or importlib.util.find_spec("pkg_resources") is not None
    from detectron2 import model_zoo

    assert Path(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")).is_file()


@needs_detectron2
def test_missing_compiled_ops_fail_with_a_message_that_says_why():
    d2compat.import_detectron2()
    from detectron2 import _C
    from detectron2.layers import nms_rotated
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    if not isinstance(_C, d2compat._MissingCompiledOps):
        pytest.skip("this Detectron2 has its compiled ops")
    with pytest.raises(d2compat.CompiledOpMissing, match="use_fast_impl=False"):
        pairwise_iou_rotated(torch.zeros(1, 5), torch.zeros(1, 5))
    with pytest.raises(d2compat.CompiledOpMissing, match="nms_rotated"):
        nms_rotated(torch.zeros(1, 5), torch.zeros(1), 0.5)
    assert not hasattr(_C, "__path__")  # dunder lookups stay plain AttributeErrors


@needs_detectron2
def test_map_dataset_retries_another_image_when_the_mapper_returns_none():
    d2compat.import_detectron2()
    from detectron2.data.common import MapDataset

    dataset = MapDataset(list(range(5)), lambda x: None if x == 0 else x)
    assert dataset[0] in {1, 2, 3, 4}  # raised "Population must be a sequence" before the fix


# --- the backbone, the config and the evaluator -----------------------------------------------

@needs_detectron2
def test_config_refuses_levels_with_different_anchor_counts():
    from cvhelpers.detection.detectron2 import lite0_rcnn_config

    with pytest.raises(ValueError, match="same number"):
        lite0_rcnn_config(4, anchor_sizes=((32, 48), (64,), (128, 160)))


@needs_detectron2
def test_lite0_backbone_gives_the_features_its_output_shape_declares():
    from detectron2.modeling import build_backbone

    from cvhelpers.detection.detectron2 import lite0_rcnn_config

    cfg = lite0_rcnn_config(4, pretrained=False)
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.BACKBONE.NAME == "build_lite0_fpn_backbone"
    backbone = build_backbone(cfg).eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 320, 320))
    shapes = backbone.output_shape()
    assert list(features) == ["p3", "p4", "p5"]
    for name, feature in features.items():
        assert feature.shape[1] == shapes[name].channels
        assert feature.shape[-1] == 320 // shapes[name].stride


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Six scenes written as COCO files and registered under fresh names."""
    if not d2compat.detectron2_available():
        pytest.skip("Detectron2 is not installed (make detectron2)")
    d2compat.import_detectron2()
    from detectron2.data.datasets import register_coco_instances

    from cvhelpers.data.coco import write_coco
    from cvhelpers.data.scenes import CLASS_NAMES, generate_scenes

    root = tmp_path_factory.mktemp("d2")
    scenes = generate_scenes("test", 6, seed=3, photo_backgrounds=False)
    write_coco(scenes, root / "annotations.json", CLASS_NAMES, root / "images")
    name = f"cvc_test_scenes_{id(root)}"
    register_coco_instances(name, {}, str(root / "annotations.json"), str(root / "images"))
    return name, scenes, root


@needs_detectron2
def test_trained_detector_predicts_and_three_evaluators_agree(registered):
    from detectron2.data import DatasetCatalog
    from detectron2.engine import DefaultPredictor, DefaultTrainer
    from detectron2.evaluation import COCOEvaluator

    from cvhelpers.data.scenes import CLASS_NAMES
    from cvhelpers.detection.coco_eval import evaluate_coco, evaluate_detections
    from cvhelpers.detection.detectron2 import instances_to_detections, lite0_rcnn_config

    name, scenes, root = registered
    cfg = lite0_rcnn_config(len(CLASS_NAMES), mask=True, batch=2, max_iter=12, warmup_iters=1, train=name,
                            test=name, output_dir=str(root / "run"))
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert (root / "run" / "model_final.pth").is_file()
    trained = cfg.clone()
    trained.MODEL.WEIGHTS = str(root / "run" / "model_final.pth")
    predictor = DefaultPredictor(trained)
    for key, value in trainer.model.state_dict().items():  # the predictor holds the trained weights
        assert torch.equal(predictor.model.state_dict()[key].cpu(), value.cpu()), key
    evaluator = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False, use_fast_impl=False,
                              output_dir=str(root / "eval"))
    evaluator.reset()
    detections = []
    for record, scene in zip(DatasetCatalog.get(name), scenes):
        output = predictor(np.ascontiguousarray(scene.image[:, :, ::-1]))
        evaluator.process([record], [output])
        detections.append(instances_to_detections(output["instances"]))
    assert sum(len(d) for d in detections) > 0
    assert detections[0].masks is not None and detections[0].masks.shape[1:] == scene.image.shape[:2]
    theirs = evaluator.evaluate()
    for task in ("bbox", "segm"):
        ours = evaluate_detections(detections, scenes, iou_type=task, num_classes=len(CLASS_NAMES)).summary(CLASS_NAMES)
        bridge = evaluate_coco(detections, scenes, CLASS_NAMES, iou_type=task)
        for key, d2_key in (("map50_95", "AP"), ("map50", "AP50"), ("map75", "AP75")):
            assert theirs[task][d2_key] / 100 == pytest.approx(ours[key], abs=1e-6)
            assert bridge[key] == pytest.approx(ours[key], abs=1e-6)
        for class_name in CLASS_NAMES:
            assert theirs[task][f"AP-{class_name}"] / 100 == pytest.approx(ours["per_class_ap50_95"][class_name], abs=1e-6)


@needs_detectron2
def test_the_shared_steps_register_train_and_score_a_split_of_the_real_objects(tmp_path):
    """07b and 07c's library steps: a subset is written and registered, the predictor holds the
    trained weights, and COCOEvaluator agrees with the course's two evaluators on boxes and masks."""
    from cvhelpers.data.fashion_mnist import find_fashion_mnist
    from cvhelpers.data.objects import CLASS_NAMES, make_objects_dataset
    from cvhelpers.detection.detectron2 import (evaluator_agreement, lite0_rcnn_config, register_split,
                                                score_predictor, train_detectron2)

    if find_fashion_mnist(ROOT / "datasets") is None:
        pytest.skip("Fashion-MNIST not prepared (make data)")
    root = make_objects_dataset(tmp_path / "objects", fashion_root=ROOT / "datasets", n_train=8, n_val=2, n_test=6)
    train_name, train = register_split(root, "train", None, CLASS_NAMES, tmp_path, prefix=f"t{id(tmp_path)}")
    test_name, test = register_split(root, "test", 4, CLASS_NAMES, tmp_path, prefix=f"t{id(tmp_path)}")
    assert len(train) == 8 and len(test) == 4 and (tmp_path / f"t{id(tmp_path)}_test_4.json").is_file()
    assert register_split(root, "test", 4, CLASS_NAMES, tmp_path, prefix=f"t{id(tmp_path)}")[0] == test_name
    cfg = lite0_rcnn_config(len(CLASS_NAMES), mask=True, batch=2, max_iter=12, warmup_iters=1, train=train_name,
                            test=test_name, output_dir=str(tmp_path / "run"))
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # twelve steps: keep every box, so there is something to score
    predictor, seconds, rows = train_detectron2(cfg)
    assert seconds > 0 and rows and "total_loss" in rows[-1]
    saved = torch.load(tmp_path / "run" / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    for key, value in predictor.model.state_dict().items():  # the predictor holds the trained weights
        assert torch.equal(value.cpu(), torch.as_tensor(saved[key]).cpu()), key
    detections, theirs, ours, bridge = score_predictor(predictor, test_name, test, CLASS_NAMES, ("bbox", "segm"))
    assert len(detections) == 4 and sum(len(d) for d in detections) > 0
    for task in ("bbox", "segm"):
        table, worst = evaluator_agreement(theirs, ours, bridge, task, CLASS_NAMES)
        assert worst <= 1e-6 and table[0][0] == "map50_95" and len(table) == 6 + len(CLASS_NAMES)
        # judged here too, not only by the function under test: COCOEvaluator's own numbers
        for key, d2_key in (("map50_95", "AP"), ("map50", "AP50"), ("map75", "AP75")):
            assert theirs[task][d2_key] / 100 == pytest.approx(ours[task][key], abs=1e-6)
            assert bridge[task][key] == pytest.approx(ours[task][key], abs=1e-6)
        for class_name in CLASS_NAMES:
            d2, mine = theirs[task][f"AP-{class_name}"] / 100, ours[task]["per_class_ap50_95"][class_name]
            assert np.isnan(d2) == np.isnan(mine) and (np.isnan(d2) or d2 == pytest.approx(mine, abs=1e-6))
        assert dict((row[0], row[1]) for row in table)["map50"] == pytest.approx(theirs[task]["AP50"] / 100)
    with pytest.raises(ValueError, match="4 registered images but 3 samples"):
        score_predictor(predictor, test_name, test[:3], CLASS_NAMES)
    scored = next(n for n in CLASS_NAMES if not np.isnan(ours["bbox"]["per_class_ap50_95"][n]))
    broken = {"bbox": dict(theirs["bbox"], **{f"AP-{scored}": 50.0})}
    assert evaluator_agreement(broken, ours, bridge, "bbox", CLASS_NAMES)[1] == pytest.approx(
        abs(0.5 - ours["bbox"]["per_class_ap50_95"][scored]))  # a disagreement shows, by its size
    one_sided = {"bbox": dict(theirs["bbox"], **{f"AP-{scored}": float("nan")})}
    assert evaluator_agreement(one_sided, ours, bridge, "bbox", CLASS_NAMES)[1] == float("inf")
    assert evaluator_agreement({}, ours, bridge, "bbox", CLASS_NAMES)[1] == float("inf")  # nothing scored
