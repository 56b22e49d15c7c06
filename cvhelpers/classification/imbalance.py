"""Class imbalance: make an imbalanced subset, then balance training with weights or sampling.

Two standard fixes, both a few lines:

- **weighted loss**: ``nn.CrossEntropyLoss(weight=balanced_class_weights(labels, K))`` makes a
  mistake on a rare class cost as much, in total, as one on a common class;
- **re-sampling**: ``DataLoader(..., sampler=balanced_sampler(labels))`` draws every class
  equally often (rare images repeat within an epoch).

:func:`train_with_strategy` trains the course's ``SmallCNN`` with ``cvhelpers.train.engine.fit`` under
one of ``"plain"``, ``"weighted"`` or ``"sampler"`` and reports the recall of the rare classes.

Example::

    idx = imbalanced_subset(labels, per_class=1000, minority_classes=[2, 4, 6], ratio=20)
    loss_fn = torch.nn.CrossEntropyLoss(weight=balanced_class_weights(labels[idx], 10))
    sampler = balanced_sampler(labels[idx], seed=0)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from cvhelpers.data.loading import make_loader
from cvhelpers.env import seed_everything
from cvhelpers.evaluation.metrics import confusion_matrix, per_class_report, to_labels
from cvhelpers.models.cnn import SmallCNN
from cvhelpers.train.engine import fit
from cvhelpers.train.evaluate import predict

__all__ = [
    "STRATEGIES", "imbalanced_subset", "balanced_class_weights", "balanced_sampler",
    "per_class_recall", "minority_recall", "ImbalanceRun", "train_with_strategy",
]

STRATEGIES = ("plain", "weighted", "sampler")


def imbalanced_subset(labels: np.ndarray, per_class: int, minority_classes: Sequence[int],
                      ratio: float = 20.0, seed: int = 0) -> np.ndarray:
    """Indices of a subset with ``per_class`` examples of each class but the minority ones,
    which get ``round(per_class / ratio)`` each (so ``ratio=20`` means 1:20).

    Args:
        labels: ``int N`` class ids of the full set.
    Returns:
        Sorted ``int64`` indices into ``labels``.
    Raises:
        ValueError: a class has fewer than the requested examples.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    minority = set(int(c) for c in minority_classes)
    chosen = []
    for c in np.unique(labels):
        n = max(1, round(per_class / ratio)) if int(c) in minority else per_class
        pool = np.flatnonzero(labels == c)
        if len(pool) < n:
            raise ValueError(f"class {c} has {len(pool)} examples, {n} requested")
        chosen.append(rng.choice(pool, n, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``float32 K`` weights ``n / (K * count_k)``: the rarer a class, the more its mistakes cost.

    The same formula as scikit-learn's ``compute_class_weight("balanced")``; a perfectly
    balanced set gets all ones. A class absent from ``labels`` gets weight 0.
    """
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def balanced_sampler(labels: np.ndarray, num_samples: int | None = None, seed: int = 0
                     ) -> WeightedRandomSampler:
    """A sampler that draws each class equally often: sample weight ``1 / count(its class)``.

    Draws ``num_samples`` (default ``len(labels)``) indices per epoch *with replacement*, so a
    rare image appears many times per epoch and some common images not at all. Its own seeded
    generator makes the order repeatable. Pass it as ``DataLoader(..., sampler=...)`` (and no
    ``shuffle``).
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    sample_weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    return WeightedRandomSampler(sample_weights, num_samples or len(labels), replacement=True,
                                 generator=torch.Generator().manual_seed(seed))


def per_class_recall(preds: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """``float K`` recall of each class: of its true examples, the fraction predicted as it."""
    cm = confusion_matrix(preds, targets, num_classes)
    return np.array([r.recall for r in per_class_report(cm)])


def minority_recall(preds: np.ndarray, targets: np.ndarray, minority_classes: Sequence[int],
                    num_classes: int) -> float:
    """Mean recall over ``minority_classes`` (evaluate on a *balanced* test set)."""
    return float(per_class_recall(preds, targets, num_classes)[list(minority_classes)].mean())


@dataclass
class ImbalanceRun:
    """What one training run under a strategy achieved on the test set."""

    strategy: str
    seed: int
    minority_recall: float
    accuracy: float
    recall: list[float] = field(default_factory=list)  # per class
    seconds: float = 0.0


def train_with_strategy(strategy: str, train_set: Dataset, train_labels: np.ndarray,
                        test_set: Dataset, minority_classes: Sequence[int], num_classes: int = 10,
                        epochs: int = 4, seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
                        width: int = 16, device: str = "auto") -> ImbalanceRun:
    """Train a fresh ``SmallCNN`` on ``train_set`` with one imbalance strategy; test it.

    Args:
        strategy: ``"plain"`` (shuffle, plain cross-entropy), ``"weighted"``
            (cross-entropy with :func:`balanced_class_weights`) or ``"sampler"``
            (:func:`balanced_sampler`, plain cross-entropy).
        train_set: yields ``(float32 1 x 28 x 28, int64 label)``; ``train_labels`` its labels.
        test_set: a *balanced* set, so that recall means the same for every class.
        width: ``SmallCNN`` width; ``epochs``, ``batch_size``, ``lr``: AdamW with a one-cycle
            schedule peaking at ``lr``.

    Returns:
        An :class:`ImbalanceRun` with the test accuracy and minority-class recall.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    seed_everything(seed)
    model = SmallCNN(in_channels=1, num_classes=num_classes, width=width)
    weights = balanced_class_weights(train_labels, num_classes) if strategy == "weighted" else None
    if strategy == "sampler":
        loader: DataLoader = make_loader(train_set, batch_size, shuffle=False, seed=seed,
                                         sampler=balanced_sampler(train_labels, seed=seed))
    else:
        loader = make_loader(train_set, batch_size, shuffle=True, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    # The learning rate ends near zero, so the result does not hinge on the last few noisy
    # steps (a rare class's recall swings a lot between neighbouring steps).
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr,
                                                    total_steps=epochs * len(loader))
    start = time.perf_counter()
    fit(model, loader, None, epochs=epochs, optimizer=optimizer, scheduler=scheduler,
        loss_fn=nn.CrossEntropyLoss(weight=weights), monitor="train_loss", restore_best=False,
        device=device, progress=False)
    seconds = time.perf_counter() - start
    logits, targets = predict(model, make_loader(test_set, 512, shuffle=False))
    preds, targets = to_labels(logits), targets.numpy()
    recall = per_class_recall(preds, targets, num_classes)
    return ImbalanceRun(strategy, seed, float(recall[list(minority_classes)].mean()),
                        float((preds == targets).mean()), recall.tolist(), seconds)
