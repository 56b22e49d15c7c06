"""One epoch of training steps: forward, loss, backward, optimizer step, and the running totals.

:func:`cvhelpers.train.fit` builds one :class:`EpochLoop` per run and calls
:meth:`EpochLoop.run` once per epoch; everything around the epochs (validation, checkpoints,
early stopping, resuming) stays in :mod:`cvhelpers.train`. Read :meth:`EpochLoop.run` to see
where mixed precision, gradient accumulation, clipping and DDP's ``no_sync`` go in a step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cvhelpers.distributed import get_world_size, is_distributed, no_sync_if
from cvhelpers.evaluate import StepFn, autocast, batch_size_of, count_correct, move_to_device

__all__ = ["NonFiniteLossError", "EpochLoop", "RunningTotals", "synchronize"]


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
class EpochLoop:
    """Everything that stays fixed from epoch to epoch; :meth:`run` trains one epoch.

    The arguments mean what :func:`cvhelpers.train.fit`'s do; ``batch_scheduler`` is the
    scheduler to step after every optimizer step (or ``None``).
    """

    model: nn.Module  # what the caller passed (maybe DDP): no_sync is asked of it
    train_model: nn.Module  # the model or torch.compile(model): what the steps call
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[..., torch.Tensor]
    step_fn: StepFn
    device: torch.device
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    batch_scheduler: Any | None
    grad_clip_norm: float | None
    grad_accum_steps: int
    channels_last: bool
    sync_every: int
    progress: bool

    def run(self, loader: DataLoader, epoch: int, epochs: int) -> tuple[float, float, float]:
        """One pass over ``loader``; returns ``(mean loss, accuracy, last learning rate)``."""
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        num_steps = len(loader)
        if num_steps == 0:
            raise ValueError("train_loader yields no batches (empty dataset, or drop_last=True "
                             "with fewer samples than batch_size)")
        totals = RunningTotals(epoch, num_steps)
        lr = self.optimizer.param_groups[0]["lr"]
        accum = self.grad_accum_steps
        bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", leave=False, disable=not self.progress)
        for step, batch in enumerate(bar, start=1):
            batch = move_to_device(batch, self.device, self.channels_last)
            # Gradients add up over a group of batches; dividing each loss by the group's size
            # makes the sum an average, as if the group were one big batch. The last group of
            # an epoch may be shorter. Under DDP only its last batch all-reduces gradients.
            group_start = (step - 1) // accum * accum
            group_size = min(accum, num_steps - group_start)
            last_in_group = step == group_start + group_size
            with no_sync_if(self.model, skip_sync=not last_in_group):
                with autocast(self.device, self.amp_dtype):
                    loss, outputs, targets = self.step_fn(self.train_model, batch, self.loss_fn)
                totals.add(step, loss, outputs, targets, batch_size_of(batch))
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
        bar.close()
        synchronize(self.device)  # the epoch's time includes the GPU's queued work
        return totals.mean_loss, totals.accuracy, lr

    def _optimizer_step(self) -> float:
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
        return lr


class RunningTotals:
    """Loss and accuracy sums of one epoch. Steps wait on the device in ``pending`` until
    :meth:`flush` copies them to the CPU in one go (one GPU sync instead of one per step);
    under DDP the flush also sums them over all processes."""

    def __init__(self, epoch: int, num_steps: int) -> None:
        self.epoch, self.num_steps = epoch, num_steps
        self.pending: list[tuple[int, torch.Tensor, int]] = []
        self.loss_sum, self.seen, self.correct, self.counted = 0.0, 0, 0, 0

    def add(self, step: int, loss: torch.Tensor, outputs: torch.Tensor | None,
            targets: torch.Tensor | None, n: int) -> None:
        counts = count_correct(outputs.detach() if outputs is not None else None, targets)
        if counts is None:
            counts = torch.zeros(2, device=loss.device)
        self.pending.append((step, torch.cat([loss.detach().float().reshape(1), counts]), n))

    def flush(self) -> None:
        if not self.pending:
            return
        rows = torch.stack([row for _, row, _ in self.pending])  # k x (loss, correct, counted)
        world = get_world_size()
        if is_distributed():
            dist.all_reduce(rows)  # sums; every process gets the same rows
        for (step, _, n), row in zip(self.pending, rows.tolist(), strict=True):
            loss_total, correct, counted = row
            loss_value = loss_total / world  # processes hold equal-sized batches
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(loss_value, self.epoch, step, self.num_steps)
            self.loss_sum += loss_value * n * world
            self.seen += n * world
            self.correct, self.counted = self.correct + int(correct), self.counted + int(counted)
        self.pending.clear()

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.seen if self.seen else math.nan

    @property
    def accuracy(self) -> float:
        return self.correct / self.counted if self.counted else math.nan


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (GPU kernels run asynchronously): call it before
    reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
