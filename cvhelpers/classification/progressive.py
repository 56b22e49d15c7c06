"""Progressive resizing: train at small image sizes first, then at larger ones (notebook 03)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cvhelpers.train.engine import History, fit

__all__ = ["fit_progressive"]


def fit_progressive(model: torch.nn.Module, stages: list[tuple[int, int]],
                    make_train_loader: Callable[[int], Any], val_loader: Any | None = None,
                    **fit_kwargs: Any) -> list[History]:
    """Progressive resizing: train at small image sizes first, then at larger ones.

    Early epochs only need coarse shapes, and an image of half the side costs about a quarter
    of the compute, so the first stages are cheap; the last stage at full size recovers the
    detail. The model must accept any input size (e.g. ``SmallCNN(head="avg")``).

    Args:
        stages: ``[(size, epochs), ...]`` in order, e.g. ``[(16, 2), (32, 1)]``.
        make_train_loader: builds the training loader for one size, e.g.
            ``lambda size: make_loader(AugmentedDataset(x, y, train_preset(..., size=size)),
            64, shuffle=True)``.
        val_loader: validation data at the final size (or ``None``).
        fit_kwargs: passed to :func:`cvhelpers.train.engine.fit` for every stage (one ``optimizer``
            carries on across stages, so Adam's moment estimates are kept).

    Returns:
        One ``History`` per stage.
    """
    histories = []
    for size, epochs in stages:
        histories.append(fit(model, make_train_loader(size), val_loader, epochs=epochs,
                             **fit_kwargs))
    return histories
