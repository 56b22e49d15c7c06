"""Repeatable data loading: shuffling from the loader's own generator, and worker processes that
each draw their own random numbers (the run's seed: :func:`cvhelpers.env.seed_everything`).

Datasets in the course take their augmentation randomness from torch's global generator
(``torch.rand``, ``torch.randint``). In the main process that generator is what
:func:`cvhelpers.env.seed_everything` seeds and what a checkpoint saves; in a ``DataLoader`` worker torch
seeds it anew every epoch with ``base_seed + worker_id``, where ``base_seed`` comes from the
loader's generator. So workers draw different numbers, each epoch draws new ones, and the same
seed still gives the same run. :func:`seed_worker` extends that to NumPy and Python's
``random`` for code that uses them.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["seed_worker", "make_loader"]


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for a ``DataLoader``: seed NumPy and ``random`` from the seed torch
    gave this worker (different per worker and per epoch, fixed by the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False, **loader_kwargs: Any) -> DataLoader:
    """A ``DataLoader`` whose shuffling comes from its own ``torch.Generator`` seeded with ``seed``.

    The order of epoch ``e`` then depends only on ``seed`` and ``e``, not on whatever else used
    the global RNG, and :func:`cvhelpers.train.engine.fit` saves and restores the generator to
    resume exactly. Workers are seeded from the same generator (see :func:`seed_worker`). Extra
    keyword arguments (such as ``collate_fn``) go to ``DataLoader``; keep ``persistent_workers``
    off for exact resuming.

    >>> loader = make_loader(list(range(10)), batch_size=4, shuffle=True, seed=0)
    >>> len(loader)
    3
    """
    generator = torch.Generator().manual_seed(seed)
    loader_kwargs.setdefault("worker_init_fn", seed_worker)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      drop_last=drop_last, generator=generator, **loader_kwargs)
