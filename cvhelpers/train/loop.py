"""One epoch of training steps: forward, loss, backward, optimizer step, and the running totals.

:func:`cvhelpers.train.engine.fit` builds one :class:`EpochLoop` per run and calls
:meth:`EpochLoop.run` once per epoch; everything around the epochs (validation, checkpoints,
early stopping, resuming) stays in the engine. Read :meth:`EpochLoop.run` to see where mixed
precision, gradient accumulation, clipping, the learning-rate schedule, the run's budget and
DDP's ``no_sync`` go in a step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cvhelpers.env import synchronize
from cvhelpers.train.distributed import get_world_size, is_distributed, no_sync_if
from cvhelpers.train.steps import (StepFn, autocast, batch_size_of, count_correct, loss_and_parts, move_to_device)

__all__ = ["NonFiniteLossError", "Budget", "EpochLoop", "EpochResult", "RunningTotals"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; ``epoch`` and ``step`` say where (both 1-based)."""

    def __init__(self, loss: float, epoch: int, step: int, num_steps: int,
                 parts: dict[str, float] | None = None) -> None:
        self.epoch, self.step = epoch, step
        detail = f" (parts: {parts})" if parts else ""
        super().__init__(
            f"loss is {loss}{detail} at epoch {epoch}, step {step} of {num_steps}; training "
            "stopped. Usual causes: (1) learning rate too high: try it 10x lower, or "
            "grad_clip_norm=1.0; (2) float16 overflow (values past 65504): use "
            "amp_dtype=torch.bfloat16, or a GradScaler if you write your own loop; (3) bad inputs "
            "or labels: NaN/inf pixels, labels outside [0, num_classes), boxes with x2 < x1; "
            "(4) log of zero in a hand-written loss: use F.log_softmax / F.cross_entropy, or add "
            "a small eps."
        )


@dataclass
class Budget:
    """How much a run may train: epochs, optimizer steps and seconds; it ends at the first limit.

    ``progress`` (0 to 1) is the largest fraction used of any limit, so a learning-rate
    schedule over progress ends when the run does, whichever limit ends it. Fixed work (epochs
    or steps) gives the same weights on any machine; a time budget gives more steps to a faster
    one.
    """

    epochs: int | None
    max_steps: int | None
    time_budget_s: float | None
    steps_per_epoch: int  # optimizer steps in one full epoch

    def __post_init__(self) -> None:
        if self.epochs is None and self.max_steps is None and self.time_budget_s is None:
            raise ValueError("give epochs, max_steps or time_budget_s (or several)")
        for name in ("epochs", "max_steps", "time_budget_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    @property
    def total_steps(self) -> int | None:
        """Optimizer steps the run takes when no clock stops it (``None``: only the clock)."""
        limits = [self.max_steps] if self.max_steps is not None else []
        if self.epochs is not None:
            limits.append(self.epochs * self.steps_per_epoch)
        return min(limits) if limits else None

    def progress(self, steps: int, seconds: float) -> float:
        fractions = [0.0]
        if self.total_steps:
            fractions.append(steps / self.total_steps)
        if self.time_budget_s is not None:
            fractions.append(seconds / self.time_budget_s)
        return min(max(fractions), 1.0)

    def exhausted(self, steps: int, seconds: float) -> str | None:
        """Why the run must stop now (``"max_steps"``, ``"time_budget"``), or ``None``."""
        if self.max_steps is not None and steps >= self.max_steps:
            return "max_steps"
        if self.time_budget_s is not None and seconds >= self.time_budget_s:
            return "time_budget"
        return None


@dataclass
class EpochResult:
    """What one call of :meth:`EpochLoop.run` measured."""

    loss: float
    accuracy: float
    lr: float
    parts: dict[str, float]
    step_losses: list[float]
    stop_reason: str | None  # set when the budget ended the epoch early


@dataclass
class EpochLoop:
    """Everything that stays fixed from epoch to epoch; :meth:`run` trains one epoch.

    The arguments mean what :func:`cvhelpers.train.engine.fit`'s do; ``batch_scheduler`` is the
    torch scheduler to step after every optimizer step (or ``None``), ``base_lrs`` the
    learning rate of each parameter group that ``lr_schedule`` multiplies. ``steps`` counts the
    optimizer steps of the whole run and ``seconds_before`` the training seconds of earlier
    sessions (a resumed run goes on counting).
    """

    model: nn.Module  # what the caller passed (maybe DDP): no_sync is asked of it
    train_model: nn.Module  # the model or torch.compile(model): what the steps call
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[..., torch.Tensor] | None
    step_fn: StepFn
    device: torch.device
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    batch_scheduler: Any | None
    lr_schedule: Callable[[float], float] | None
    base_lrs: list[float]
    budget: Budget
    grad_clip_norm: float | None
    grad_accum_steps: int
    channels_last: bool
    sync_every: int
    progress: bool
    log_every_s: float | None
    steps: int = 0
    seconds_before: float = 0.0
    _started: float = field(default_factory=time.perf_counter)
    _last_log: float = 0.0

    def seconds(self) -> float:
        """Training seconds of the whole run so far (validation included)."""
        return self.seconds_before + time.perf_counter() - self._started

    def run(self, loader: DataLoader, epoch: int, epochs: int | None) -> EpochResult:
        """One pass over ``loader`` (shorter when the budget runs out mid-epoch)."""
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        num_steps = len(loader)
        if num_steps == 0:
            raise ValueError("train_loader yields no batches (empty dataset, or drop_last=True "
                             "with fewer samples than batch_size)")
        totals = RunningTotals(epoch, num_steps)
        lr = self.optimizer.param_groups[0]["lr"]
        accum = self.grad_accum_steps
        stop_reason = None
        label = f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}"
        bar = tqdm(loader, desc=label, leave=False, disable=not self.progress)
        for step, batch in enumerate(bar, start=1):
            # Gradients add up over a group of batches; dividing each loss by the group's size
            # makes the sum an average, as if the group were one big batch. The last group of
            # an epoch may be shorter. Under DDP only its last batch all-reduces gradients.
            group_start = (step - 1) // accum * accum
            group_size = min(accum, num_steps - group_start)
            last_in_group = step == group_start + group_size
            if step == group_start + 1:  # the budget ends a run between optimizer steps only
                stop_reason = self.budget.exhausted(self.steps, self.seconds())
                if stop_reason:
                    break
            batch = move_to_device(batch, self.device, self.channels_last)
            with no_sync_if(self.model, skip_sync=not last_in_group):
                with autocast(self.device, self.amp_dtype):
                    loss, outputs, targets = self.step_fn(self.train_model, batch, self.loss_fn)
                loss, parts = loss_and_parts(loss)
                totals.add(step, loss, parts, outputs, targets, batch_size_of(batch))
                if step % self.sync_every == 0 or step == num_steps:
                    totals.flush()  # raises NonFiniteLossError before a bad backward
                    bar.set_postfix(loss=f"{totals.mean_loss:.4f}", refresh=False)
                scaled_loss = loss / group_size
                if self.scaler is not None:
                    self.scaler.scale(scaled_loss).backward()
                else:
                    scaled_loss.backward()
            if last_in_group:
                lr = self._optimizer_step()
                self._maybe_log(epoch, totals)
        bar.close()
        totals.flush()
        synchronize(self.device)  # the epoch's time includes the GPU's queued work
        if stop_reason is None:  # the last step of an epoch may also have used up the budget
            stop_reason = self.budget.exhausted(self.steps, self.seconds())
        return EpochResult(totals.mean_loss, totals.accuracy, lr, totals.mean_parts,
                           totals.step_losses, stop_reason)

    def _optimizer_step(self) -> float:
        if self.lr_schedule is not None:
            factor = self.lr_schedule(self.budget.progress(self.steps, self.seconds()))
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = base * factor
        if self.grad_clip_norm is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.batch_scheduler is not None:
            self.batch_scheduler.step()
        self.steps += 1
        return lr

    def _maybe_log(self, epoch: int, totals: RunningTotals) -> None:
        """On a long epoch, a progress line every ``log_every_s`` seconds (rank 0 only)."""
        if not (self.progress and self.log_every_s):
            return
        now = self.seconds()
        if now - self._last_log >= self.log_every_s:
            self._last_log = now
            totals.flush()
            recent = totals.step_losses[-20:]
            mean = sum(recent) / len(recent) if recent else math.nan
            print(f"  {now:6.0f} s  epoch {epoch}  step {self.steps}  loss {mean:.4f} (last 20)"
                  f"  lr {self.optimizer.param_groups[0]['lr']:.2e}", flush=True)


class RunningTotals:
    """Loss, loss parts and accuracy sums of one epoch. Steps wait on the device in ``pending``
    until :meth:`flush` copies them to the CPU in one go (one GPU sync instead of one per step);
    under DDP the flush also averages them over all processes."""

    def __init__(self, epoch: int, num_steps: int) -> None:
        self.epoch, self.num_steps = epoch, num_steps
        self.pending: list[tuple[int, torch.Tensor, int]] = []
        self.part_names: list[str] | None = None
        self.loss_sum, self.seen, self.correct, self.counted = 0.0, 0, 0, 0
        self.part_sums: dict[str, float] = {}
        self.step_losses: list[float] = []

    def add(self, step: int, loss: torch.Tensor, parts: dict[str, torch.Tensor],
            outputs: torch.Tensor | None, targets: torch.Tensor | None, n: int) -> None:
        if self.part_names is None:
            self.part_names = list(parts)
        elif list(parts) != self.part_names:
            raise ValueError(f"the step's loss parts changed from {self.part_names} to "
                             f"{list(parts)} at step {step}")
        counts = count_correct(outputs.detach() if outputs is not None else None, targets)
        if counts is None:
            counts = torch.zeros(2, device=loss.device)
        values = [loss.detach().float().reshape(1), counts.float()]
        values += [parts[k].detach().float().reshape(1) for k in self.part_names]
        self.pending.append((step, torch.cat(values), n))

    def flush(self) -> None:
        if not self.pending:
            return
        rows = torch.stack([row for _, row, _ in self.pending])  # k x (loss, correct, counted, parts)
        world = get_world_size()
        if is_distributed():
            dist.all_reduce(rows)  # sums; every process gets the same rows
        names = self.part_names or []
        for (step, _, n), row in zip(self.pending, rows.tolist(), strict=True):
            loss_value = row[0] / world  # processes hold equal-sized batches
            parts = {k: v / world for k, v in zip(names, row[3:], strict=True)}
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(loss_value, self.epoch, step, self.num_steps, parts)
            self.loss_sum += loss_value * n * world
            self.seen += n * world
            self.correct, self.counted = self.correct + int(row[1]), self.counted + int(row[2])
            for k, v in parts.items():
                self.part_sums[k] = self.part_sums.get(k, 0.0) + v * n * world
            self.step_losses.append(loss_value)
        self.pending.clear()

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.seen if self.seen else math.nan

    @property
    def accuracy(self) -> float:
        return self.correct / self.counted if self.counted else math.nan

    @property
    def mean_parts(self) -> dict[str, float]:
        return {k: v / self.seen for k, v in self.part_sums.items()} if self.seen else {}
