"""Learning-rate shapes over a run's progress, for ``fit(..., lr_schedule=...)``.

A schedule here is a function ``factor(progress) -> float``: ``progress`` goes from 0 to 1 over
the run (over its epochs, its steps or its time budget, whichever ends it first) and each
parameter group's learning rate is its starting value times the factor. Because it reads
progress rather than a step count, the same schedule works for fixed work and for a clock.

>>> schedule = warmup_cosine(warmup=0.1)
>>> [round(schedule(p), 3) for p in (0.0, 0.05, 0.1, 0.55, 1.0)]
[0.05, 0.5, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["warmup_cosine"]


def warmup_cosine(warmup: float = 0.05, start: float = 0.05, end: float = 0.0
                  ) -> Callable[[float], float]:
    """Linear warm-up over the first ``warmup`` fraction of the run (from ``start`` times the
    learning rate, never 0), then a half cosine from the full rate down to ``end`` times it.

    Warm-up protects pretrained weights and BatchNorm statistics from the first, noisy
    gradients; the cosine ends the run with small steps that settle the weights.
    """
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be in [0, 1), got {warmup}")

    def factor(progress: float) -> float:
        if progress < warmup:
            return max(progress / warmup, start)
        done = min((progress - warmup) / (1 - warmup), 1.0)
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * done))

    return factor
