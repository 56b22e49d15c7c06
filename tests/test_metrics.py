"""metrics.py checked against scikit-learn and torchmetrics on random inputs."""

from dataclasses import asdict

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import precision_recall_fscore_support
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
)

from cvhelpers.metrics import (
    accuracy,
    confusion_matrix,
    expected_calibration_error,
    per_class_report,
    to_labels,
    worst_mistakes,
)

NUM_CLASSES = 7


def random_case(seed: int, n: int = 300, absent: tuple[int, ...] = (5,)):
    """Logits whose argmax never hits the classes in ``absent``, and targets that do."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, NUM_CLASSES)).astype(np.float32)
    logits[:, list(absent)] -= 100.0  # these classes are never predicted
    targets = rng.integers(0, NUM_CLASSES - 1, size=n)  # class 6 never occurs in targets
    # make some predictions right so per-class numbers are not all near zero
    logits[np.arange(0, n, 3), targets[::3]] += 3.0
    return logits, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_matches_sklearn_and_torchmetrics(seed):
    logits, targets = random_case(seed)
    preds = logits.argmax(axis=1)
    ours = confusion_matrix(preds, targets, NUM_CLASSES)
    assert ours.dtype == np.int64 and ours.shape == (NUM_CLASSES, NUM_CLASSES)
    expected = sk_confusion_matrix(targets, preds, labels=range(NUM_CLASSES))
    np.testing.assert_array_equal(ours, expected)
    tm = MulticlassConfusionMatrix(num_classes=NUM_CLASSES)(torch.from_numpy(preds),
                                                            torch.from_numpy(targets))
    np.testing.assert_array_equal(ours, tm.numpy())
    # logits and tensors are accepted too
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(logits), targets, NUM_CLASSES),
                                  ours)
    assert ours[:, 5].sum() == 0 and ours[6].sum() == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_accuracy_matches_torchmetrics_micro_accuracy(seed):
    logits, targets = random_case(seed)
    tm = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")(
        torch.from_numpy(logits), torch.from_numpy(targets))
    assert accuracy(logits, targets) == pytest.approx(tm.item(), abs=1e-7)
    assert accuracy(torch.from_numpy(logits).argmax(1), torch.from_numpy(targets)) == \
        pytest.approx(tm.item(), abs=1e-7)


def test_accuracy_on_segmentation_logits():
    logits = torch.zeros(2, 3, 4, 4)
    logits[:, 1] = 1.0  # predicts class 1 everywhere
    targets = torch.ones(2, 4, 4, dtype=torch.long)
    targets[0, 0, :] = 2
    assert accuracy(logits, targets) == pytest.approx(1 - 4 / 32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_report_matches_sklearn_with_zero_division_0(seed):
    logits, targets = random_case(seed)
    preds = logits.argmax(axis=1)
    names = [f"c{i}" for i in range(NUM_CLASSES)]
    report = per_class_report(confusion_matrix(preds, targets, NUM_CLASSES), names)
    p, r, f, s = precision_recall_fscore_support(targets, preds, labels=range(NUM_CLASSES),
                                                 zero_division=0)
    np.testing.assert_allclose([x.precision for x in report], p, atol=1e-12)
    np.testing.assert_allclose([x.recall for x in report], r, atol=1e-12)
    np.testing.assert_allclose([x.f1 for x in report], f, atol=1e-12)
    assert [x.support for x in report] == list(s)
    assert [x.name for x in report] == names
    assert report[5].precision == 0.0 and report[6].recall == 0.0  # never predicted / absent
    assert set(asdict(report[0])) == {"name", "precision", "recall", "f1", "support"}


def test_worst_mistakes_are_the_most_confident_wrong_ones():
    probs = np.array([
        [0.9, 0.1],   # right
        [0.2, 0.8],   # wrong, conf 0.8
        [0.6, 0.4],   # wrong, conf 0.6
        [0.05, 0.95], # wrong, conf 0.95
        [0.3, 0.7],   # right
    ])
    targets = np.array([0, 0, 1, 0, 1])
    np.testing.assert_array_equal(worst_mistakes(probs, targets, k=2), [3, 1])
    everything = worst_mistakes(torch.tensor(probs), torch.tensor(targets), k=10)
    np.testing.assert_array_equal(everything, [3, 1, 2])
    assert everything.dtype == np.int64


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_bins", [10, 15])
def test_ece_matches_torchmetrics(seed, n_bins):
    logits, targets = random_case(seed, n=500)
    probs = torch.from_numpy(logits * 2).softmax(dim=1)
    expected = MulticlassCalibrationError(num_classes=NUM_CLASSES, n_bins=n_bins, norm="l1")(
        probs, torch.from_numpy(targets)).item()
    assert expected_calibration_error(probs, targets, n_bins=n_bins) == pytest.approx(expected,
                                                                                    abs=1e-6)


def test_ece_of_a_perfectly_calibrated_toy():
    # confidence 0.75 and right 3 times out of 4: calibrated
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.array([1, 1, 1, 1])) == pytest.approx(0.75)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="num_classes=3"):
        confusion_matrix([0, 3], [0, 1], num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="not class ids"):
        to_labels(np.array([0.2, 0.7]))
