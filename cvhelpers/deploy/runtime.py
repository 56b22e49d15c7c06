"""Run exported models with ONNX Runtime, check them against PyTorch, and time every runtime.

>>> session = ort_session("smallcnn.onnx")                                  # doctest: +SKIP
>>> logits = run_session(session, images)              # N x 10 float32   # doctest: +SKIP
>>> compare_with_pytorch(model, session, images).max_abs_diff              # doctest: +SKIP
2.9e-06
>>> rows = compare_latency({"pytorch eager": model, "onnxruntime fp32": ort_runner(session)},
...                        lambda b: torch.rand(b, 1, 28, 28))              # doctest: +SKIP
>>> print(latency_markdown(rows))                                          # doctest: +SKIP

The deployment recipe that needs nothing but onnxruntime, numpy and pillow is the script
``deploy/predict_onnx.py``; this module is the course-side tooling around it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvhelpers.evaluation.bench import LatencyResult, measure_latency
from cvhelpers.env import usable_cores
from cvhelpers.models.freezing import eval_mode

__all__ = [
    "ort_session", "run_session", "ort_runner", "ParityReport", "compare_with_pytorch",
    "session_accuracy", "compare_latency", "latency_markdown", "latency_lookup",
]


def ort_session(path: str | Path, threads: int | None = None, *,
                optimized_model_path: str | Path | None = None,
                providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    """An ONNX Runtime session with explicit, comparable settings.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (one operator split over cores); default: every usable core,
            as :func:`cvhelpers.env.setup` gives torch, so the two are compared fairly.
        optimized_model_path: also write the graph ORT actually runs after its optimisations
            (fused Conv+ReLU, QDQ pairs folded into integer kernels...) to this file.
        providers: execution providers in order of preference, e.g.
            ``("CUDAExecutionProvider", "CPUExecutionProvider")`` with onnxruntime-gpu.

    Graph optimisation is ``ORT_ENABLE_ALL`` and execution sequential (one op at a time: the
    right choice for a chain-shaped CNN; parallel execution helps only branchy graphs).
    """
    import onnxruntime as ort  # optional: the export extra

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
        # ORT then warns that the saved graph is tuned to this CPU (NCHWc layout): we know.
        options.log_severity_level = 3
    available = ort.get_available_providers()
    chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=options, providers=chosen)


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    # .numpy() on a contiguous CPU float32 tensor shares memory: no copy is timed.
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(array, dtype=np.float32)


def run_session(session: Any, inputs: np.ndarray | torch.Tensor,
                batch_size: int = 256, output_index: int = 0) -> np.ndarray:
    """Run a single-input session over ``inputs`` (``N x ...`` float32) in batches.

    Returns:
        Output number ``output_index`` for all ``N`` inputs, concatenated (float32 numpy).
    """
    name = session.get_inputs()[0].name
    array = _as_numpy(inputs)
    outputs = [session.run(None, {name: array[i:i + batch_size]})[output_index]
               for i in range(0, len(array), batch_size)]
    return np.concatenate(outputs)


def ort_runner(session: Any) -> Callable[[torch.Tensor], list[np.ndarray]]:
    """A callable ``f(tensor) -> outputs`` around a session, to time it with
    :func:`cvhelpers.evaluation.bench.measure_latency` on the same tensor inputs as a PyTorch model."""
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> list[np.ndarray]:
        return session.run(None, {name: _as_numpy(x)})

    return run


@dataclass
class ParityReport:
    """How far an exported model's outputs are from PyTorch's on the same inputs.

    ``top1_agreement`` is the share of inputs with the same argmax over dim 1 (classes, or per
    pixel for segmentation); ``None`` when not meaningful.
    """

    max_abs_diff: float
    mean_abs_diff: float
    max_reference: float  # the largest |output|: puts the differences in proportion
    top1_agreement: float | None
    n: int


def _first_tensor(output: Any) -> torch.Tensor:
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output


def compare_with_pytorch(model: nn.Module, session: Any,
                         inputs: torch.Tensor, batch_size: int = 64,
                         argmax: bool = True) -> ParityReport:
    """Run ``model`` (eval mode, CPU, fp32) and ``session`` on the same ``inputs``; compare.

    Args:
        model: a PyTorch module; a tuple/list output (e.g. YOLO's ``(preds, extras)``) is
            compared by its first tensor, which must be what the ONNX file outputs first.
        inputs: ``N x C x H x W`` float32, real images preprocessed for the model.
        argmax: also report top-1 agreement over dim 1.
    """
    references = []
    with eval_mode(model), torch.inference_mode():
        for i in range(0, len(inputs), batch_size):
            references.append(_first_tensor(model(inputs[i:i + batch_size])).float().cpu().numpy())
    reference = np.concatenate(references)
    exported = run_session(session, inputs, batch_size)
    if exported.shape != reference.shape:
        raise ValueError(f"output shapes differ: ONNX {exported.shape} vs PyTorch {reference.shape}")
    diff = np.abs(exported.astype(np.float64) - reference)
    agreement = float((exported.argmax(1) == reference.argmax(1)).mean()) if argmax else None
    return ParityReport(float(diff.max()), float(diff.mean()), float(np.abs(reference).max()),
                        agreement, len(reference))


def session_accuracy(session: Any, inputs: np.ndarray | torch.Tensor,
                     labels: np.ndarray | torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of a classifier session on preprocessed ``inputs`` and int ``labels``."""
    logits = run_session(session, inputs, batch_size)
    return float((logits.argmax(1) == np.asarray(labels)).mean())


def compare_latency(
    runtimes: Mapping[str, Callable[[torch.Tensor], Any]],
    make_input: Callable[[int], torch.Tensor],
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 10,
    iters: int = 100,
    repeats: int = 3,
) -> list[dict[str, Any]]:
    """Time several runtimes on the same inputs, in one run, fairly on a noisy machine.

    Each (runtime, batch size) is measured ``repeats`` times with
    :func:`cvhelpers.evaluation.bench.measure_latency` (``warmup`` untimed calls, then ``iters`` timed
    ones), interleaved round-robin so that a burst of load from another process hits all
    runtimes alike; the repeat with the median p50 is reported.

    Args:
        runtimes: name -> callable taking a ``B x C x H x W`` tensor (a module, a compiled
            module, :func:`ort_runner`...). The first entry is the baseline for ``vs_first``.
        make_input: batch size -> input tensor (the same tensor is given to every runtime).

    Returns:
        One dict per (runtime, batch): ``runtime``, ``batch_size``, ``p50_ms``, ``p95_ms``,
        ``mean_ms``, ``throughput`` (images/s), ``threads``, ``vs_first`` (p50 / baseline p50).
    """
    results: dict[tuple[str, int], list[LatencyResult]] = {}
    for batch_size in batch_sizes:
        x = make_input(batch_size)
        for _ in range(repeats):
            for name, runtime in runtimes.items():
                result = measure_latency(runtime, x, warmup=warmup, iters=iters)
                results.setdefault((name, batch_size), []).append(result)
    rows = []
    for (name, batch_size), measured in results.items():
        median_p50 = statistics.median_low([r.p50_ms for r in measured])
        chosen = next(r for r in measured if r.p50_ms == median_p50)
        rows.append({"runtime": name, "batch_size": batch_size, "p50_ms": chosen.p50_ms,
                     "p95_ms": chosen.p95_ms, "mean_ms": chosen.mean_ms,
                     "throughput": chosen.throughput, "threads": chosen.num_threads,
                     "repeats_p50_ms": [r.p50_ms for r in measured]})
    first = next(iter(runtimes))
    for row in rows:
        row["vs_first"] = row["p50_ms"] / latency_lookup(rows, first, row["batch_size"])["p50_ms"]
    return rows


def latency_lookup(rows: Sequence[dict[str, Any]], runtime: str, batch_size: int) -> dict[str, Any]:
    """The row of :func:`compare_latency` for ``runtime`` at ``batch_size``."""
    for row in rows:
        if row["runtime"] == runtime and row["batch_size"] == batch_size:
            return row
    raise KeyError(f"no latency row for {runtime!r} at batch {batch_size}")


def latency_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`compare_latency` rows (``vs first`` = p50 / first runtime's)."""
    lines = ["| runtime | batch | p50 ms | p95 ms | images/s (mean) | p50 vs first |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['runtime']} | {r['batch_size']} | {r['p50_ms']:.3f} | "
                     f"{r['p95_ms']:.3f} | {r['throughput']:,.0f} | {r['vs_first']:.2f}x |")
    return "\n".join(lines)
