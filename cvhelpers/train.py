"""The course training loop: :func:`fit`, :func:`evaluate`, :func:`predict` and their helpers.

Every notebook trains through :func:`fit`. Classification works out of the box; detection and
segmentation pass their own ``loss_fn`` or a whole ``step_fn`` (see :func:`classification_step`).

Example::

    seed_everything(0)
    train_loader = make_loader(train_set, batch_size=128, shuffle=True, seed=0)
    val_loader = make_loader(val_set, batch_size=256, shuffle=False)
    model = SmallCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = fit(model, train_loader, val_loader, epochs=5, optimizer=optimizer,
                  checkpoint_path="runs/fmnist/best.pt")
    print(history.val_accuracy[history.best_epoch - 1])

Reproducible runs and resuming: call :func:`seed_everything` before building the model, and
shuffle with :func:`make_loader` (a ``DataLoader`` with its own seeded ``torch.Generator``).
With ``checkpoint_path`` set, ``fit`` saves ``<name>_last.pt`` after every epoch holding the
model, optimizer, scheduler, RNG states and the loader's generator state; ``fit(...,
resume_from=that_file)`` continues so that, on CPU, the final weights equal those of an
uninterrupted run bit for bit. (On a GPU some kernels are not deterministic; see
``torch.use_deterministic_algorithms``.)
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

# seed_everything and make_loader live with the checkpoints (what makes a run repeatable) and
# are imported here so that notebooks find everything for training in one place.
from cvhelpers.checkpoint import load_checkpoint, make_loader, save_checkpoint, seed_everything
from cvhelpers.env import pick_device

__all__ = [
    "History", "EarlyStopping", "NonFiniteLossError", "StepFn", "seed_everything",
    "make_loader", "move_to_device", "classification_step", "evaluate",
    "predict", "fit", "last_checkpoint_path",
]

# step_fn(model, batch_on_device, loss_fn) -> (loss, outputs or None, targets or None)
StepFn = Callable[[nn.Module, Any, Callable[..., torch.Tensor]],
                  tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]
Monitor = Literal["val_loss", "val_accuracy", "train_loss", "train_accuracy"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; ``epoch`` and ``step`` say where (both 1-based)."""

    def __init__(self, loss: float, epoch: int, step: int, num_steps: int) -> None:
        self.epoch, self.step = epoch, step
        super().__init__(
            f"loss is {loss} at epoch {epoch}, step {step} of {num_steps}; training stopped. "
            "Usual causes: (1) learning rate too high: try it 10x lower, or grad_clip_norm=1.0; "
            "(2) float16 overflow (values past 65504): use amp_dtype=torch.bfloat16, or a "
            "GradScaler if you write your own loop; (3) bad inputs or labels: NaN/inf pixels, "
            "labels outside [0, num_classes); (4) log of zero in a hand-written loss: use "
            "F.log_softmax / F.cross_entropy, or add a small eps."
        )


@dataclass
class History:
    """What :func:`fit` measured, one list entry per epoch.

    ``best_epoch`` is a 1-based epoch number: its values are at index ``best_epoch - 1``.
    ``lr`` is the learning rate of the epoch's last optimizer step (first parameter group).
    Accuracies are ``nan`` when the outputs are not class scores (e.g. detection).
    """

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    monitor: str = "val_loss"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of lists and numbers (JSON-friendly, and what ``plot_history`` takes)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in data.items()})


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


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in ``batch`` (nested tuples, lists, dicts) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def classification_step(model: nn.Module, batch: Any, loss_fn: Callable[..., torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The default ``step_fn``: ``batch = (images, labels)`` -> ``(loss, logits, labels)``.

    Write your own with the same signature when a model needs something else, e.g. a
    torchvision detector that takes targets and returns a dict of losses::

        def detection_step(model, batch, loss_fn):
            images, targets = batch
            losses = model(images, targets)
            return sum(losses.values()), None, None   # no accuracy for detection
    """
    inputs, targets = batch
    outputs = model(inputs)
    return loss_fn(outputs, targets), outputs, targets


def _batch_size(batch: Any) -> int:
    """Samples in a batch (to weight averages): the length of its first tensor or list."""
    if isinstance(batch, dict):
        first = next(iter(batch.values()))
    elif isinstance(batch, (list, tuple)):
        first = batch[0]
    else:
        first = batch
    return first.shape[0] if isinstance(first, torch.Tensor) else len(first)


def _count_correct(outputs: torch.Tensor | None, targets: torch.Tensor | None) -> tuple[int, int]:
    """``(correct, counted)`` for class scores ``N x C [x ...]`` vs integer labels ``N [x ...]``."""
    if (outputs is None or targets is None or targets.is_floating_point()
            or outputs.ndim != targets.ndim + 1 or outputs.shape[0] != targets.shape[0]):
        return 0, 0
    valid = targets >= 0  # skips ignore_index=-100 pixels in segmentation
    correct = ((outputs.argmax(dim=1) == targets) & valid).sum().item()
    return int(correct), int(valid.sum().item())


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def _place_model(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:  # wherever the model already is
        return next(model.parameters()).device
    device = pick_device(str(device))
    model.to(device)
    return device


def evaluate(model: nn.Module, loader: Iterable, loss_fn: Callable[..., torch.Tensor] | None = None,
             device: str | torch.device | None = None, *, step_fn: StepFn = classification_step,
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Average loss and accuracy of ``model`` over ``loader``, without training.

    Runs in ``model.eval()`` mode (dropout off, BatchNorm uses its running statistics) inside
    ``torch.inference_mode()``, then puts the model back in the mode it was in. ``device=None``
    uses the device the model is on; any other value moves the model there first.

    Returns:
        ``{"loss": float, "accuracy": float}``; the loss is averaged per sample, the accuracy is
        ``nan`` when the outputs are not class scores.
    """
    device = _place_model(model, device)
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()
    loss_sum, seen, correct, counted = 0.0, 0, 0, 0
    with torch.inference_mode():
        for batch in loader:
            batch = move_to_device(batch, device)
            with _autocast(device, amp_dtype):
                loss, outputs, targets = step_fn(model, batch, loss_fn)
            n = _batch_size(batch)
            loss_sum += loss.item() * n
            seen += n
            c, k = _count_correct(outputs, targets)
            correct, counted = correct + c, counted + k
    model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate: the loader yielded no batches")
    return {"loss": loss_sum / seen, "accuracy": correct / counted if counted else math.nan}


def predict(model: nn.Module, loader: Iterable, device: str | torch.device | None = None, *,
            probs: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``model`` over ``loader`` and collect its outputs on the CPU.

    Args:
        loader: yields ``(images, labels)`` or bare ``images`` batches.
        device: ``None`` uses the model's device; any other value moves the model there.
        probs: apply ``softmax`` over dim 1 (class probabilities instead of logits).

    Returns:
        ``(outputs, targets)``: ``N x C`` float32 logits or probabilities, and the ``N`` labels
        (``None`` when the loader yields bare images). Order follows the loader.
    """
    device = _place_model(model, device)
    was_training = model.training
    model.eval()
    outputs_list: list[torch.Tensor] = []
    targets_list: list[torch.Tensor] = []
    with torch.inference_mode():
        for batch in loader:
            inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
            outputs = model(inputs.to(device)).float()
            outputs_list.append((outputs.softmax(dim=1) if probs else outputs).cpu())
            if isinstance(batch, (list, tuple)):
                targets_list.append(batch[1].cpu())
    model.train(was_training)
    return torch.cat(outputs_list), (torch.cat(targets_list) if targets_list else None)


def last_checkpoint_path(checkpoint_path: str | Path) -> Path:
    """Where :func:`fit` keeps the every-epoch checkpoint: ``best.pt`` -> ``best_last.pt``."""
    path = Path(checkpoint_path)
    return path.with_name(f"{path.stem}_last{path.suffix}")


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: Iterable | None,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[..., torch.Tensor] = nn.CrossEntropyLoss(),
    step_fn: StepFn = classification_step,
    scheduler: Any | None = None,
    scheduler_interval: Literal["batch", "epoch"] = "batch",
    device: str | torch.device = "auto",
    early_stopping_patience: int | None = None,
    monitor: Monitor = "val_loss",
    checkpoint_path: str | Path | None = None,
    restore_best: bool = True,
    resume_from: str | Path | None = None,
    amp_dtype: torch.dtype | None = None,
    grad_clip_norm: float | None = None,
    grad_accum_steps: int = 1,
    progress: bool = True,
    log_fn: Callable[[dict[str, Any]], None] | None = None,
) -> History:
    """Train ``model`` for ``epochs`` epochs, validating after each, and return a :class:`History`.

    Args:
        train_loader: yields batches for ``step_fn`` (default: ``(images N x C x H x W float32,
            labels N int64)``); must have a length.
        val_loader: same kind of batches, or ``None`` (then monitor a ``train_*`` metric).
        epochs: total number of epochs, counting those already done when resuming.
        optimizer: built on ``model.parameters()``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``, averaged over the batch.
        step_fn: how one batch becomes ``(loss, outputs, targets)``; see
            :func:`classification_step`.
        scheduler: a learning-rate scheduler. With ``scheduler_interval="batch"`` (default) it
            steps after every optimizer step, as OneCycleLR and per-step cosine schedules
            expect: size them with ``total_steps = epochs * ceil(len(train_loader) /
            grad_accum_steps)``. With ``"epoch"`` it steps once after validation;
            ``ReduceLROnPlateau`` gets the monitored value.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ...
        early_stopping_patience: stop after this many epochs without improvement of ``monitor``.
        monitor: the metric that decides the best epoch and early stopping.
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
        progress: show a tqdm bar per epoch and print one line per epoch.
        log_fn: called after every epoch with a dict of that epoch's metrics.

    Raises:
        NonFiniteLossError: a loss became NaN or infinite (the message says where and why).
    """
    device = pick_device(str(device))
    if val_loader is None and monitor.startswith("val_"):
        raise ValueError(f"monitor={monitor!r} needs a val_loader; use monitor='train_loss'")
    if monitor not in ("val_loss", "val_accuracy", "train_loss", "train_accuracy"):
        raise ValueError(f"unknown monitor {monitor!r}")
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    if amp_dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"amp_dtype must be None, torch.bfloat16 or torch.float16, "
                         f"got {amp_dtype}")
    if amp_dtype == torch.float16 and device.type == "cpu":
        warnings.warn("amp_dtype=torch.float16 on CPU is far slower than float32 (over 100x "
                      "measured); use torch.bfloat16 on CPU", stacklevel=2)
    # float16 gradients can underflow to zero: the scaler multiplies the loss before backward
    # and divides the gradients again before the step (skipping steps with inf/NaN gradients).
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    model.to(device)

    history = History(monitor=monitor)
    stopper = EarlyStopping(early_stopping_patience, mode="max" if "accuracy" in monitor else "min")
    best_weights: dict[str, torch.Tensor] | None = None  # in-memory copy when no checkpoint_path
    start_epoch = 0
    generator = getattr(train_loader, "generator", None)
    if resume_from is not None:
        checkpoint = load_checkpoint(resume_from, model, optimizer, scheduler, scaler,
                                     restore_rng=True)
        state = checkpoint["extra"]["fit"]
        start_epoch = checkpoint["epoch"]
        history = History.from_dict(state["history"])
        stopper.load_state_dict(state["early_stopping"])
        if generator is not None and state["loader_generator"] is not None:
            generator.set_state(state["loader_generator"])

    for epoch in range(start_epoch + 1, epochs + 1):
        if stopper.should_stop:  # resumed from a run that had already stopped early
            break
        start = time.perf_counter()
        train_loss, train_accuracy, lr = _train_one_epoch(
            model, train_loader, optimizer, loss_fn, step_fn, device, scaler, amp_dtype,
            scheduler if scheduler_interval == "batch" else None,
            grad_clip_norm, grad_accum_steps, epoch, epochs, progress)
        if val_loader is not None:
            val = evaluate(model, val_loader, loss_fn, device, step_fn=step_fn, amp_dtype=amp_dtype)
        else:
            val = {"loss": math.nan, "accuracy": math.nan}
        metrics = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
                   "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": lr,
                   "epoch_seconds": time.perf_counter() - start}
        for key, value in metrics.items():
            getattr(history, key).append(value)

        if scheduler is not None and scheduler_interval == "epoch":
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(metrics[monitor])
            else:
                scheduler.step()
        history.stopped_early = stopper.step(metrics[monitor], epoch)
        if stopper.improved:
            history.best_epoch = epoch
            if checkpoint_path is None and restore_best:
                best_weights = copy.deepcopy({k: v.detach().cpu() for k, v in
                                              model.state_dict().items()})
        if checkpoint_path is not None:
            extra = {"fit": {"history": history.to_dict(), "early_stopping": stopper.state_dict(),
                             "loader_generator": generator.get_state() if generator else None}}
            if stopper.improved:
                save_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler,
                                epoch=epoch, extra=extra)
            save_checkpoint(last_checkpoint_path(checkpoint_path), model, optimizer, scheduler,
                            scaler, epoch=epoch, extra=extra)

        if progress:
            print(_epoch_line(metrics, epochs, stopper.improved), flush=True)
        if log_fn is not None:
            log_fn({**metrics, "improved": stopper.improved})
        if history.stopped_early:
            break

    if restore_best and history.best_epoch is not None:
        if checkpoint_path is not None:
            load_checkpoint(checkpoint_path, model)
        elif best_weights is not None:
            model.load_state_dict(best_weights)
        else:
            warnings.warn(f"best epoch {history.best_epoch} came before resuming and no "
                          "checkpoint_path was given: keeping the last weights", stacklevel=2)
    return history


def _train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                     loss_fn: Callable[..., torch.Tensor], step_fn: StepFn, device: torch.device,
                     scaler: torch.amp.GradScaler | None, amp_dtype: torch.dtype | None,
                     batch_scheduler: Any | None, grad_clip_norm: float | None,
                     grad_accum_steps: int, epoch: int, epochs: int, progress: bool
                     ) -> tuple[float, float, float]:
    """One pass over ``loader``; returns ``(mean loss, accuracy, last learning rate)``."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    num_steps = len(loader)
    if num_steps == 0:
        raise ValueError("train_loader yields no batches (empty dataset, or drop_last=True with "
                         "fewer samples than batch_size)")
    loss_sum, seen, correct, counted = 0.0, 0, 0, 0
    lr = optimizer.param_groups[0]["lr"]
    bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", leave=False, disable=not progress)
    for step, batch in enumerate(bar, start=1):
        batch = move_to_device(batch, device)
        with _autocast(device, amp_dtype):
            loss, outputs, targets = step_fn(model, batch, loss_fn)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(loss_value, epoch, step, num_steps)

        # Gradients add up over a group of batches; dividing each loss by the group's size
        # makes the sum an average, as if the group were one big batch. The last group of an
        # epoch may be shorter.
        group_start = (step - 1) // grad_accum_steps * grad_accum_steps
        group_size = min(grad_accum_steps, num_steps - group_start)
        scaled_loss = loss / group_size
        if scaler is not None:
            scaler.scale(scaled_loss).backward()
        else:
            scaled_loss.backward()

        if step % grad_accum_steps == 0 or step == num_steps:
            if grad_clip_norm is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
            lr = optimizer.param_groups[0]["lr"]
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if batch_scheduler is not None:
                batch_scheduler.step()

        n = _batch_size(batch)
        loss_sum, seen = loss_sum + loss_value * n, seen + n
        c, k = _count_correct(outputs.detach() if outputs is not None else None, targets)
        correct, counted = correct + c, counted + k
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", refresh=False)
    bar.close()
    return loss_sum / seen, (correct / counted if counted else math.nan), lr


def _epoch_line(m: dict[str, Any], epochs: int, improved: bool) -> str:
    return (f"epoch {m['epoch']}/{epochs}  train loss {m['train_loss']:.4f} "
            f"acc {m['train_accuracy']:.4f} | val loss {m['val_loss']:.4f} "
            f"acc {m['val_accuracy']:.4f} | lr {m['lr']:.2e} | {m['epoch_seconds']:.1f} s"
            + ("  *best" if improved else ""))
