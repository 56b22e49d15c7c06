"""What one training step computes, per task, in the form the engine takes.

A *step function* turns one batch (already on the device) into ``(loss, outputs, targets)``:

* ``loss``: a scalar tensor, or a dict of named scalar tensors (a torchvision detector's loss
  dict); the engine adds a dict up, trains on the sum and logs each part;
* ``outputs``, ``targets``: class scores and integer labels when the engine should count
  accuracy (``N x C [x ...]`` vs ``N [x ...]``), else ``None``.

The engine (:func:`cvhelpers.train.engine.fit`) wraps the step in autocast, gradient scaling,
accumulation and clipping, so a step holds only what differs between tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["StepFn", "Loss", "supervised_step", "loss_and_parts", "move_to_device",
           "batch_size_of", "count_correct", "autocast"]

Loss = torch.Tensor | Mapping[str, torch.Tensor]

# step_fn(model, batch_on_device, loss_fn) -> (loss, outputs or None, targets or None)
StepFn = Callable[[nn.Module, Any, Callable[..., torch.Tensor] | None],
                  tuple[Loss, torch.Tensor | None, torch.Tensor | None]]


def move_to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move every tensor in ``batch`` (nested tuples, lists, dicts) to ``device``.

    ``channels_last=True`` also stores 4-D floating-point tensors (image batches
    ``N x C x H x W``) in channels-last memory order (see ``fit(channels_last=...)``).
    """
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: move_to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, channels_last) for v in batch)
    return batch


def supervised_step(model: nn.Module, batch: Any, loss_fn: Callable[..., torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The default ``step_fn``: ``batch = (inputs, targets)`` -> ``(loss_fn(model(inputs), targets),
    outputs, targets)``.

    Classification (logits ``N x C`` vs labels ``N``) and semantic segmentation (logits
    ``N x C x H x W`` vs masks ``N x H x W``) both train through it. A model that needs something
    else gets its own step with the same signature, e.g. a torchvision detector that takes
    targets and returns a dict of losses (:func:`cvhelpers.detection.steps.detection_step`).
    """
    inputs, targets = batch
    outputs = model(inputs)
    return loss_fn(outputs, targets), outputs, targets


def batch_size_of(batch: Any) -> int:
    """Samples in a batch (to weight averages): the length of its first tensor or list."""
    if isinstance(batch, dict):
        first = next(iter(batch.values()))
    elif isinstance(batch, (list, tuple)):
        first = batch[0]
    else:
        first = batch
    return first.shape[0] if isinstance(first, torch.Tensor) else len(first)


def count_correct(outputs: torch.Tensor | None, targets: torch.Tensor | None
                  ) -> torch.Tensor | None:
    """``[correct, counted]`` (a float tensor on the outputs' device, so no GPU sync) for class
    scores ``N x C [x ...]`` vs integer labels ``N [x ...]``; ``None`` when they are not that."""
    if (outputs is None or targets is None or targets.is_floating_point()
            or outputs.ndim != targets.ndim + 1 or outputs.shape[0] != targets.shape[0]):
        return None
    valid = targets >= 0  # skips ignore_index=-100 pixels in segmentation
    correct = ((outputs.argmax(dim=1) == targets) & valid).sum()
    return torch.stack([correct, valid.sum()]).float()


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` for ``device`` in ``amp_dtype``; a no-op when ``amp_dtype`` is None."""
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def loss_and_parts(loss: Loss) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total, parts)``: a dict of losses is summed (its entries are the parts); a tensor is
    its own total with no parts.

    >>> total, parts = loss_and_parts({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})
    >>> float(total), sorted(parts)
    (3.0, ['a', 'b'])
    """
    if isinstance(loss, Mapping):
        parts = dict(loss)
        if not parts:
            raise ValueError("the step returned an empty loss dict")
        return torch.stack([v.float() for v in parts.values()]).sum(), parts
    return loss, {}
