"""Class imbalance helpers against scikit-learn, and a tiny end-to-end run of each strategy."""

import numpy as np
import pytest
import torch
from sklearn.metrics import recall_score
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import TensorDataset

from cvhelpers.classification.imbalance import (STRATEGIES, balanced_class_weights, balanced_sampler, imbalanced_subset, minority_recall, per_class_recall, train_with_strategy)


@pytest.fixture
def labels():
    return np.random.default_rng(0).integers(0, 5, 600)


def test_imbalanced_subset_counts(labels):
    idx = imbalanced_subset(labels, per_class=80, minority_classes=[1, 3], ratio=20, seed=0)
    counts = np.bincount(labels[idx], minlength=5)
    assert counts.tolist() == [80, 4, 80, 4, 80]
    assert len(np.unique(idx)) == len(idx) and np.all(np.diff(idx) > 0)
    again = imbalanced_subset(labels, per_class=80, minority_classes=[1, 3], ratio=20, seed=0)
    assert np.array_equal(idx, again)
    with pytest.raises(ValueError, match="class"):
        imbalanced_subset(labels, per_class=10_000, minority_classes=[1])


def test_class_weights_match_sklearn_balanced(labels):
    idx = imbalanced_subset(labels, per_class=80, minority_classes=[2], ratio=8)
    ours = balanced_class_weights(labels[idx], 5)
    reference = compute_class_weight("balanced", classes=np.arange(5), y=labels[idx])
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-6)
    assert balanced_class_weights(np.array([0, 0, 1]), 3)[2] == 0  # an absent class


def test_sampler_draws_classes_about_equally(labels):
    idx = imbalanced_subset(labels, per_class=100, minority_classes=[0, 4], ratio=20)
    y = labels[idx]
    sampler = balanced_sampler(y, num_samples=20_000, seed=1)
    drawn = np.bincount(y[np.fromiter(iter(sampler), dtype=np.int64)], minlength=5) / 20_000
    np.testing.assert_allclose(drawn, 0.2, atol=0.015)
    assert list(balanced_sampler(y, seed=3)) == list(balanced_sampler(y, seed=3))


def test_recall_matches_sklearn():
    rng = np.random.default_rng(1)
    targets, preds = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    reference = recall_score(targets, preds, average=None, labels=range(4))
    np.testing.assert_allclose(per_class_recall(preds, targets, 4), reference)
    assert minority_recall(preds, targets, [1, 3], 4) == pytest.approx(reference[[1, 3]].mean())


def _imbalanced_task(seed: int, counts: tuple[int, ...]) -> tuple[TensorDataset, torch.Tensor]:
    """Noise images whose mean grows with the class (a weak, learnable signal), ``counts`` per class."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    x = torch.randn(len(y), 1, 28, 28, generator=generator) + 0.15 * y[:, None, None, None]
    return TensorDataset(x, y), y


def test_each_strategy_reports_its_recall_and_changes_the_training():
    train, y = _imbalanced_task(0, (60, 60, 8))  # class 2 rare
    test, _ = _imbalanced_task(1, (40, 40, 40))  # balanced, as the function asks
    runs = {strategy: train_with_strategy(strategy, train, y.numpy(), test, minority_classes=[2], num_classes=3,
                                          epochs=2, batch_size=32, width=4, device="cpu")
            for strategy in STRATEGIES}
    for strategy, run in runs.items():
        assert run.strategy == strategy and len(run.recall) == 3
        assert run.minority_recall == pytest.approx(run.recall[2])
        assert run.accuracy == pytest.approx(np.mean(run.recall))  # on a balanced test set, accuracy = mean recall
    # a strategy that were silently ignored would train exactly as "plain" does (same seed, same data)
    assert runs["weighted"].recall != runs["plain"].recall and runs["sampler"].recall != runs["plain"].recall
    with pytest.raises(ValueError, match="strategy must be one of"):
        train_with_strategy("oversample", train, y.numpy(), test, [2], num_classes=3, epochs=1)
