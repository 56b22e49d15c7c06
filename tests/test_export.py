"""Export and deployment, checked against ONNX Runtime on real inputs.

Parity: the course SmallCNN (trained briefly on Fashion-MNIST, fed Fashion-MNIST test images),
a U-Net (fed scenes images) and YOLOv8n (ultralytics' own exporter, fed a scenes image) match
PyTorch within 1e-4 in ONNX Runtime. INT8: ONNX Runtime's quantiser and its optimised graph say
which ops became integer ops. The deployment script runs in a subprocess where torch and
cvhelpers cannot be imported.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from cvhelpers.data.fashion_mnist import (CLASS_NAMES, MEAN, STD, load_fashion_mnist, to_tensor_dataset)
from cvhelpers.data.scenes import generate_scenes
from cvhelpers.deploy.runtime import (compare_with_pytorch, ort_session, run_session, session_accuracy)
from cvhelpers.deploy.export import (ExportMetadata, cpu_has_vnni, export_onnx, export_torchscript, op_counts, quantize_int8, read_metadata)
from cvhelpers.models.cnn import SmallCNN
from cvhelpers.train.engine import fit
from cvhelpers.data.loading import make_loader
from cvhelpers.env import seed_everything

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # fp32 ONNX Runtime vs PyTorch, absolute, on real inputs


def load_deploy_script():
    """deploy/predict_onnx.py is a standalone script, not part of the package: load it by path."""
    spec = importlib.util.spec_from_file_location("predict_onnx", ROOT / "deploy" / "predict_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


predict_onnx = load_deploy_script()


def fmnist_metadata() -> ExportMetadata:
    return ExportMetadata(input_shape=(1, 28, 28), class_names=CLASS_NAMES, color_mode="L",
                          mean=(MEAN,), std=(STD,))


@pytest.fixture(scope="module")
def fmnist(data_root):
    """Real Fashion-MNIST tensors: 2,000 train images (training + calibration), 1,000 test."""
    train_images, train_labels = load_fashion_mnist(data_root, "train")
    test_images, test_labels = load_fashion_mnist(data_root, "test")
    train = to_tensor_dataset(train_images[:2000], train_labels[:2000])
    test = to_tensor_dataset(test_images[:1000], test_labels[:1000])
    return {"train": train, "test": test, "test_images": test_images[:1000]}


@pytest.fixture(scope="module")
def trained(fmnist, tmp_path_factory):
    """SmallCNN after one short epoch (~75% accuracy: real, confident predictions), exported."""
    seed_everything(0)
    model = SmallCNN()
    loader = make_loader(fmnist["train"], batch_size=64, shuffle=True, seed=0)
    fit(model, loader, None, epochs=1, optimizer=torch.optim.AdamW(model.parameters(), 3e-3),
        monitor="train_loss", device="cpu", progress=False)
    model.eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "smallcnn.onnx", fmnist_metadata())
    return model, path


# ------------------------------------------------------------------------------------- metadata
def test_metadata_round_trip_and_validation():
    meta = fmnist_metadata()
    props = meta.to_props()
    assert all(isinstance(v, str) for v in props.values())
    assert json.loads(props["class_names"]) == CLASS_NAMES
    assert ExportMetadata.from_props(props) == meta
    with pytest.raises(ValueError, match="color_mode"):
        ExportMetadata(input_shape=(3, 32, 32), class_names=["a"], color_mode="L")
    with pytest.raises(ValueError, match="mean needs"):
        ExportMetadata(input_shape=(3, 32, 32), class_names=["a"], mean=(0.1, 0.2))


def test_onnx_file_carries_metadata_that_onnxruntime_reads(trained):
    _, path = trained
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    stored = read_metadata(path)
    assert stored["opset"] == opset and stored["input_shape"] == [1, 28, 28]
    assert stored["class_names"] == CLASS_NAMES and stored["mean"] == [MEAN]
    # what a deployment reads, with onnxruntime alone
    ort_props = ort_session(path).get_modelmeta().custom_metadata_map
    assert json.loads(ort_props["color_mode"]) == "L"
    assert [i.name for i in model.graph.input] == ["image"]
    assert not path.with_name(path.name + ".data").exists(), "weights inside the one file"


# --------------------------------------------------------------------------------------- parity
def test_smallcnn_parity_on_fashion_mnist(trained, fmnist):
    model, path = trained
    session = ort_session(path)
    x, y = fmnist["test"].tensors
    report = compare_with_pytorch(model, session, x, batch_size=100)
    assert report.max_abs_diff <= TOLERANCE, report
    assert report.top1_agreement == 1.0
    assert session_accuracy(session, x, y) > 0.6  # it really was trained: real predictions
    # dynamic batch: any batch size runs and gives the same per-image logits
    for batch in (1, 7, 32):
        assert run_session(session, x[:batch]).shape == (batch, 10)
    np.testing.assert_allclose(run_session(session, x[:7], batch_size=7)[3],
                               run_session(session, x[3:4])[0], atol=1e-5)


def test_segmentation_unet_parity_on_scenes(tmp_path):
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3,
                     decoder_channels=(64, 32, 16), classes=5).eval()
    scenes = generate_scenes("test", 3, seed=0)
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255
    meta = ExportMetadata(input_shape=(3, 160, 160), task="segmentation", output_name="mask_logits",
                          class_names=["background", "circle", "triangle", "square", "star"])
    path = export_onnx(model, tmp_path / "unet.onnx", meta)
    report = compare_with_pytorch(model, ort_session(path), x, batch_size=3)
    assert report.n == 3 and report.max_abs_diff <= TOLERANCE, report
    assert report.top1_agreement > 0.999  # per-pixel argmax (ties may flip)


def test_yolo_parity_with_ultralytics_exporter(tmp_path, monkeypatch):
    pytest.importorskip("ultralytics")
    from cvhelpers.env import configure_ultralytics, setup
    from cvhelpers.deploy.export import export_yolo_onnx

    setup()
    configure_ultralytics()
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)  # belt and braces: nothing may land in the repository
    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")  # built from scratch, offline
    scene = generate_scenes("test", 1, seed=0)[0]
    x = torch.from_numpy(scene.image).permute(2, 0, 1)[None].float() / 255  # 1 x 3 x 160 x 160
    with torch.inference_mode():
        reference = yolo.model.eval()(x)[0].numpy()  # before export: the model as trained
    path = export_yolo_onnx(yolo, tmp_path / "out" / "yolo.onnx", imgsz=160)
    session = ort_session(path)
    output = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert output.shape == reference.shape == (1, 84, 525)  # 4 box + 80 class rows, 525 anchors
    assert np.abs(output - reference).max() <= TOLERANCE
    meta = read_metadata(path)  # ultralytics writes its own metadata_props
    assert meta["imgsz"] == [160, 160] and meta["task"] == "detect"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------------------------------- INT8
def test_int8_static_quantisation(trained, fmnist, tmp_path):
    model, fp32_path = trained
    calibration = fmnist["train"].tensors[0][-500:].numpy()  # training images, not test
    int8_path = quantize_int8(fp32_path, tmp_path / "int8.onnx", calibration)
    ops = op_counts(int8_path)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0  # QDQ format
    assert "quantization" in read_metadata(int8_path)
    assert read_metadata(int8_path)["class_names"] == CLASS_NAMES  # metadata carried over
    # What ONNX Runtime runs after fusing the QDQ pairs: integer convolutions and matmul.
    session = ort_session(int8_path, optimized_model_path=tmp_path / "int8_ort.onnx")
    ran = op_counts(tmp_path / "int8_ort.onnx")
    assert ran["QLinearConv"] == 4, ran
    x, y = fmnist["test"].tensors
    fp32_accuracy = session_accuracy(ort_session(fp32_path), x, y)
    assert fp32_accuracy - session_accuracy(session, x, y) <= 0.02  # 1,000 images: ±1 point noise


def test_cpu_has_vnni_reads_the_cpu_flags(tmp_path, monkeypatch):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    for flags, expected in (("fpu avx2 avx512f avx512_vnni", True), ("fpu avx2 avx_vnni", True),
                            ("fpu sse4_2 avx2 fma", False)):
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert cpu_has_vnni(tmp_path / "cpuinfo") is expected
    assert cpu_has_vnni(tmp_path / "missing") is None
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert cpu_has_vnni(tmp_path / "cpuinfo") is None  # ARM: no AVX2 saturation to avoid


def test_reduce_range_is_recorded_and_chosen_by_the_cpu(trained, fmnist, tmp_path):
    _, fp32_path = trained
    calibration = fmnist["train"].tensors[0][-100:].numpy()
    seven = quantize_int8(fp32_path, tmp_path / "rr.onnx", calibration, reduce_range=True)
    eight = quantize_int8(fp32_path, tmp_path / "full.onnx", calibration, reduce_range=False)
    assert "7-bit" in read_metadata(seven)["quantization"]
    assert "7-bit" not in read_metadata(eight)["quantization"]

    def widest_int8_weight(path):  # the quantised weights themselves, read with onnx's own helpers
        import onnx
        from onnx import numpy_helper

        weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
                   if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and t.dims and np.prod(t.dims) > 16]
        assert weights, f"{path}: no 8-bit weight tensors"
        return max(int(np.abs(w.astype(np.int32) - (128 if w.dtype == np.uint8 else 0)).max()) for w in weights)

    assert widest_int8_weight(seven) <= 64 < widest_int8_weight(eight)  # 7 bits: -64..63; 8 bits: -127..127
    auto = quantize_int8(fp32_path, tmp_path / "auto.onnx", calibration)
    assert ("7-bit" in read_metadata(auto)["quantization"]) == (cpu_has_vnni() is False)


def test_torchscript_legacy_paths_match(trained, fmnist, tmp_path):
    model, _ = trained
    x = fmnist["test"].tensors[0][:16]
    with torch.inference_mode():
        expected = model(x)
    for method in ("trace", "script"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = export_torchscript(model, tmp_path / f"{method}.pt", x[:2], method=method)
        assert any("deprecated" in str(w.message).lower() for w in caught), method
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.jit.load(str(path))
        with torch.inference_mode():
            torch.testing.assert_close(loaded(x), expected, rtol=0, atol=1e-5)


# mobile converters: LiteRT, ExecuTorch and Core ML run in the edge tool venv (tests/test_edge.py)


# --------------------------------------------------------------------------- deployment recipe
NO_TORCH_RUNNER = """
import importlib.abc, runpy, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'cvhelpers', 'torchvision'):
            raise ImportError('the deployment recipe must not import ' + name)
sys.meta_path.insert(0, Refuse())
sys.argv = [{script!r}] + sys.argv[1:]
try:
    runpy.run_path({script!r}, run_name='__main__')
finally:
    assert 'torch' not in sys.modules and 'cvhelpers' not in sys.modules, 'torch was imported'
"""


def run_recipe(*args: str) -> subprocess.CompletedProcess:
    code = NO_TORCH_RUNNER.format(script=str(ROOT / "deploy" / "predict_onnx.py"))
    # -I: isolated mode (no PYTHONPATH, no user site, no current folder on sys.path)
    return subprocess.run([sys.executable, "-I", "-c", code, *args], capture_output=True,
                          text=True, timeout=120)


def test_recipe_gives_pytorch_top1_without_torch(trained, fmnist, tmp_path):
    model, path = trained
    images = fmnist["test_images"][:6]
    x = fmnist["test"].tensors[0][:6]
    with torch.inference_mode():
        expected = model(x).argmax(1).tolist()
    for i, image in enumerate(images):
        file = tmp_path / f"item{i}.png"
        Image.fromarray(image).save(file)
        result = run_recipe(str(file), str(path), "--json")
        assert result.returncode == 0, result.stderr
        top = json.loads(result.stdout)["top"]
        assert top[0]["index"] == expected[i] and top[0]["class"] == CLASS_NAMES[expected[i]]
        probabilities = [t["probability"] for t in top]
        assert len(top) == 3 and probabilities == sorted(probabilities, reverse=True)


def test_recipe_reports_bad_files_clearly(trained, tmp_path):
    _, path = trained
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    result = run_recipe(str(not_image), str(path))
    assert result.returncode == 2 and "not an image" in result.stderr
    bare = tmp_path / "bare.onnx"
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    result = run_recipe(str(not_image), str(bare))
    assert result.returncode == 2 and "metadata lacks" in result.stderr


RGB_META = {"input_name": "image", "input_shape": [3, 8, 8], "color_mode": "RGB",
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "class_names": ["a", "b"]}
GREY_META = {**RGB_META, "input_shape": [1, 8, 8], "color_mode": "L", "mean": [0.0], "std": [1.0]}


def rgb_image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)


def test_preprocess_layout_and_normalisation():
    image = rgb_image()
    x = predict_onnx.preprocess(image, RGB_META)
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 1], (image[:, :, 1] / 255 - 0.5) / 0.25, atol=1e-6)


def test_bad_dtype_is_refused():
    with pytest.raises(predict_onnx.InputError, match="uint8.*astype"):
        predict_onnx.preprocess(rgb_image().astype(np.float32) / 255, RGB_META)
    with pytest.raises(predict_onnx.InputError, match="uint8"):
        predict_onnx.preprocess(rgb_image().astype(np.int64), RGB_META)


def test_wrong_shapes_are_refused():
    with pytest.raises(predict_onnx.InputError, match=r"Channels-first.*transpose\(1, 2, 0\)"):
        predict_onnx.preprocess(rgb_image().transpose(2, 0, 1), RGB_META)
    with pytest.raises(predict_onnx.InputError, match="batch of grey images"):
        predict_onnx.preprocess(np.zeros((5, 8, 8), np.uint8), RGB_META)
    with pytest.raises(predict_onnx.InputError, match="batch"):
        predict_onnx.preprocess(rgb_image()[None], RGB_META)
    with pytest.raises(predict_onnx.InputError, match="not H x W x C"):
        predict_onnx.preprocess(np.zeros((8, 8, 2), np.uint8), RGB_META)
    with pytest.raises(predict_onnx.InputError, match="H x W x 3"):
        predict_onnx.preprocess(np.zeros(64, np.uint8), RGB_META)


def test_bgr_channel_order_is_converted():
    image = rgb_image()
    from_bgr = predict_onnx.preprocess(np.ascontiguousarray(image[:, :, ::-1]), RGB_META, channel_order="BGR")
    np.testing.assert_array_equal(from_bgr, predict_onnx.preprocess(image, RGB_META))
    with pytest.raises(predict_onnx.InputError, match="channel_order"):
        predict_onnx.preprocess(image, RGB_META, channel_order="GBR")


def test_grey_and_colour_conversions_are_the_documented_ones():
    grey = rgb_image()[:, :, 0]
    # grey image, RGB model: the grey value repeated on three channels
    x = predict_onnx.preprocess(grey, RGB_META)
    np.testing.assert_array_equal(x[0, 0], x[0, 2])
    np.testing.assert_allclose(x[0, 0], (grey / 255 - 0.5) / 0.25, atol=1e-6)
    assert np.array_equal(predict_onnx.preprocess(grey[:, :, None], RGB_META), x)  # H x W x 1
    # colour image, grey model: PIL's luma L = 0.299 R + 0.587 G + 0.114 B
    image = rgb_image()
    luma = (image.astype(np.float64) @ [0.299, 0.587, 0.114])
    x = predict_onnx.preprocess(image, GREY_META)
    assert x.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(x[0, 0] * 255, luma, atol=1.0)
    # transparency is shown on white
    rgba = np.zeros((8, 8, 4), np.uint8)
    np.testing.assert_allclose(predict_onnx.preprocess(rgba, GREY_META), 1.0)


def test_resize_modes():
    """A 40 x 60 image, red in its outer 9 columns each side, green between. Stretching keeps the
    red; timm's eval crop (shorter side to 8 / 0.875, centre 8 x 8) keeps the middle 8 of ~14
    columns, so no red survives, and the aspect ratio is kept (a centred green disc stays round)."""
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :, 1] = 255
    image[:, :9], image[:, -9:] = (255, 0, 0), (255, 0, 0)
    red = lambda x: (x[0, 0] * 0.25 + 0.5) > 0.5  # noqa: E731 - red channel back in [0, 1]
    stretched = predict_onnx.preprocess(image, RGB_META)
    assert stretched.shape == (1, 3, 8, 8) and red(stretched)[:, 0].all() and red(stretched)[:, -1].all()
    crop_meta = {**RGB_META, "resize": "shorter_side_crop", "crop_pct": 0.875}
    cropped = predict_onnx.preprocess(image, crop_meta)
    assert cropped.shape == (1, 3, 8, 8) and not red(cropped).any()
    disc = np.zeros((40, 60, 3), np.uint8)
    yy, xx = np.mgrid[:40, :60]
    disc[(yy - 19.5) ** 2 + (xx - 29.5) ** 2 <= 15 ** 2] = 255
    seen = predict_onnx.preprocess(disc, crop_meta)[0, 0] * 0.25 + 0.5 > 0.5
    rows, cols = np.nonzero(seen)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1  # round, not squeezed


def test_model_input_checks():
    good = np.zeros((2, 3, 8, 8), np.float32)
    predict_onnx.check_model_input(good, RGB_META)
    with pytest.raises(predict_onnx.InputError, match="float32"):
        predict_onnx.check_model_input(good.astype(np.float64), RGB_META)
    with pytest.raises(predict_onnx.InputError, match="channels-last"):
        predict_onnx.check_model_input(good.transpose(0, 2, 3, 1).copy(), RGB_META)
    with pytest.raises(predict_onnx.InputError, match=r"x\[None\]"):
        predict_onnx.check_model_input(good[0], RGB_META)


def test_in_process_predict_matches_session(trained, fmnist):
    model, path = trained
    session, meta = predict_onnx.load_model(path)
    image = fmnist["test_images"][0]
    top = predict_onnx.predict(session, meta, Image.fromarray(image), top=10)
    with torch.inference_mode():
        probabilities = model(fmnist["test"].tensors[0][:1]).softmax(1)[0].numpy()
    assert [t["index"] for t in top][0] == int(probabilities.argmax())
    np.testing.assert_allclose(sorted(t["probability"] for t in top), np.sort(probabilities), atol=1e-5)
    for t in top:  # each class keeps its own probability, not just the sorted set
        assert t["probability"] == pytest.approx(float(probabilities[t["index"]]), abs=1e-5)
