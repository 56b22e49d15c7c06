"""Run a model without training it: :func:`evaluate` (loss, accuracy) and :func:`predict` (outputs).

Both share the batch conventions of the training loop in :mod:`cvhelpers.train` (which
re-exports everything here): a loader yields ``(images, labels)`` and a ``step_fn`` turns one
batch into ``(loss, outputs, targets)`` (see :func:`classification_step`).

Example::

    metrics = evaluate(model, test_loader)           # {"loss": 0.31, "accuracy": 0.89}
    probs, labels = predict(model, test_loader, probs=True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from cvhelpers.env import pick_device
from cvhelpers.models import eval_mode

__all__ = ["StepFn", "move_to_device", "classification_step", "evaluate", "predict"]

# step_fn(model, batch_on_device, loss_fn) -> (loss, outputs or None, targets or None)
StepFn = Callable[[nn.Module, Any, Callable[..., torch.Tensor]],
                  tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]


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


def _place_model(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:  # wherever the model already is
        return next(model.parameters()).device
    device = pick_device(str(device))
    model.to(device)
    return device


def evaluate(model: nn.Module, loader: Iterable, loss_fn: Callable[..., torch.Tensor] | None = None,
             device: str | torch.device | None = None, *, step_fn: StepFn = classification_step,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False
             ) -> dict[str, float]:
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
    loss_sum, seen, correct, counted = 0.0, 0, 0, 0
    with eval_mode(model), torch.inference_mode():
        for batch in loader:
            batch = move_to_device(batch, device, channels_last)
            with autocast(device, amp_dtype):
                loss, outputs, targets = step_fn(model, batch, loss_fn)
            n = batch_size_of(batch)
            loss_sum += loss.item() * n
            seen += n
            counts = count_correct(outputs, targets)
            if counts is not None:
                c, k = counts.tolist()
                correct, counted = correct + int(c), counted + int(k)
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
    outputs_list: list[torch.Tensor] = []
    targets_list: list[torch.Tensor] = []
    with eval_mode(model), torch.inference_mode():
        for batch in loader:
            inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
            outputs = model(inputs.to(device)).float()
            outputs_list.append((outputs.softmax(dim=1) if probs else outputs).cpu())
            if isinstance(batch, (list, tuple)):
                targets_list.append(batch[1].cpu())
    return torch.cat(outputs_list), (torch.cat(targets_list) if targets_list else None)
