"""Turn a trained PyTorch model into files that other runtimes run: ONNX, INT8 ONNX, TorchScript.

The current path is ONNX through ``torch.export`` (the "dynamo" exporter). Every ONNX file the
course writes carries its own preprocessing facts in ONNX ``metadata_props`` (input size, colour
mode, mean/std, class names, opset), so deployment code reads them instead of hard-coding them:

>>> meta = ExportMetadata(input_shape=(1, 28, 28), class_names=CLASS_NAMES, color_mode="L",
...                       mean=(0.286,), std=(0.353,))                   # doctest: +SKIP
>>> export_onnx(model, "smallcnn.onnx", meta)                             # doctest: +SKIP
>>> read_metadata("smallcnn.onnx")["class_names"][:2]                    # doctest: +SKIP
['T-shirt/top', 'Trouser']

Then :func:`quantize_int8` makes a statically quantised (INT8) copy calibrated on real images,
and :mod:`cvhelpers.deploy.runtime` runs and times both. TorchScript (:func:`export_torchscript`) is the
legacy path: ``torch.jit.trace``/``script`` still work but are deprecated.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cvhelpers.models.freezing import eval_mode

__all__ = [
    "ExportMetadata", "export_onnx", "export_detector_onnx", "write_metadata", "read_metadata", "onnx_opset",
    "export_torchscript", "export_yolo_onnx", "ImageCalibrationReader", "quantize_int8",
    "cpu_has_vnni", "op_counts",
]

#: Keys every course ONNX file carries in ``metadata_props`` (values are JSON strings).
METADATA_KEYS = ("task", "input_name", "output_name", "input_shape", "color_mode", "resize",
                 "crop_pct", "mean", "std", "class_names", "opset", "layout", "dynamic_batch")


@dataclass
class ExportMetadata:
    """What deployment code needs to know to feed the model; stored in the ONNX file.

    The preprocessing it describes, for an image file: convert to ``color_mode`` (``"L"``
    grey or ``"RGB"``), resize to ``input_shape[1:]`` (``"stretch"``: straight to H x W;
    ``"shorter_side_crop"``: shorter side to ``size / crop_pct``, then a centre crop;
    ``"letterbox"``: longer side to the size, aspect kept, centred on grey 114 padding), scale
    pixels to [0, 1], subtract ``mean`` and divide by ``std`` per channel, lay out as
    ``1 x C x H x W`` float32.

    Attributes:
        input_shape: ``(C, H, W)`` of one image (the batch dimension is separate).
        class_names: one name per output class (detection/segmentation: their classes).
        color_mode: ``"L"`` (1 channel) or ``"RGB"`` (3 channels), in that channel order.
        mean, std: per-channel normalisation of the [0, 1] pixels (one value per channel).
        resize: ``"stretch"``, ``"shorter_side_crop"`` or ``"letterbox"``; crop_pct: the crop fraction.
        task: ``"classification"``, ``"segmentation"`` or ``"detection"``.
        input_name, output_name: the ONNX graph's input and output names.
        opset: ONNX opset of the file (filled in by :func:`export_onnx`).
        layout: always ``"NCHW"`` here; dynamic_batch: whether the batch size may vary.
        extra: any further string facts (e.g. the training accuracy).
    """

    input_shape: tuple[int, int, int]
    class_names: Sequence[str]
    color_mode: Literal["L", "RGB"] = "RGB"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: Literal["stretch", "shorter_side_crop", "letterbox"] = "stretch"
    crop_pct: float = 1.0
    task: Literal["classification", "segmentation", "detection"] = "classification"
    input_name: str = "image"
    output_name: str = "logits"
    opset: int | None = None
    layout: str = "NCHW"
    dynamic_batch: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        channels = self.input_shape[0]
        if self.color_mode not in ("L", "RGB") or channels != len(self.color_mode):
            raise ValueError(f"color_mode {self.color_mode!r} does not fit {channels} input "
                             "channels: use 'L' for 1 channel, 'RGB' for 3")
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in (1, channels):
                raise ValueError(f"{name} needs 1 or {channels} values, got {getattr(self, name)}")
        if self.resize not in ("stretch", "shorter_side_crop", "letterbox"):
            raise ValueError(f"resize must be 'stretch', 'shorter_side_crop' or 'letterbox', got {self.resize!r}")

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries: every field as a JSON string (``extra`` merged in)."""
        data = asdict(self)
        extra = data.pop("extra")
        props = {key: json.dumps(list(value) if isinstance(value, tuple) else value)
                 for key, value in data.items()}
        return {**props, **{str(k): str(v) for k, v in extra.items()}}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "ExportMetadata":
        """Rebuild from :meth:`to_props` output (unknown keys go into ``extra``)."""
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        values = {k: json.loads(v) for k, v in props.items() if k in known}
        for key in ("input_shape", "mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values, extra={k: v for k, v in props.items() if k not in known})


def write_metadata(path: str | Path, metadata: ExportMetadata | dict[str, str]) -> None:
    """Store ``metadata`` in the ONNX file's ``metadata_props`` (existing keys are replaced)."""
    import onnx

    props = metadata.to_props() if isinstance(metadata, ExportMetadata) else dict(metadata)
    model = onnx.load(str(path))
    kept = {p.key: p.value for p in model.metadata_props if p.key not in props}
    onnx.helper.set_model_props(model, {**kept, **props})
    onnx.save(model, str(path))


def read_metadata(path: str | Path, raw: bool = False) -> dict[str, Any]:
    """The ONNX file's ``metadata_props``, JSON values decoded (other values as plain strings).

    ``raw=True`` returns the stored strings undecoded. ONNX Runtime reads the same strings
    without the ``onnx`` package: ``InferenceSession(path).get_modelmeta().custom_metadata_map``.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {prop.key: prop.value for prop in model.metadata_props}
    if raw:
        return props
    decoded: dict[str, Any] = {}
    for key, value in props.items():
        try:
            decoded[key] = json.loads(value)
        except json.JSONDecodeError:
            decoded[key] = value
    return decoded


def onnx_opset(path: str | Path) -> int:
    """The default-domain (``ai.onnx``) opset version of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_onnx(
    model: nn.Module,
    path: str | Path,
    metadata: ExportMetadata,
    *,
    example_input: torch.Tensor | None = None,
    opset: int | None = None,
    output_names: Sequence[str] | None = None,
) -> Path:
    """Export ``model`` to a single ONNX file with the dynamo exporter, then add its metadata.

    ``torch.onnx.export(..., dynamo=True)`` first captures the graph with ``torch.export``
    (Python control flow is resolved, tensor shapes become symbols), then translates it to ONNX
    and optimises it. With ``metadata.dynamic_batch`` the batch dimension is a symbol
    (``dynamic_shapes``), so the file accepts any batch size; H and W stay fixed.

    Args:
        model: put in eval mode for the export (restored afterwards).
        path: the ``.onnx`` file; its folder is created. Weights are stored inside the file
            (``external_data=False``: one file to copy; fine below ONNX's 2 GB limit).
        metadata: see :class:`ExportMetadata`; ``opset`` is filled in from the written file.
        example_input: ``B x C x H x W`` float32; default ``torch.rand`` of batch 2 in
            ``metadata.input_shape`` (batch 2, not 1: a size-1 dimension would be treated as
            the constant 1 and could not become dynamic).
        opset: ONNX opset; ``None`` takes the exporter's default (20 with torch 2.14).
        output_names: default ``[metadata.output_name]``.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    if example_input is None:
        example_input = torch.rand(2, *metadata.input_shape, device=device)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if metadata.dynamic_batch else None
    with eval_mode(model):
        torch.onnx.export(
            model, (example_input,), str(path), dynamo=True, external_data=False,
            input_names=[metadata.input_name],
            output_names=list(output_names or [metadata.output_name]),
            dynamic_shapes=dynamic_shapes, opset_version=opset, verbose=False,
        )
    metadata.opset = onnx_opset(path)
    write_metadata(path, metadata)
    return path


def export_detector_onnx(model: nn.Module, path: str | Path, metadata: ExportMetadata,
                         output_names: Sequence[str] = ("boxes", "scores", "labels"),
                         opset: int = 17) -> Path:
    """Export a torchvision detector (with its NMS) to ONNX with the **legacy** TorchScript exporter.

    Why not the dynamo exporter: ``torch.export`` must prove every branch on tensor sizes, and
    torchvision's ``batched_nms`` branches on the number of boxes (it picks a loop or a
    coordinate trick above 4,000), a size known only at run time. The dynamo export fails with
    ``GuardOnDataDependentSymNode: Could not guard on data-dependent expression 4*u1 > 4000``
    (torch 2.14, torchvision 0.29, tried for this function). The legacy exporter
    (``dynamo=False``) traces one run and records NMS as the ONNX ``NonMaxSuppression`` op,
    which ONNX Runtime runs. Tracing freezes one input size, so the file takes exactly
    ``1 x C x H x W`` of ``metadata.input_shape`` (``metadata.dynamic_batch`` must be False).

    ``model`` maps ``1 x C x H x W`` pixels to the tensors named ``output_names``. Returns ``path``.
    """
    if metadata.dynamic_batch:
        raise ValueError("a traced detector takes one fixed-size image: set dynamic_batch=False")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    example = torch.rand(1, *metadata.input_shape, device=device)
    with eval_mode(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python ints in torchvision
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[metadata.input_name], output_names=list(output_names))
    metadata.output_name = output_names[0]
    metadata.opset = onnx_opset(path)
    write_metadata(path, metadata)
    return path


def export_torchscript(model: nn.Module, path: str | Path, example_input: torch.Tensor,
                       method: Literal["trace", "script"] = "trace") -> Path:
    """The legacy path: save a TorchScript file (``torch.jit.trace`` or ``torch.jit.script``).

    Tracing records the operations run on ``example_input`` (Python ``if``/loops are frozen at
    the branch taken); scripting compiles the Python source (a subset of Python). Both are
    deprecated in favour of ``torch.export``; they still work and emit a deprecation warning,
    which is let through so you see it. Load with ``torch.jit.load(path)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with eval_mode(model):
        with torch.no_grad():
            if method == "trace":
                scripted = torch.jit.trace(model, example_input)
            elif method == "script":
                scripted = torch.jit.script(model)
            else:
                raise ValueError(f"method must be 'trace' or 'script', got {method!r}")
        scripted.save(str(path))
    return path


def export_yolo_onnx(yolo: Any, path: str | Path, imgsz: int = 640) -> Path:
    """Export an ultralytics ``YOLO`` model with ultralytics' own ONNX exporter.

    ``simplify=False``: ultralytics would otherwise ``pip install onnxslim`` at run time (or,
    offline with ``YOLO_AUTOINSTALL=0``, warn and skip it). Batch 1, ``imgsz x imgsz``; the raw
    output is ``1 x (4 + classes) x anchors`` (``cx, cy, w, h`` in pixels, then class scores),
    before NMS. Ultralytics writes its own metadata (``names``, ``imgsz``, ``stride``...).

    Call :func:`cvhelpers.env.setup` before importing ultralytics.
    """
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    # A model built from a .yaml is written to the working directory: work in the target's.
    with contextlib.chdir(path.parent), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its TorchScript-based exporter
        written = Path(yolo.export(format="onnx", imgsz=imgsz, simplify=False, dynamic=False,
                                   half=False, verbose=False)).resolve()
    if written != path:
        shutil.move(written, path)
    return path


# --------------------------------------------------------------------------- INT8 quantisation
class ImageCalibrationReader:
    """Feeds ``quantize_static`` batches of real, preprocessed images for calibration.

    It has the methods of onnxruntime's ``CalibrationDataReader`` (``get_next``, ``rewind``,
    iteration) without subclassing it, so this module imports without onnxruntime.

    Calibration runs the float model on these inputs and records each tensor's value range;
    the ranges become the INT8 scales. Use images like those the model will see (here:
    training images, never the test set the accuracy is measured on).

    Args:
        images: float32 ``N x C x H x W``, preprocessed exactly as for the model.
        input_name: the ONNX input name.
        batch_size: images per calibration batch.
    """

    def __init__(self, images: np.ndarray, input_name: str = "image", batch_size: int = 64) -> None:
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.input_name, self.batch_size = input_name, batch_size
        self._batches: Iterator[dict[str, np.ndarray]] = self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.images), self.batch_size):
            yield {self.input_name: self.images[start:start + self.batch_size]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration_images: np.ndarray,
    *,
    per_channel: bool = True,
    quant_format: Literal["QDQ", "QOperator"] = "QDQ",
    op_types: Sequence[str] | None = None,
    reduce_range: bool | None = None,
) -> Path:
    """Static INT8 quantisation with ONNX Runtime, calibrated on real images.

    Steps: ``quant_pre_process`` (shape inference and graph clean-up, which the quantiser
    needs), then ``quantize_static`` with MinMax calibration: activations ``uint8``
    (asymmetric), weights ``int8`` (symmetric), the U8S8 pairing that x86 VNNI instructions
    run fastest. ``QDQ`` inserts QuantizeLinear/DequantizeLinear pairs around each quantised
    op and lets ONNX Runtime fuse them into integer kernels when it loads the model (the
    recommended format); ``QOperator`` writes the integer ops (``QLinearConv``...) directly.
    ``per_channel`` gives each output channel of a convolution its own weight scale, which
    keeps accuracy when channels have very different ranges.

    Args:
        fp32_path: the float ONNX file (e.g. from :func:`export_onnx`); its metadata is copied.
        int8_path: where the quantised file goes.
        calibration_images: float32 ``N x C x H x W`` preprocessed images (a few hundred to a
            few thousand are enough).
        op_types: which op types to quantise; ``None`` means all the quantiser supports.
        reduce_range: quantise weights to 7 bits instead of 8. x86 CPUs without VNNI
            instructions (AVX2 only) multiply uint8 by int8 with an instruction whose int16
            sums can saturate, so full-range weights can silently lose accuracy there (about
            2 points for the course's SmallCNN, while the same file computed exactly loses
            none); 7-bit weights cannot saturate. ``None``: True when *this* machine is an x86
            CPU without VNNI (see :func:`cpu_has_vnni`). What matters is the machine that runs
            the model: pass ``True`` when you deploy to such CPUs.

    Returns:
        ``int8_path`` as a ``Path``.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    prepared = int8_path.with_name(int8_path.stem + "_prep.onnx")
    quant_pre_process(str(fp32_path), str(prepared))
    props = read_metadata(fp32_path, raw=True)
    input_name = json.loads(props.get("input_name", '"image"'))
    reader = ImageCalibrationReader(calibration_images, input_name)
    if reduce_range is None:
        reduce_range = cpu_has_vnni() is False
    quantize_static(
        str(prepared), str(int8_path), reader,
        quant_format=QuantFormat.QDQ if quant_format == "QDQ" else QuantFormat.QOperator,
        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        op_types_to_quantize=list(op_types) if op_types else None, reduce_range=reduce_range,
    )
    prepared.unlink()
    note = (f"int8 static {quant_format}, per_channel={per_channel}, U8S8, MinMax calibration"
            + (", 7-bit weights (reduce_range)" if reduce_range else ""))
    write_metadata(int8_path, props | {"quantization": json.dumps(note)})
    return int8_path


def cpu_has_vnni(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether this x86 CPU has 8-bit dot-product instructions (AVX-512 VNNI or AVX-VNNI).

    ``None`` where it cannot tell (not Linux, or not an x86 CPU: ARM's integer kernels do not
    saturate the way AVX2's do).
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return None
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), None)
    if flags is None:
        return None
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def op_counts(path: str | Path) -> Counter:
    """How many nodes of each op type an ONNX file holds (e.g. to see what got quantised)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)
