"""Run a model without training it: :func:`evaluate` (loss, accuracy) and :func:`predict` (outputs).

Both share the batch conventions of the engine (:mod:`cvhelpers.train.engine`): a loader yields
``(images, labels)`` and a ``step_fn`` turns one batch into ``(loss, outputs, targets)`` (see
:func:`cvhelpers.train.steps.supervised_step`). :func:`evaluate` is the engine's default
validator; tasks whose models give no loss in eval mode bring their own (detection's mAP,
segmentation's mIoU).

Example::

    metrics = evaluate(model, test_loader)           # {"loss": 0.31, "accuracy": 0.89}
    probs, labels = predict(model, test_loader, probs=True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from cvhelpers.env import pick_device
from cvhelpers.models.freezing import eval_mode
from cvhelpers.train.steps import (StepFn, autocast, batch_size_of, count_correct, loss_and_parts, move_to_device, supervised_step)

__all__ = ["evaluate", "predict"]

def _place_model(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:  # wherever the model already is
        return next(model.parameters()).device
    device = pick_device(str(device))
    model.to(device)
    return device


def evaluate(model: nn.Module, loader: Iterable, loss_fn: Callable[..., torch.Tensor] | None = None,
             device: str | torch.device | None = None, *, step_fn: StepFn = supervised_step,
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
            loss, _ = loss_and_parts(loss)
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
