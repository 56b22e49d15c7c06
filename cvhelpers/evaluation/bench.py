"""How big and how fast is a model: parameters, FLOPs and latency percentiles.

>>> from cvhelpers.evaluation.bench import count_parameters, count_flops, measure_latency
>>> count_parameters(model)                                   # doctest: +SKIP
4652008
>>> count_flops(model, (1, 3, 224, 224)) / 1e9                # GFLOPs   # doctest: +SKIP
0.78
>>> measure_latency(model, torch.randn(8, 3, 224, 224)).p50_ms  # doctest: +SKIP

Latency on a shared machine is noisy: look at p50 (typical) and p95/p99 (the slow tail), say how
many threads torch used, and compare numbers only when measured on the same machine and device.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from cvhelpers.env import synchronize
from cvhelpers.models.freezing import eval_mode
from cvhelpers.train.steps import move_to_device


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once).

    Args:
        trainable_only: count only parameters with ``requires_grad=True``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """:func:`cvhelpers.models.freezing.eval_mode` for modules; plain callables run as they are."""
    with eval_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext():
        yield


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on a zero input of ``input_shape`` (e.g. ``(1, 3, 224, 224)``).

    Counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts the matrix
    multiplications and convolutions: one multiply-add = 2 FLOPs, so a ``Linear(in, out)`` on a
    batch of ``B`` is ``2 * B * in * out``. Bias adds, activations, BatchNorm and pooling are not
    counted (they are small next to the convolutions). Papers that quote "FLOPs" often mean
    multiply-adds (MACs): divide by 2 to compare.

    Returns:
        Total FLOPs for the whole batch in ``input_shape`` (an ``int``).
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(*input_shape, device=_device_of(model))
    counter = FlopCounterMode(display=False)
    with _eval_mode(model), torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


@dataclass
class LatencyResult:
    """Timings of ``iters`` calls after ``warmup`` calls; times in milliseconds per call."""

    device: str
    batch_size: int
    num_threads: int
    warmup: int
    iters: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput: float  # items per second: batch_size / mean time per call
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; the raw per-call samples only when asked for."""
        result = asdict(self)
        if not include_samples:
            result.pop("samples_ms")
        return result


def _batch_size(example_input: Any) -> int:
    """Items per call: a tensor's first dimension, a list's length; a tuple's first argument's."""
    if isinstance(example_input, tuple) and example_input:
        example_input = example_input[0]
    if isinstance(example_input, list):
        return len(example_input)
    if isinstance(example_input, torch.Tensor) and example_input.ndim > 0:
        return int(example_input.shape[0])
    return 1


def _input_device(example_input: Any) -> torch.device:
    while isinstance(example_input, (tuple, list)) and example_input:
        example_input = example_input[0]
    return example_input.device if isinstance(example_input, torch.Tensor) else torch.device("cpu")


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_latency(
    fn_or_model: Callable[..., Any],
    example_input: Any,
    warmup: int = 5,
    iters: int = 30,
    device: str | torch.device | None = None,
    num_threads: int | None = None,
) -> LatencyResult:
    """Time ``fn_or_model(example_input)`` call by call, under ``torch.inference_mode``.

    Args:
        fn_or_model: an ``nn.Module`` (run in eval mode, then put back) or any callable.
        example_input: one argument (a ``B x ...`` tensor, or a list of ``B`` images as
            torchvision detectors take), or a tuple of arguments. ``B`` (of the first argument)
            is the batch size used for the throughput.
        warmup: untimed calls first (allocations, cuDNN autotuning, lazy initialisation).
        iters: timed calls; p99 needs about 100 to mean much.
        device: where to run; the input and a module are moved there. Default: the module's
            device (for a callable, the input's).
        num_threads: torch CPU threads while timing (restored afterwards); default unchanged.

    Returns:
        A :class:`LatencyResult` with per-call milliseconds and items per second.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    if device is not None:
        device = torch.device(device)
        if isinstance(fn_or_model, nn.Module):
            fn_or_model.to(device)
    elif isinstance(fn_or_model, nn.Module):
        device = _device_of(fn_or_model)
    else:
        device = _input_device(example_input)
    inputs = move_to_device(example_input, device)
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    samples = []
    with _torch_threads(num_threads), _eval_mode(fn_or_model), torch.inference_mode():
        threads = torch.get_num_threads()
        for _ in range(warmup):
            fn_or_model(*args)
        for _ in range(iters):
            synchronize(device)  # time the work, not the launch of GPU kernels
            start = time.perf_counter()
            fn_or_model(*args)
            synchronize(device)  # time the work, not the launch of GPU kernels
            samples.append((time.perf_counter() - start) * 1000.0)
    return _summarise(samples, str(device), _batch_size(example_input), threads, warmup)


def _summarise(samples_ms: list[float], device: str, batch_size: int, threads: int,
               warmup: int) -> LatencyResult:
    times = np.asarray(samples_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    mean = float(times.mean())
    return LatencyResult(
        device=device, batch_size=batch_size, num_threads=threads, warmup=warmup,
        iters=len(samples_ms), mean_ms=mean, std_ms=float(times.std()), min_ms=float(times.min()),
        p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99),
        throughput=batch_size / (mean / 1000.0) if mean > 0 else float("inf"),
        samples_ms=list(samples_ms),
    )


def latency_vs_batch(
    model: Callable[..., Any],
    make_input: Callable[[int], Any],
    batch_sizes: Sequence[int],
    **measure_kwargs: Any,
) -> list[LatencyResult]:
    """Latency and throughput for each batch size: where does batching stop paying off?

    Args:
        model: module or callable, as for :func:`measure_latency`.
        make_input: ``batch_size -> example input``, e.g. ``lambda b: torch.randn(b, 3, 224, 224)``.
        batch_sizes: e.g. ``(1, 2, 4, 8)``.
        **measure_kwargs: ``warmup``, ``iters``, ``device``, ``num_threads``.

    Returns:
        One :class:`LatencyResult` per batch size, in the order given.
    """
    return [measure_latency(model, make_input(b), **measure_kwargs) for b in batch_sizes]
