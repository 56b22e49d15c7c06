"""The course's one training engine: :func:`fit`.

Every training in the course goes through :func:`fit`: classification, detection (torchvision
detectors' loss dicts) and segmentation. What differs between tasks is small and passed in:

* ``step_fn``: how one batch becomes a loss (:mod:`cvhelpers.train.steps`;
  :func:`cvhelpers.detection.steps.detection_step` for detectors);
* ``validator``: the task's own metric on the validation data, which early stopping and the
  best checkpoint can follow (loss and accuracy by default;
  :class:`cvhelpers.detection.steps.DetectionValidator` gives COCO mAP,
  :class:`cvhelpers.segmentation.steps.SegmentationValidator` gives mIoU).

Example::

    seed_everything(0)
    train_loader = make_loader(train_set, batch_size=128, shuffle=True, seed=0)
    val_loader = make_loader(val_set, batch_size=256, shuffle=False)
    model = SmallCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = fit(model, train_loader, val_loader, epochs=5, optimizer=optimizer,
                  checkpoint_path="runs/fmnist/best.pt")
    print(history.val_accuracy[history.best_epoch - 1])

**How much to train.** ``epochs``, ``max_steps`` (optimizer steps) and ``time_budget_s``: the
run ends at the first limit reached. Fixed work (epochs or steps) gives the same weights on any
machine, so the lessons use it and report the time it took; a time budget gives a faster machine
more steps. ``lr_schedule`` (e.g. :func:`cvhelpers.train.schedules.warmup_cosine`) shapes the
learning rate over the run's *progress*, the largest fraction used of any limit, so it ends
when the run does; a torch ``scheduler`` works too.

**Reproducible and resumable.** Call :func:`cvhelpers.data.loading.seed_everything` before
building the model and shuffle with :func:`cvhelpers.data.loading.make_loader`. With
``checkpoint_path`` set, ``fit`` saves ``<name>_last.pt`` after every epoch holding the model,
optimizer, scheduler, RNG states and the loader's generator; ``fit(..., resume_from=that_file)``
continues so that, on CPU, the final weights equal an uninterrupted run's bit for bit. (On a
GPU some kernels are not deterministic; see ``torch.use_deterministic_algorithms``.)

Speed switches (notebook 08): ``amp_dtype`` (mixed precision), ``tf32``, ``channels_last``,
``compile_model`` and ``sync_every``. Several processes (notebook 11): pass a model wrapped by
:func:`cvhelpers.train.distributed.wrap_model` and a loader from
:func:`cvhelpers.train.distributed.make_distributed_loader`, and start the script with
``torchrun``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader

from cvhelpers.env import pick_device
from cvhelpers.train.checkpoint import load_checkpoint, save_checkpoint
from cvhelpers.train.distributed import (barrier, broadcast_object, is_ddp, is_main_process, unwrap_model)
from cvhelpers.train.evaluate import evaluate
from cvhelpers.train.loop import Budget, EpochLoop
from cvhelpers.train.steps import StepFn, supervised_step

__all__ = ["History", "EarlyStopping", "Validator", "fit",
           "last_checkpoint_path", "tf32_mode"]

#: ``validator(model, val_loader, device) -> {"name": value}``; the engine stores each value as
#: ``val_<name>``. The model arrives in the mode it trains in; a validator uses
#: :func:`cvhelpers.models.freezing.eval_mode`.
Validator = Callable[[nn.Module, Iterable, torch.device], dict[str, float]]


@dataclass
class History:
    """What :func:`fit` measured, one list entry per epoch (``step_loss``: one per batch).

    ``best_epoch`` is a 1-based epoch number: its values are at index ``best_epoch - 1``.
    ``lr`` is the learning rate of the epoch's last optimizer step (first parameter group);
    ``steps`` the optimizer steps done by the end of each epoch. ``train_parts`` holds the
    parts of a loss dict (a detector's ``loss_classifier``, ``loss_box_reg``...);
    ``val_metrics`` every validator value other than ``loss`` and ``accuracy`` (``map50``,
    ``miou``...). Accuracies are ``nan`` when the outputs are not class scores.
    ``stop_reason``: ``"epochs"``, ``"max_steps"``, ``"time_budget"`` or ``"early_stopping"``;
    ``seconds``: training time of the whole run, validation included.
    """

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    train_parts: dict[str, list[float]] = field(default_factory=dict)
    val_metrics: dict[str, list[float]] = field(default_factory=dict)
    step_loss: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    stop_reason: str | None = None
    monitor: str = "val_loss"
    seconds: float = 0.0

    def metric(self, name: str) -> list[float]:
        """The per-epoch values of ``name``: ``"train_loss"``, ``"val_accuracy"``, ``"val_map50"``,
        ``"train_loss_box_reg"``... A ``KeyError`` lists the names there are."""
        if name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                    "epoch_seconds"):
            return getattr(self, name)
        if name.startswith("val_") and name[4:] in self.val_metrics:
            return self.val_metrics[name[4:]]
        if name.startswith("train_") and name[6:] in self.train_parts:
            return self.train_parts[name[6:]]
        known = (["train_loss", "train_accuracy", "val_loss", "val_accuracy"]
                 + [f"val_{k}" for k in self.val_metrics] + [f"train_{k}" for k in self.train_parts])
        raise KeyError(f"no metric {name!r} in this history; there are {known}")

    @property
    def total_steps(self) -> int:
        return self.steps[-1] if self.steps else 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of lists and numbers (JSON-friendly, and what ``plot_history`` takes)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        def plain(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: list(v) for k, v in value.items()}
            return list(value) if isinstance(value, (list, tuple)) else value
        return cls(**{k: plain(v) for k, v in data.items()})


class EarlyStopping:
    """Stop when a metric has not improved for ``patience`` epochs in a row.

    Args:
        patience: epochs without improvement to tolerate; ``None`` never stops (but still
            tracks the best value).
        min_delta: an improvement must beat the best value by more than this.
        mode: ``"min"`` for losses, ``"max"`` for accuracies.

    Example:
        >>> stopper = EarlyStopping(patience=2)
        >>> [stopper.step(v) for v in [1.0, 0.8, 0.9, 0.85]]
        [False, False, False, True]
        >>> stopper.best, stopper.best_epoch
        (0.8, 2)
    """

    def __init__(self, patience: int | None = 5, min_delta: float = 0.0,
                 mode: Literal["min", "max"] = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.patience, self.min_delta, self.mode = patience, min_delta, mode
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.num_bad_epochs = 0
        self.epochs_seen = 0
        self.improved = False

    def step(self, value: float, epoch: int | None = None) -> bool:
        """Record one epoch's ``value``; return ``True`` when training should stop."""
        self.epochs_seen += 1
        if self.mode == "min":
            self.improved = value < self.best - self.min_delta
        else:
            self.improved = value > self.best + self.min_delta
        # a NaN compares False both ways, so it counts as "no improvement"
        if self.improved:
            self.best = float(value)
            self.best_epoch = epoch if epoch is not None else self.epochs_seen
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.num_bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vars(self).update(state)


@contextlib.contextmanager
def tf32_mode(enabled: bool | None) -> Iterator[None]:
    """Inside the block, float32 matmuls and convolutions on NVIDIA GPUs may (``True``) or may
    not (``False``) use TensorFloat-32; ``None`` changes nothing. The old setting comes back after.

    TF32 keeps float32's 8 exponent bits but only 10 of its 23 mantissa bits (like float16), so
    Ampere and newer tensor cores multiply several times faster while sums stay in float32;
    networks train the same. PyTorch's defaults: TF32 on for cuDNN convolutions, off for
    matmuls. It does nothing on the CPU.
    """
    if enabled is None:
        yield
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; it refuses a mix with allow_tf32
        conv = torch.backends.cudnn.conv
        before = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision = conv.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = before
    else:
        before = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
        try:
            yield
        finally:
            matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def last_checkpoint_path(checkpoint_path: str | Path) -> Path:
    """Where :func:`fit` keeps the every-epoch checkpoint: ``best.pt`` -> ``best_last.pt``."""
    path = Path(checkpoint_path)
    return path.with_name(f"{path.stem}_last{path.suffix}")



def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: Iterable | None = None,
    *,
    optimizer: torch.optim.Optimizer,
    epochs: int | None = None,
    max_steps: int | None = None,
    time_budget_s: float | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    step_fn: StepFn = supervised_step,
    validator: Validator | None = None,
    monitor: str = "val_loss",
    monitor_mode: Literal["min", "max"] | None = None,
    scheduler: Any | None = None,
    scheduler_interval: Literal["batch", "epoch"] = "batch",
    lr_schedule: Callable[[float], float] | None = None,
    device: str | torch.device = "auto",
    early_stopping_patience: int | None = None,
    checkpoint_path: str | Path | None = None,
    restore_best: bool = True,
    resume_from: str | Path | None = None,
    amp_dtype: torch.dtype | None = None,
    grad_clip_norm: float | None = None,
    grad_accum_steps: int = 1,
    tf32: bool | None = None,
    channels_last: bool = False,
    compile_model: bool = False,
    sync_every: int = 1,
    progress: bool = True,
    log_every_s: float | None = None,
    log_fn: Callable[[dict[str, Any]], None] | None = None,
) -> History:
    """Train ``model``, validating after each epoch, and return a :class:`History`.

    Args:
        model: a plain model, or a ``DistributedDataParallel`` one from
            :func:`cvhelpers.train.distributed.wrap_model` (then ``device`` is the model's).
        train_loader: yields batches for ``step_fn`` (default: ``(images N x C x H x W float32,
            labels N int64)``); must have a length. A ``DistributedSampler`` gets
            ``set_epoch(epoch)`` before each epoch.
        val_loader: batches for the validator, or ``None`` (then monitor a ``train_*`` metric).
        optimizer: built on the parameters that train.
        epochs, max_steps, time_budget_s: how much to train (at least one): epochs (counting
            those already done when resuming), optimizer steps, seconds. The run ends at the
            first limit; a step or time limit may end it mid-epoch, which is then validated.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``, averaged over the batch
            (default ``nn.CrossEntropyLoss()``; detectors compute their own and ignore it).
        step_fn: how one batch becomes ``(loss, outputs, targets)``; ``loss`` may be a dict of
            named losses (see :mod:`cvhelpers.train.steps`).
        validator: ``validator(model, val_loader, device) -> {"name": value}`` (see
            :data:`Validator`); default: :func:`cvhelpers.train.evaluate.evaluate`'s loss and
            accuracy through ``step_fn``.
        monitor: the metric that picks the best epoch and drives early stopping:
            ``"val_<name>"`` for a validator value, ``"train_loss"`` or ``"train_accuracy"``.
        monitor_mode: ``"min"`` or ``"max"``; default ``"min"`` for names ending in ``loss``,
            else ``"max"``.
        scheduler: a torch learning-rate scheduler. With ``scheduler_interval="batch"``
            (default) it steps after every optimizer step, as OneCycleLR and per-step cosine
            schedules expect: size them with ``total_steps = epochs * ceil(len(train_loader) /
            grad_accum_steps)``. With ``"epoch"`` it steps once after validation;
            ``ReduceLROnPlateau`` gets the monitored value.
        lr_schedule: ``factor(progress) -> float``: before each optimizer step every parameter
            group's learning rate becomes its starting value times the factor of the run's
            progress (0 to 1, over whichever limit ends the run first). Use it instead of
            ``scheduler`` with a time budget.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ...
        early_stopping_patience: stop after this many epochs without improvement of ``monitor``.
        checkpoint_path: if given, the best epoch is saved there and every epoch also to
            :func:`last_checkpoint_path` (for ``resume_from``). Writes are atomic.
        restore_best: load the best epoch's weights into ``model`` before returning.
        resume_from: a checkpoint written by ``fit`` (usually the ``_last`` one) to continue from.
        amp_dtype: mixed precision with ``torch.autocast``: ``torch.bfloat16`` (CPU or recent
            GPUs) or ``torch.float16`` (CUDA; a ``torch.amp.GradScaler`` is used; on CPU it is
            far slower than float32). ``None`` trains in float32.
        grad_clip_norm: clip the gradient norm to this value before each optimizer step.
        grad_accum_steps: add up gradients of this many batches per optimizer step (an effective
            batch ``grad_accum_steps`` times larger in the same memory). Each loss is divided by
            the number of batches in its group, so with equal batches and no BatchNorm this
            gives the same step as one big batch.
        tf32: allow (``True``) or forbid (``False``) TensorFloat-32 float32 math on NVIDIA GPUs
            while ``fit`` runs (see :func:`tf32_mode`); ``None`` keeps the current setting.
        channels_last: store weights and image batches as ``N x H x W x C`` in memory (the
            shapes do not change), the layout tensor cores and oneDNN prefer; mostly a win
            together with ``amp_dtype``. It converts ``model`` in place.
        compile_model: train through ``torch.compile(model)``: the first steps are slow
            (compiling), later ones faster. Checkpoints still hold the plain model's weights.
        sync_every: read the losses back from the device every this many steps. Each read
            waits for the GPU to finish its queued work; reading less often lets the CPU queue
            the next steps meanwhile (try 25 on a fast GPU). A non-finite loss is still reported
            with its exact step, but the weights have then taken the steps up to the read.
        progress: show a tqdm bar per epoch and print one line per epoch.
        log_every_s: also print a line every this many seconds inside an epoch (long epochs).
        log_fn: called after every epoch with a dict of that epoch's metrics.

    Under DDP every process runs ``fit``; only rank 0 shows progress, calls ``log_fn``,
    validates (then shares the result, so that early stopping agrees) and writes checkpoints,
    which every process reads back (several machines need a shared folder). Losses and
    accuracies are averaged over all processes. Resuming gives every process rank 0's saved
    random-number states (the same as each had when all were seeded alike).

    Raises:
        NonFiniteLossError: a loss became NaN or infinite (the message says where and why).
    """
    ddp = is_ddp(model)
    core = unwrap_model(model)  # the plain model: state dicts, evaluation under DDP
    device = next(core.parameters()).device if ddp else pick_device(str(device))
    if val_loader is None and monitor.startswith("val_"):
        raise ValueError(f"monitor={monitor!r} needs a val_loader; use monitor='train_loss'")
    if not (monitor.startswith("val_") or monitor in ("train_loss", "train_accuracy")):
        raise ValueError(f"monitor must be 'val_<name>', 'train_loss' or 'train_accuracy', "
                         f"got {monitor!r}")
    if grad_accum_steps < 1 or sync_every < 1:
        raise ValueError(f"grad_accum_steps and sync_every must be >= 1, got "
                         f"{grad_accum_steps} and {sync_every}")
    if amp_dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"amp_dtype must be None, torch.bfloat16 or torch.float16, "
                         f"got {amp_dtype}")
    if scheduler is not None and lr_schedule is not None:
        raise ValueError("give scheduler or lr_schedule, not both")
    if amp_dtype == torch.float16 and device.type == "cpu":
        warnings.warn("amp_dtype=torch.float16 on CPU is far slower than float32 (over 100x "
                      "measured); use torch.bfloat16 on CPU", stacklevel=2)
    if channels_last and ddp and not _is_channels_last(core):
        raise ValueError("channels_last with DDP: convert before wrapping, "
                         "wrap_model(model, device, channels_last=True)")
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    budget = Budget(epochs, max_steps, time_budget_s,
                    steps_per_epoch=math.ceil(len(train_loader) / grad_accum_steps))
    # float16 gradients can underflow to zero: the scaler multiplies the loss before backward
    # and divides the gradients again before the step (skipping steps with inf/NaN gradients).
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    if not ddp:
        model.to(device, memory_format=torch.channels_last if channels_last else None)
    main = is_main_process()
    loop = EpochLoop(
        model=model, train_model=torch.compile(model) if compile_model else model,
        optimizer=optimizer, loss_fn=loss_fn, step_fn=step_fn, device=device, scaler=scaler,
        amp_dtype=amp_dtype, batch_scheduler=scheduler if scheduler_interval == "batch" else None,
        lr_schedule=lr_schedule, base_lrs=[g["lr"] for g in optimizer.param_groups],
        budget=budget, grad_clip_norm=grad_clip_norm, grad_accum_steps=grad_accum_steps,
        channels_last=channels_last, sync_every=sync_every, progress=progress and main,
        log_every_s=log_every_s)
    # under DDP, rank 0 evaluates alone: the DDP wrapper's forward would wait for the others
    eval_model = core if ddp else loop.train_model
    if validator is None:
        def validator(m: nn.Module, loader: Iterable, dev: torch.device) -> dict[str, float]:
            return evaluate(m, loader, loss_fn, dev, step_fn=step_fn, amp_dtype=amp_dtype,
                            channels_last=channels_last)

    history = History(monitor=monitor)
    mode = monitor_mode or ("min" if monitor.endswith("loss") else "max")
    stopper = EarlyStopping(early_stopping_patience, mode=mode)
    best_weights: dict[str, torch.Tensor] | None = None  # in-memory copy when no checkpoint_path
    start_epoch = 0
    generator = getattr(train_loader, "generator", None)
    sampler = getattr(train_loader, "sampler", None)
    if resume_from is not None:
        checkpoint = load_checkpoint(resume_from, core, optimizer, scheduler, scaler,
                                     restore_rng=True)
        state = checkpoint["extra"]["fit"]
        start_epoch = checkpoint["epoch"]
        history = History.from_dict(state["history"])
        history.stop_reason = None  # the new limits decide (a run may be resumed to go further)
        stopper.load_state_dict(state["early_stopping"])
        loop.steps, loop.seconds_before = int(state["steps"]), float(state["seconds"])
        loop.base_lrs = list(state["base_lrs"])
        if generator is not None and state["loader_generator"] is not None:
            generator.set_state(state["loader_generator"])

    with tf32_mode(tf32):
        epoch = start_epoch
        while history.stop_reason is None:
            if stopper.should_stop:  # resumed from a run that had already stopped early
                history.stop_reason = "early_stopping"
                break
            if epochs is not None and epoch >= epochs:
                history.stop_reason = "epochs"
                break
            reason = budget.exhausted(loop.steps, loop.seconds())
            if reason:
                history.stop_reason = reason
                break
            epoch += 1
            if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new shuffle every epoch
                sampler.set_epoch(epoch - 1)
            start = time.perf_counter()
            result = loop.run(train_loader, epoch, epochs)
            val: dict[str, float] = {}
            if val_loader is not None and main:
                val = dict(validator(eval_model, val_loader, device))
            val = broadcast_object(val)
            metrics: dict[str, Any] = {
                "epoch": epoch, "train_loss": result.loss, "train_accuracy": result.accuracy,
                "val_loss": val.pop("loss", math.nan), "val_accuracy": val.pop("accuracy", math.nan),
                "lr": result.lr, "epoch_seconds": time.perf_counter() - start, "steps": loop.steps,
            }
            for key, value in metrics.items():
                getattr(history, key).append(value)
            for key, value in result.parts.items():
                history.train_parts.setdefault(key, []).append(value)
                metrics[f"train_{key}"] = value
            for key, value in val.items():
                history.val_metrics.setdefault(key, []).append(float(value))
                metrics[f"val_{key}"] = float(value)
            history.step_loss.extend(result.step_losses)
            history.seconds = loop.seconds()
            if monitor not in metrics:
                raise KeyError(f"monitor={monitor!r} is not among this run's metrics "
                               f"{sorted(k for k in metrics if k.startswith(('val_', 'train_')))}")

            if scheduler is not None and scheduler_interval == "epoch":
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(metrics[monitor])
                else:
                    scheduler.step()
            history.stopped_early = stopper.step(metrics[monitor], epoch)
            if history.stopped_early:
                history.stop_reason = "early_stopping"
            elif result.stop_reason:
                history.stop_reason = result.stop_reason
            elif epochs is not None and epoch >= epochs:
                history.stop_reason = "epochs"
            if stopper.improved:
                history.best_epoch = epoch
                if checkpoint_path is None and restore_best:
                    best_weights = copy.deepcopy({k: v.detach().cpu() for k, v in
                                                  core.state_dict().items()})
            if checkpoint_path is not None and main:
                extra = {"fit": {"history": history.to_dict(),
                                 "early_stopping": stopper.state_dict(),
                                 "loader_generator": generator.get_state() if generator else None,
                                 "steps": loop.steps, "seconds": loop.seconds(),
                                 "base_lrs": loop.base_lrs}}
                if stopper.improved:
                    save_checkpoint(checkpoint_path, core, optimizer, scheduler, scaler,
                                    epoch=epoch, extra=extra)
                save_checkpoint(last_checkpoint_path(checkpoint_path), core, optimizer,
                                scheduler, scaler, epoch=epoch, extra=extra)

            if progress and main:
                print(_epoch_line(metrics, epochs, stopper.improved), flush=True)
            if log_fn is not None and main:
                log_fn({**metrics, "improved": stopper.improved})

    history.seconds = loop.seconds()
    barrier()  # under DDP: rank 0's checkpoint is complete before anyone reads it
    if restore_best and history.best_epoch is not None:
        if checkpoint_path is not None:
            load_checkpoint(checkpoint_path, core)
        elif best_weights is not None:
            core.load_state_dict(best_weights)
        elif history.best_epoch != history.epoch[-1]:
            warnings.warn(f"best epoch {history.best_epoch} came before resuming and no "
                          "checkpoint_path was given: keeping the last weights", stacklevel=2)
    return history


def _is_channels_last(model: nn.Module) -> bool:
    return all(p.is_contiguous(memory_format=torch.channels_last)
               for p in model.parameters() if p.ndim == 4)


def _epoch_line(m: dict[str, Any], epochs: int | None, improved: bool) -> str:
    """``epoch 3/10  train loss 0.41 acc 0.85 | val loss 0.45 acc 0.84 | lr 1e-3 | 12 s``; NaN
    fields (no accuracy for a detector, no loss from an mAP validator) are left out."""
    def fields(prefix: str) -> str:
        names = {f"{prefix}_loss": "loss", f"{prefix}_accuracy": "acc"}
        names |= {k: k[len(prefix) + 1:] for k in m if k.startswith(f"{prefix}_") and k not in names}
        return " ".join(f"{short} {m[k]:.4f}" for k, short in names.items()
                        if isinstance(m.get(k), float) and math.isfinite(m[k]))
    val = fields("val")
    return (f"epoch {m['epoch']}{'/' + str(epochs) if epochs else ''}  train {fields('train')}"
            + (f" | val {val}" if val else "")
            + f" | lr {m['lr']:.2e} | {m['epoch_seconds']:.1f} s" + ("  *best" if improved else ""))
