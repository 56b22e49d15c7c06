"""cvhelpers.detection.yolo: dataset checks before training, offline training inside ``project``,
predictions in the evaluator's format (boxes and masks), ONNX export."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cvhelpers.data.scenes import CLASS_NAMES, generate_scenes
from cvhelpers.data.validate import DatasetError
from cvhelpers.detection.yolo import (_result_to_dict, check_yolo_dataset, prepare_yolo_dataset, read_results_csv, train_yolo,
                                      yolo_device)

pytestmark = pytest.mark.filterwarnings("ignore:.*__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def splits():
    return {"train": generate_scenes("train", 6, seed=11, size=64, object_size=(12, 30)),
            "val": generate_scenes("val", 3, seed=11, size=64, object_size=(12, 30))}


@pytest.fixture(scope="module")
def ultralytics_home(tmp_path_factory):
    """Offline switches and a font before ultralytics is imported; torch threads restored after."""
    pytest.importorskip("ultralytics")
    from cvhelpers.env import setup

    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CVC_CACHE_DIR", str(tmp_path_factory.mktemp("cvc_cache")))
        for key in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR", "YOLO_VERBOSE"):
            patch.setenv(key, os.environ.get(key, ""))  # restored when the module's tests end
        setup(threads=threads)
        import ultralytics.utils.checks

        config = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
        patch.setattr(ultralytics.utils.checks, "USER_CONFIG_DIR", config)  # if imported earlier
        yield
    torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


def test_prepare_checks_each_split(splits, tmp_path):
    data_yaml = prepare_yolo_dataset(splits, tmp_path / "boxes", CLASS_NAMES)
    assert check_yolo_dataset(data_yaml) == {"train": 6, "val": 3}
    seg_yaml = prepare_yolo_dataset(splits, tmp_path / "segments", CLASS_NAMES, task="segment")
    row = (tmp_path / "segments" / "labels" / "train" / f"{splits['train'][0].file_name[:-4]}.txt").read_text().split("\n")[0]
    assert len(row.split()) > 5 and check_yolo_dataset(seg_yaml, ("val",)) == {"val": 3}
    with pytest.raises(ValueError, match="task"):
        prepare_yolo_dataset(splits, tmp_path / "x", CLASS_NAMES, task="pose")


@pytest.mark.parametrize(("damage", "words"), [
    (lambda label, root: label.write_text("9 0.5 0.5 0.2 0.2\n"), "class id 9"),
    (lambda label, root: label.write_text("0 0.5 0.5 0.2 0.2\n0 0.97 0.5 0.3 0.2\n"), "outside the 64x64 image"),
])
def test_bad_labels_fail_before_training_naming_file_and_line(splits, tmp_path, damage, words):
    data_yaml = prepare_yolo_dataset(splits, tmp_path / "d", CLASS_NAMES)
    label = sorted((tmp_path / "d" / "labels" / "train").glob("*.txt"))[1]
    damage(label, tmp_path / "d")
    with pytest.raises(DatasetError) as info:
        check_yolo_dataset(data_yaml)
    assert str(info.value).startswith(f"{label}:") and words in str(info.value)
    with pytest.raises(DatasetError):  # train_yolo checks first: no ultralytics import needed to fail
        train_yolo(data_yaml, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_missing_image_fails_naming_the_file(splits, tmp_path):
    data_yaml = prepare_yolo_dataset(splits, tmp_path / "d", CLASS_NAMES)
    image = sorted((tmp_path / "d" / "images" / "val").glob("*.png"))[0]
    image.unlink()
    with pytest.raises(DatasetError) as info:
        check_yolo_dataset(data_yaml)
    assert image.stem in str(info.value)


def test_result_to_dict_converts_ultralytics_results():
    boxes = SimpleNamespace(xyxy=torch.tensor([[1.0, 2, 10, 20], [5, 5, 8, 9]]), conf=torch.tensor([0.9, 0.2]),
                            cls=torch.tensor([3.0, 0.0]))
    masks = torch.zeros(2, 32, 40)
    masks[0, 2:20, 1:10] = 1
    detect = _result_to_dict(SimpleNamespace(boxes=boxes, masks=None), (32, 40), segment=False)
    assert detect["labels"].tolist() == [3, 0] and detect["labels"].dtype == np.int64
    assert detect["boxes"].dtype == np.float32 and "masks" not in detect
    assert detect["boxes"].tolist() == [[1, 2, 10, 20], [5, 5, 8, 9]]
    assert detect["scores"].tolist() == pytest.approx([0.9, 0.2])
    segment = _result_to_dict(SimpleNamespace(boxes=boxes, masks=SimpleNamespace(data=masks)), (32, 40), segment=True)
    assert segment["masks"].dtype == bool and segment["masks"].shape == (2, 32, 40) and segment["masks"][0].sum() == 18 * 9
    empty = SimpleNamespace(xyxy=torch.zeros(0, 4), conf=torch.zeros(0), cls=torch.zeros(0))
    none = _result_to_dict(SimpleNamespace(boxes=empty, masks=None), (32, 40), segment=True)
    assert none["masks"].shape == (0, 32, 40) and none["boxes"].shape == (0, 4)


def test_yolo_device_spells_course_devices_for_ultralytics():
    assert [yolo_device(d) for d in ("cpu", "cuda", "cuda:1", "0", "0,1", "mps")] == ["cpu", "0", "1", "0", "0,1", "mps"]
    assert yolo_device(torch.device("cpu")) == "cpu" and yolo_device(torch.device("cuda", 0)) == "0"
    expected = "0" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert yolo_device("auto") == expected


def test_read_results_csv(tmp_path):
    (tmp_path / "results.csv").write_text("epoch,  train/box_loss,metrics/mAP50(B)\n1,2.5,0.1\n2,2.0,0.3\n")
    history = read_results_csv(tmp_path / "results.csv")
    assert history == {"epoch": [1.0, 2.0], "train/box_loss": [2.5, 2.0], "metrics/mAP50(B)": [0.1, 0.3]}
    assert read_results_csv(tmp_path / "none.csv") == {}


def test_missing_pt_is_refused_offline(ultralytics_home, splits, tmp_path):
    data_yaml = prepare_yolo_dataset(splits, tmp_path / "d", CLASS_NAMES)
    with pytest.raises(FileNotFoundError, match="yolov8s.pt"):
        train_yolo(data_yaml, tmp_path / "runs", model="yolov8s.pt")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # ultralytics' ONNX export traces
@pytest.mark.parametrize("task", ["detect", "segment"])
def test_train_predict_export_inside_project(ultralytics_home, splits, tmp_path, monkeypatch, task):
    from cvhelpers.detection.coco_eval import evaluate_coco
    from cvhelpers.deploy.export import export_yolo_onnx
    from cvhelpers.detection.yolo import MODEL_YAML, predict_yolo, yolo_parameters

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # ultralytics must write nothing here
    data_yaml = prepare_yolo_dataset(splits, tmp_path / "out" / "data", CLASS_NAMES, task=task)
    run = train_yolo(data_yaml, tmp_path / "out" / "runs", model=MODEL_YAML[task], epochs=1, imgsz=64, batch=6,
                     nbs=6, workers=0, val=False, mosaic=0.0)
    assert run.weights.is_file() and run.epochs == 1 and run.save_dir.is_relative_to(tmp_path / "out" / "runs")
    assert run.model.task == task and yolo_parameters(run.model) > 1e6
    images = [s.image for s in splits["val"]]
    predictions = predict_yolo(run.model, images, imgsz=64, conf=0.0, max_det=5)
    assert len(predictions) == 3
    for p in predictions:
        assert set(p) == ({"boxes", "scores", "labels", "masks"} if task == "segment" else {"boxes", "scores", "labels"})
        assert p["boxes"].shape[1:] == (4,) and len(p["scores"]) <= 5
        if task == "segment":
            assert p["masks"].dtype == bool and p["masks"].shape == (len(p["boxes"]), 64, 64)
    assert 0 <= evaluate_coco(predictions, splits["val"], CLASS_NAMES)["map50"] <= 1
    if task == "detect":
        onnx_path = export_yolo_onnx(run.model, tmp_path / "out" / "model.onnx", imgsz=64)
        assert onnx_path.is_file()
    assert list(work.iterdir()) == []
    shutil.rmtree(tmp_path / "out")


def test_seg_head_outputs_are_what_ultralytics_predictor_post_processes(ultralytics_home, splits):
    """The raw head outputs, decoded by hand, give the predictor's top box, score and mask."""
    from ultralytics import YOLO
    from ultralytics.utils import ops

    from cvhelpers.detection.yolo import predict_yolo, yolo_seg_outputs

    torch.manual_seed(0)
    model = YOLO("yolov8n-seg.yaml")  # untrained, 80 classes
    image = splits["val"][0].image  # 64 px RGB
    out = yolo_seg_outputs(model, image)
    assert out.boxes.shape == (8 * 8 + 4 * 4 + 2 * 2, 4)  # one candidate per cell of strides 8, 16, 32
    assert out.class_scores.shape == (84, 80) and out.coefficients.shape == (84, 32)
    assert out.protos.shape == (32, 16, 16)  # a quarter of the input size
    top = int(out.class_scores.max(1).argmax())
    predicted = predict_yolo(model, [image], imgsz=64, conf=0.0, max_det=1)[0]
    np.testing.assert_allclose(predicted["boxes"][0], np.clip(out.boxes[top], 0, 64), atol=1e-2)
    assert predicted["scores"][0] == pytest.approx(out.class_scores[top].max(), abs=1e-4)
    assert predicted["labels"][0] == out.class_scores[top].argmax()
    box = torch.from_numpy(np.clip(out.boxes[top:top + 1], 0, 64))
    mask = ops.process_mask(torch.from_numpy(out.protos), torch.from_numpy(out.coefficients[top:top + 1]), box,
                            (64, 64), upsample=True)[0].numpy().astype(bool)
    assert (mask == predicted["masks"][0]).mean() > 0.95
    # agreement, not just shared background: the two masks overlap on what they mark
    if mask.any() or predicted["masks"][0].any():
        iou = (mask & predicted["masks"][0]).sum() / (mask | predicted["masks"][0]).sum()
        assert iou > 0.9, iou
    with pytest.raises(ValueError, match="divisible by 32"):
        yolo_seg_outputs(model, image[:50])
    with pytest.raises(ValueError, match="segmentation model"):
        yolo_seg_outputs(YOLO("yolov8n.yaml"), image)
