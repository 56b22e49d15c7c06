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


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_train_with_strategy_runs_and_reports(strategy):
    torch.manual_seed(0)
    x = torch.randn(96, 1, 28, 28)
    y = torch.arange(96) % 3
    x[y == 1] += 1.0  # learnable signal
    data = TensorDataset(x, y)
    run = train_with_strategy(strategy, data, y.numpy(), data, minority_classes=[2], num_classes=3,
                              epochs=1, batch_size=32, width=4, device="cpu")
    assert run.strategy == strategy and len(run.recall) == 3
    assert 0.0 <= run.minority_recall <= 1.0 and 0.0 <= run.accuracy <= 1.0
    with pytest.raises(ValueError):
        train_with_strategy("oversample", data, y.numpy(), data, [2], num_classes=3, epochs=1)
