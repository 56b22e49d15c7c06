"""Edge formats that run: LiteRT (TFLite), ExecuTorch and Core ML, from the course's own tool venv.

The converters cannot join the course venv: ``litert-torch`` needs ``typing-extensions<4.13``
(through ``xdsl``), the course pins 4.16.0. So ``make edge`` builds a second venv from
``requirements-edge.txt`` + ``constraints-edge.txt`` (the same torch 2.14.1; ``litert-torch``
0.10.0, ``ai-edge-litert`` 2.3.0, ``executorch`` 1.5.1, ``coremltools`` 9.0), and this module is
used from both sides:

- in the course venv, :func:`run_edge_tool` saves nothing itself: it calls the tool venv's Python
  on ``python -m cvhelpers.deploy.edge`` with a state dict, the inputs and the calibration
  images, and reads back ``report.json`` and each format's outputs;
- in the tool venv, :func:`main` converts (fp32 and INT8 for LiteRT and ExecuTorch, fp32 for
  Core ML), loads each file through the guarded loaders below, runs it on every input one image
  at a time, and times batch-1 calls.

The loaders reject a bad file with :class:`EdgeModelError` naming the file and the problem. They
check the format's magic bytes first: ExecuTorch's Python runtime aborts the whole process on
some corrupt files (random bytes; a valid header with garbage after it segfaults unless
``Verification.InternalConsistency`` is asked for), which no ``try`` can catch.

Core ML models run only on macOS / iOS; on Linux the package is converted and its inputs,
outputs and metadata are read back from the saved ``.mlpackage``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EDGE_PYTHON_ENV", "EdgeModelError", "EdgeToolMissing", "TFLITE_MAGIC", "PTE_MAGIC", "edge_python",
           "load_tflite", "load_pte", "run_edge_tool", "main"]

#: The environment variable naming the tool venv's Python (``make`` sets it).
EDGE_PYTHON_ENV = "CVC_EDGE_PYTHON"
#: FlatBuffers file identifiers at bytes 4-8 of each format.
TFLITE_MAGIC = b"TFL3"
PTE_MAGIC = b"ET12"


class EdgeModelError(ValueError):
    """An edge model file is missing, of another format, or corrupt; the message starts with its path."""


class EdgeToolMissing(RuntimeError):
    """The edge tool venv is not built (``make edge``)."""


def edge_python() -> Path:
    """The tool venv's Python: ``$CVC_EDGE_PYTHON``, else ``<project>/.venv-edge/bin/python``.

    Raises:
        EdgeToolMissing: neither exists (build it with ``make edge``).
    """
    named = os.environ.get(EDGE_PYTHON_ENV)
    candidates = [Path(named)] if named else []
    candidates.append(Path(__file__).resolve().parents[2] / ".venv-edge" / "bin" / "python")
    for path in candidates:
        if path.is_file():
            return path
    raise EdgeToolMissing(f"the edge tool venv is not built: `make edge` builds it (looked for "
                          f"{', '.join(map(str, candidates))}; ${EDGE_PYTHON_ENV} names another)")


def _check_magic(path: str | Path, magic: bytes, what: str, article: str = "a") -> Path:
    path = Path(path)
    if not path.is_file():
        raise EdgeModelError(f"{path}: {what} file not found")
    head = path.read_bytes()[:8]
    if len(head) < 8 or head[4:8] != magic:
        raise EdgeModelError(f"{path}: not {article} {what} file (bytes 4-8 are {head[4:8]!r}, {article} {what} file has "
                             f"{magic!r}); is it another format, truncated, or not a model at all?")
    return path


# --- loaders and runners (tool venv) ------------------------------------------------------------

def load_tflite(path: str | Path, num_threads: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    """A LiteRT interpreter for ``path`` as a function ``float32 input -> float32 output``.

    INT8 models with integer inputs and outputs get their input quantised and their output
    dequantised with the scales stored in the file.

    Raises:
        EdgeModelError: missing file, not a TFLite flatbuffer, or one LiteRT cannot load.
    """
    from ai_edge_litert.interpreter import Interpreter

    path = _check_magic(path, TFLITE_MAGIC, "LiteRT/TFLite")
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise EdgeModelError(f"{path}: LiteRT cannot load it ({err})") from err
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.array(y, np.float32)

    run.input_dtype = np.dtype(inp["dtype"]).name  # type: ignore[attr-defined]
    return run


def load_pte(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """An ExecuTorch program's ``forward`` as a function ``float32 input -> float32 output``.

    The magic bytes are checked first and the program is loaded with
    ``Verification.InternalConsistency``: without either, a corrupt file crashes the process.

    Raises:
        EdgeModelError: missing file, not a ``.pte`` program, or one ExecuTorch refuses.
    """
    import torch
    from executorch.runtime import Runtime, Verification

    path = _check_magic(path, PTE_MAGIC, "ExecuTorch .pte", article="an")
    try:
        program = Runtime.get().load_program(str(path), verification=Verification.InternalConsistency)
        method = program.load_method("forward")
    except RuntimeError as err:
        raise EdgeModelError(f"{path}: ExecuTorch cannot load it ({err})") from err

    def run(x: np.ndarray) -> np.ndarray:
        return method.execute([torch.from_numpy(np.ascontiguousarray(x, np.float32))])[0].numpy().copy()

    return run


# --- converters (tool venv) ---------------------------------------------------------------------

def convert_tflite(model: Any, example: Any, path: Path, calibration: Sequence[Any] | None = None) -> Path:
    """``litert_torch.convert``; with ``calibration``, static INT8 (PT2E, per-channel weights)."""
    import litert_torch
    import torch

    if calibration is None:
        edge = litert_torch.convert(model.eval(), (example,))
    else:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
        prepared = prepare_pt2e(torch.export.export(model.eval(), (example,)).module(), quantizer)
        with torch.no_grad():
            for batch in calibration:
                prepared(batch)
        quantized = convert_pt2e(prepared, fold_quantize=False)
        edge = litert_torch.convert(quantized, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    edge.export(str(path))
    return path


def convert_pte(model: Any, example: Any, path: Path, calibration: Sequence[Any] | None = None) -> Path:
    """``torch.export`` -> ``to_edge_transform_and_lower`` (XNNPACK) -> ``.pte``; with
    ``calibration``, static INT8 with the XNNPACK quantizer first."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    graph = model.eval()
    if calibration is not None:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                             get_symmetric_quantization_config)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        graph = prepare_pt2e(torch.export.export(graph, (example,)).module(), quantizer)
        with torch.no_grad():
            for batch in calibration:
                graph(batch)
        graph = convert_pt2e(graph)
    program = to_edge_transform_and_lower(torch.export.export(graph, (example,)),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(program.buffer)
    return path


def convert_coreml(model: Any, example: Any, path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """``coremltools.convert`` from ``torch.export`` to an ML program, metadata attached; returns
    the saved package's inputs, outputs and metadata as read back from disk."""
    import coremltools as ct
    import torch

    exported = torch.export.export(model.eval(), (example,)).run_decompositions({})
    mlmodel = ct.convert(exported, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17)
    mlmodel.user_defined_metadata.update(metadata)
    mlmodel.save(str(path))
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()  # prediction needs macOS
    shape = lambda f: list(f.type.multiArrayType.shape)  # noqa: E731
    return {"input_shapes": {f.name: shape(f) for f in spec.description.input},
            "output_shapes": {f.name: shape(f) for f in spec.description.output},
            "metadata": dict(spec.description.metadata.userDefined)}


def _p50_ms(fn: Callable[[], Any], iters: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def main(argv: Sequence[str] | None = None) -> int:
    """The tool-venv side (``python -m cvhelpers.deploy.edge``): convert, load, run, time, report."""
    parser = argparse.ArgumentParser(description="convert a SmallCNN to the edge formats and run them")
    parser.add_argument("--state-dict", type=Path, required=True)
    parser.add_argument("--inputs", type=Path, required=True, help="float32 N x C x H x W .npy")
    parser.add_argument("--calibration", type=Path, required=True, help="float32 M x C x H x W .npy")
    parser.add_argument("--metadata", type=Path, required=True, help="a JSON object of string facts")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--latency-iters", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from cvhelpers.models.cnn import SmallCNN

    torch.set_num_threads(args.threads)
    model = SmallCNN()
    model.load_state_dict(torch.load(args.state_dict, map_location="cpu", weights_only=True))
    model.eval()
    inputs = np.load(args.inputs).astype(np.float32)
    calibration = [torch.from_numpy(c[None]) for c in np.load(args.calibration).astype(np.float32)]
    example = torch.from_numpy(inputs[:1])
    args.out.mkdir(parents=True, exist_ok=True)
    versions = {}
    for dist in ("torch", "litert-torch", "ai-edge-litert", "executorch", "coremltools"):
        from importlib import metadata as md

        versions[dist] = md.version(dist)
    report: dict[str, Any] = {"versions": versions, "formats": {}}
    with torch.no_grad():
        eager = np.concatenate([model(torch.from_numpy(x[None])).numpy() for x in inputs])
        report["eager_p50_ms"] = _p50_ms(lambda: model(example), args.latency_iters)
    np.save(args.out / "eager.npy", eager)
    jobs = [("litert_fp32", "model_fp32.tflite", convert_tflite, load_tflite, False),
            ("litert_int8", "model_int8.tflite", convert_tflite, load_tflite, True),
            ("executorch_fp32", "model_fp32.pte", convert_pte, load_pte, False),
            ("executorch_int8", "model_int8.pte", convert_pte, load_pte, True)]
    for name, file_name, convert, load, int8 in jobs:
        entry: dict[str, Any] = {"file": file_name}
        try:
            start = time.perf_counter()
            convert(model, example, args.out / file_name, calibration if int8 else None)
            entry["convert_s"] = time.perf_counter() - start
            run = load(args.out / file_name) if load is load_pte else load(args.out / file_name, args.threads)
            outputs = np.concatenate([run(x[None]) for x in inputs])
            np.save(args.out / f"{name}.npy", outputs)
            one = inputs[:1]
            if hasattr(run, "input_dtype"):
                entry["input_dtype"] = run.input_dtype
            entry.update(ran=True, size_bytes=_bytes(args.out / file_name), p50_ms=_p50_ms(lambda: run(one), args.latency_iters))
        except Exception as err:  # noqa: BLE001 (reported, and the lesson shows it)
            entry.update(ran=False, error=f"{type(err).__name__}: {err}"[:500])
        report["formats"][name] = entry
        print(name, {k: v for k, v in entry.items() if k != "file"}, flush=True)
    entry = {"file": "model.mlpackage", "ran": False, "note": "Core ML runs on macOS / iOS only: converted and inspected"}
    try:
        entry.update(convert_coreml(model, example, args.out / "model.mlpackage", json.loads(args.metadata.read_text())))
        entry["size_bytes"] = _bytes(args.out / "model.mlpackage")
    except Exception as err:  # noqa: BLE001
        entry["error"] = f"{type(err).__name__}: {err}"[:500]
    report["formats"]["coreml"] = entry
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    return 0


# --- the course-venv side -----------------------------------------------------------------------

def run_edge_tool(state_dict: str | Path, inputs: np.ndarray, calibration: np.ndarray, metadata: dict[str, str],
                  out: str | Path, latency_iters: int = 50, timeout_s: float = 900) -> dict[str, Any]:
    """Run :func:`main` in the tool venv; returns its report with each format's ``outputs`` loaded.

    Raises:
        EdgeToolMissing: the tool venv is not built.
        RuntimeError: the tool process failed (its last output lines are in the message).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "inputs.npy", np.asarray(inputs, np.float32))
    np.save(out / "calibration.npy", np.asarray(calibration, np.float32))
    (out / "metadata.json").write_text(json.dumps(metadata))
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [str(edge_python()), "-m", "cvhelpers.deploy.edge", "--state-dict", str(state_dict),
               "--inputs", str(out / "inputs.npy"), "--calibration", str(out / "calibration.npy"),
               "--metadata", str(out / "metadata.json"), "--out", str(out), "--latency-iters", str(latency_iters)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"the edge tool failed (exit {done.returncode}):\n{tail}")
    report = json.loads((out / "report.json").read_text())
    report["eager"] = np.load(out / "eager.npy")
    for name, entry in report["formats"].items():
        if entry.get("ran"):
            entry["outputs"] = np.load(out / f"{name}.npy")
    return report


if __name__ == "__main__":
    raise SystemExit(main())
