"""How fast does a model train, and in how much memory: the speed ladder of notebook 08.

Each rung of the ladder adds one switch of :func:`cvhelpers.train.engine.fit` to the one before:
float32 -> TF32 -> mixed precision float16 or bfloat16 -> channels-last -> ``torch.compile``.
:func:`measure_ladder` trains a fresh copy of the model for a few steps per rung, on one
synthetic batch that already sits on the device (so only the model's speed is measured), and
reports images per second and peak memory. :func:`bare_training_loop` is the same work written
by hand, the reference that shows what the course loop costs on top.

Example::

    results = measure_ladder(lambda: torchvision.models.resnet50(), cpu_ladder(),
                             batch_size=16, image_size=128, steps=5)
    print(speed_table(results))

The input pipeline has its own probe, :func:`measure_loader_speed`: if a ``DataLoader`` alone
delivers fewer images per second than the model can train on, the data is the bottleneck.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvhelpers.env import pick_device
from cvhelpers.env import synchronize
from cvhelpers.train.engine import fit, tf32_mode

__all__ = [
    "SpeedMode", "SpeedResult", "gpu_ladder", "cpu_ladder", "SyntheticLoader", "PeakMemory",
    "synthetic_batch", "measure_fit_speed", "bare_training_loop", "measure_bare_speed",
    "measure_mode", "measure_ladder", "describe", "speed_table", "measure_loader_speed",
]


@dataclass(frozen=True)
class SpeedMode:
    """One rung of the ladder: the speed switches of :func:`cvhelpers.train.engine.fit`."""

    name: str
    amp_dtype: torch.dtype | None = None
    tf32: bool | None = None  # None: leave PyTorch's setting alone
    channels_last: bool = False
    compile_model: bool = False

    def fit_kwargs(self) -> dict[str, Any]:
        return {"amp_dtype": self.amp_dtype, "tf32": self.tf32,
                "channels_last": self.channels_last, "compile_model": self.compile_model}


def gpu_ladder(compile_model: bool = True) -> list[SpeedMode]:
    """fp32 -> TF32 -> AMP fp16 -> AMP bf16 -> + channels_last -> + torch.compile (NVIDIA GPUs).

    Every rung after the first keeps TF32 on, so float32 work left outside autocast (the
    optimizer step, the loss) also uses the tensor cores.
    """
    modes = [
        SpeedMode("fp32", tf32=False),
        SpeedMode("tf32", tf32=True),
        SpeedMode("amp_fp16", amp_dtype=torch.float16, tf32=True),
        SpeedMode("amp_bf16", amp_dtype=torch.bfloat16, tf32=True),
        SpeedMode("bf16_channels_last", amp_dtype=torch.bfloat16, tf32=True, channels_last=True),
    ]
    if compile_model:
        modes.append(SpeedMode("bf16_channels_last_compile", amp_dtype=torch.bfloat16,
                               tf32=True, channels_last=True, compile_model=True))
    return modes


def cpu_ladder(compile_model: bool = False) -> list[SpeedMode]:
    """fp32 -> AMP bf16 -> + channels_last (-> + torch.compile) on the CPU.

    No TF32 (a GPU feature) and no float16 (far slower than float32 on CPUs). Compiling costs
    a minute or more on a small CPU before the first step, hence off by default.
    """
    modes = [
        SpeedMode("fp32"),
        SpeedMode("amp_bf16", amp_dtype=torch.bfloat16),
        SpeedMode("bf16_channels_last", amp_dtype=torch.bfloat16, channels_last=True),
    ]
    if compile_model:
        modes.append(SpeedMode("bf16_channels_last_compile", amp_dtype=torch.bfloat16,
                               channels_last=True, compile_model=True))
    return modes


@dataclass
class SpeedResult:
    """Training speed of one mode: ``images_per_s`` over ``steps`` timed steps of ``batch_size``
    (the fastest of ``repeats`` such runs, in ``seconds``).

    ``peak_memory_mb`` is, on CUDA, the most memory tensors held during the timed steps
    (``torch.cuda.max_memory_allocated``); on the CPU (Linux), how far the process's resident
    memory rose above where it was before them; ``None`` where it cannot be measured.
    """

    mode: str
    loop: str  # "cvhelpers" (fit) or "bare" (bare_training_loop)
    device: str
    batch_size: int
    steps: int
    seconds: float
    images_per_s: float
    peak_memory_mb: float | None
    final_loss: float
    repeats: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def step_ms(self) -> float:
        return 1000.0 * self.seconds / self.steps

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "step_ms": self.step_ms}


class SyntheticLoader:
    """Yields the same ``(images, labels)`` batch ``steps`` times: a loader with no loading cost.

    Put the tensors on the training device first; ``fit`` then moves nothing. Random pixels are
    as fast to train on as real ones: speed depends on shapes and dtypes, not on values.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, steps: int) -> None:
        self.images, self.labels, self.steps = images, labels, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.steps):
            yield self.images, self.labels

    @property
    def num_images(self) -> int:
        return self.steps * len(self.labels)


def synthetic_batch(batch_size: int, image_size: int, num_classes: int = 1000,
                    channels: int = 3, device: str | torch.device = "cpu", seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``B x C x S x S`` float32 images in [0, 1) and ``B`` int64 labels, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, channels, image_size, image_size, generator=g)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g)
    return images.to(device), labels.to(device)


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))
    except (OSError, StopIteration):
        return None


class PeakMemory:
    """Peak memory inside a ``with`` block, in MB (``self.mb``; ``None`` if unmeasurable).

    CUDA: the allocator's peak of memory held by tensors (``torch.cuda.max_memory_allocated``,
    reset on entry), minus what was held on entry. CPU (Linux): the rise of the process's peak
    resident memory (``VmHWM``, reset on entry through ``/proc/self/clear_refs``) above the
    resident memory on entry, after freed memory has been handed back to the system. The CPU
    number includes buffers of oneDNN and the allocator, so it is a little larger than the
    tensors alone.
    """

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.mb: float | None = None
        self._start = 0.0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap pages back
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM (the peak) to the current resident size
                self._start = _proc_status_mb("VmRSS") or 0.0
            except OSError:
                self._start = -1.0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        elif sys.platform.startswith("linux") and self._start >= 0:
            peak = _proc_status_mb("VmHWM")
            self.mb = None if peak is None else max(0.0, peak - self._start)


def _images_per_epoch(loader: Any) -> int:
    if hasattr(loader, "num_images"):
        return int(loader.num_images)
    if getattr(loader, "drop_last", False):
        return len(loader) * int(loader.batch_size)
    return len(loader.dataset)


def measure_fit_speed(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
                      mode: SpeedMode = SpeedMode("fp32"), *, warmup_loader: Any | None = None,
                      device: str | torch.device = "auto", sync_every: int = 1,
                      loss_fn: Callable[..., torch.Tensor] | None = None,
                      repeats: int = 1) -> SpeedResult:
    """Time epochs of ``loader`` through :func:`cvhelpers.train.engine.fit` with ``mode``'s switches.

    Args:
        model, optimizer: trained in place.
        loader: a :class:`SyntheticLoader` or a ``DataLoader`` of ``(images, labels)``.
        warmup_loader: an untimed epoch first (memory allocation, cuDNN's algorithm search,
            compiling); the model keeps its compiled code and the optimizer its state.
        sync_every: passed to ``fit``.
        repeats: timed epochs; the fastest counts (timeit's rule: on a shared machine, noise
            only ever adds time).

    Returns:
        A :class:`SpeedResult` with ``loop="cvhelpers"``; the time is ``fit``'s own epoch time.
    """
    device = pick_device(str(device))
    kwargs = dict(optimizer=optimizer, device=device, monitor="train_loss",
                  restore_best=False, progress=False, sync_every=sync_every, **mode.fit_kwargs())
    if loss_fn is not None:
        kwargs["loss_fn"] = loss_fn
    if warmup_loader is not None:
        fit(model, warmup_loader, None, epochs=1, **kwargs)
    with PeakMemory(device) as memory:
        history = fit(model, loader, None, epochs=repeats, **kwargs)
    seconds = min(history.epoch_seconds)
    steps = len(loader)
    images = _images_per_epoch(loader)
    return SpeedResult(mode.name, "cvhelpers", str(device), images // steps, steps, seconds,
                       images / seconds, memory.mb, history.train_loss[-1], repeats)


def bare_training_loop(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       optimizer: torch.optim.Optimizer, steps: int,
                       amp_dtype: torch.dtype | None = None,
                       scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """The least a training step can do: forward, loss, backward, step. Returns the last loss.

    No loss checks, no metrics, no progress bar: the reference that the course loop is
    measured against. ``scaler`` is needed with ``amp_dtype=torch.float16`` (see notebook 08).
    """
    model.train()
    for _ in range(steps):
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
    return loss.detach()


def measure_bare_speed(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       optimizer: torch.optim.Optimizer, mode: SpeedMode, steps: int,
                       warmup_steps: int, repeats: int = 1) -> SpeedResult:
    """Time :func:`bare_training_loop` with ``mode``'s switches set by hand, like ``fit`` does
    (the fastest of ``repeats`` runs of ``steps`` steps)."""
    device = images.device
    if mode.channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    step_model = torch.compile(model) if mode.compile_model else model
    scaler = torch.amp.GradScaler(device.type) if mode.amp_dtype == torch.float16 else None
    with tf32_mode(mode.tf32):
        bare_training_loop(step_model, images, labels, optimizer, warmup_steps, mode.amp_dtype,
                           scaler)
        times = []
        with PeakMemory(device) as memory:
            for _ in range(repeats):
                synchronize(device)
                start = time.perf_counter()
                loss = bare_training_loop(step_model, images, labels, optimizer, steps,
                                          mode.amp_dtype, scaler)
                synchronize(device)
                times.append(time.perf_counter() - start)
    seconds = min(times)
    return SpeedResult(mode.name, "bare", str(device), len(labels), steps, seconds,
                       steps * len(labels) / seconds, memory.mb, float(loss), repeats)


def measure_mode(make_model: Callable[[], nn.Module], mode: SpeedMode, images: torch.Tensor,
                 labels: torch.Tensor, *, loop: str = "cvhelpers", steps: int = 20,
                 warmup_steps: int = 5, sync_every: int = 1, lr: float = 0.01,
                 repeats: int = 3) -> SpeedResult:
    """Train a fresh ``make_model()`` (SGD, momentum 0.9) on one batch for ``warmup_steps``
    untimed steps, then ``repeats`` times ``steps`` timed steps (the fastest run counts);
    ``loop`` is ``"cvhelpers"`` (``fit``) or ``"bare"``."""
    device = images.device
    torch.manual_seed(0)
    model = make_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    try:
        if loop == "bare":
            return measure_bare_speed(model, images, labels, optimizer, mode, steps, warmup_steps,
                                      repeats)
        if loop != "cvhelpers":
            raise ValueError(f"loop must be 'cvhelpers' or 'bare', got {loop!r}")
        return measure_fit_speed(model, SyntheticLoader(images, labels, steps), optimizer, mode,
                                 warmup_loader=SyntheticLoader(images, labels, warmup_steps),
                                 device=device, sync_every=sync_every, repeats=repeats)
    finally:  # free this mode's memory before the next one is measured
        del model, optimizer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def measure_ladder(make_model: Callable[[], nn.Module], modes: Sequence[SpeedMode], *,
                   batch_size: int, image_size: int, num_classes: int = 1000, steps: int = 20,
                   warmup_steps: int = 5, device: str | torch.device = "auto",
                   bare: Sequence[str] = (), sync_every: int = 1, lr: float = 0.01,
                   repeats: int = 3, log: Callable[[str], None] | None = print
                   ) -> list[SpeedResult]:
    """Measure every mode with :func:`measure_mode` on one synthetic batch.

    Args:
        make_model: builds the model (float32, on the CPU); called once per measurement.
        modes: the rungs, e.g. :func:`gpu_ladder` or :func:`cpu_ladder`.
        batch_size, image_size, num_classes: the synthetic batch
            (``batch_size x 3 x image_size x image_size``), created once on ``device``.
        steps, warmup_steps: timed and untimed training steps per mode.
        repeats: timed runs of ``steps`` steps per mode; the fastest counts.
        bare: names of modes to time also with :func:`bare_training_loop`.
        sync_every: passed to ``fit``.
        lr: SGD learning rate.
        log: called with one line per measurement (``None``: quiet).

    Returns:
        One :class:`SpeedResult` per mode (``loop="cvhelpers"``), then one per ``bare`` mode.
    """
    device = pick_device(str(device))
    images, labels = synthetic_batch(batch_size, image_size, num_classes, device=device)
    runs = [(mode, "cvhelpers") for mode in modes]
    runs += [(mode, "bare") for mode in modes if mode.name in bare]
    results = []
    for mode, loop in runs:
        result = measure_mode(make_model, mode, images, labels, loop=loop, steps=steps,
                              warmup_steps=warmup_steps, sync_every=sync_every, lr=lr,
                              repeats=repeats)
        results.append(result)
        if log is not None:
            log(describe(result))
    return results


def describe(result: SpeedResult) -> str:
    """One line: mode, loop, images per second, milliseconds per step, peak memory."""
    memory = "n/a" if result.peak_memory_mb is None else f"{result.peak_memory_mb:.0f} MB"
    return (f"{result.mode:<28} {result.loop:<9} {result.images_per_s:9.1f} img/s  "
            f"{result.step_ms:8.1f} ms/step  peak {memory}")


def speed_table(results: Sequence[SpeedResult], baseline: str | None = None) -> str:
    """A Markdown table of ``results``; speed-ups are relative to mode ``baseline`` (default:
    the first result's mode) in the same loop."""
    baseline = baseline or results[0].mode
    reference = {r.loop: r.images_per_s for r in results if r.mode == baseline}
    lines = ["| mode | loop | img/s | ms/step | speed-up | peak memory (MB) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        ref = reference.get(r.loop, reference.get("cvhelpers"))
        speedup = f"{r.images_per_s / ref:.2f}x" if ref else "-"
        memory = "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"
        lines.append(f"| {r.mode} | {r.loop} | {r.images_per_s:.1f} | {r.step_ms:.1f} | "
                     f"{speedup} | {memory} |")
    return "\n".join(lines)


def measure_loader_speed(loader: Any, max_batches: int | None = None,
                         epochs: int = 1) -> dict[str, float]:
    """How fast ``loader`` alone delivers batches (nothing trains): is the data the bottleneck?

    Returns:
        ``images_per_s`` (over all batches read, first ones included), ``first_batch_s`` (time
        to the first batch of the last epoch: worker start-up shows here, and
        ``persistent_workers=True`` removes it after the first epoch), ``seconds``, ``images``.
    """
    images, first_batch_s = 0, 0.0
    start = time.perf_counter()
    for _ in range(epochs):
        epoch_start = time.perf_counter()
        for i, batch in enumerate(loader):
            if i == 0:
                first_batch_s = time.perf_counter() - epoch_start
            first = batch[0] if isinstance(batch, (list, tuple)) else batch
            images += len(first)
            if max_batches is not None and i + 1 >= max_batches:
                break
    seconds = time.perf_counter() - start
    return {"images_per_s": images / seconds, "first_batch_s": first_batch_s,
            "seconds": seconds, "images": float(images)}
