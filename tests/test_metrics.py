"""metrics.py checked against scikit-learn and torchmetrics on random inputs."""

from dataclasses import asdict

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import log_loss, precision_recall_fscore_support
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
)

from cvhelpers.evaluation.metrics import (accuracy, confusion_matrix, expected_calibration_error, fit_temperature, negative_log_likelihood, per_class_report, reliability_curve, softmax, to_labels, worst_mistakes)

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


# --- calibration and temperature scaling (added with notebook 10) ----------------------------------


def overconfident_case(seed: int, n: int = 4000, num_classes: int = 5, sharpen: float = 3.0):
    """Labels drawn from softmax(z): z is calibrated by construction; sharpen * z is overconfident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.2, (n, num_classes))
    p = softmax(z)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return sharpen * z, labels


def test_reliability_curve_gives_back_the_ece():
    logits, targets = random_case(0, n=500)
    probs = softmax(2 * logits)
    curve = reliability_curve(probs, targets, n_bins=10)
    assert len(curve.bin_edges) == 11 and curve.counts.sum() == 500
    filled = curve.counts > 0
    ece = np.sum(np.abs(curve.accuracy - curve.confidence)[filled] * curve.counts[filled]) / 500
    assert ece == pytest.approx(expected_calibration_error(probs, targets, n_bins=10))
    assert np.isnan(curve.accuracy[~filled]).all()
    top = probs.max(axis=1)
    in_last = top > 0.9
    assert curve.confidence[-1] == pytest.approx(top[in_last].mean())


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_nll_and_softmax_match_sklearn_log_loss(temperature):
    # no extreme logits here: sklearn clips probabilities at 1e-16 before taking the log
    logits, targets = overconfident_case(1, n=300)
    probs = softmax(logits, temperature)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    expected = log_loss(targets, probs, labels=range(logits.shape[1]))
    assert negative_log_likelihood(logits, targets, temperature) == pytest.approx(expected, rel=1e-9)
    torch_nll = torch.nn.functional.cross_entropy(torch.from_numpy(logits).double() / temperature,
                                                  torch.from_numpy(targets)).item()
    assert negative_log_likelihood(torch.from_numpy(logits), targets, temperature) == \
        pytest.approx(torch_nll, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_temperature_scaling_fixes_an_overconfident_model_on_held_out_data(seed):
    logits, targets = overconfident_case(seed)
    val, test = slice(0, 2000), slice(2000, None)  # fit on one split, judge on the other
    temperature = fit_temperature(logits[val], targets[val])
    assert temperature == pytest.approx(3.0, rel=0.15)  # it recovers the sharpening
    before = negative_log_likelihood(logits[test], targets[test])
    after = negative_log_likelihood(logits[test], targets[test], temperature)
    assert after < before
    ece_before = expected_calibration_error(softmax(logits[test]), targets[test])
    ece_after = expected_calibration_error(softmax(logits[test], temperature), targets[test])
    assert ece_after < ece_before
    # argmax, and so accuracy, never changes
    np.testing.assert_array_equal(softmax(logits, temperature).argmax(1), logits.argmax(1))
    # it is the NLL minimum: nearby temperatures do worse on the data it was fitted on
    fitted = negative_log_likelihood(logits[val], targets[val], temperature)
    for other in (0.9 * temperature, 1.1 * temperature):
        assert negative_log_likelihood(logits[val], targets[val], other) > fitted


def test_temperature_below_one_for_an_underconfident_model():
    logits, targets = overconfident_case(2, sharpen=0.4)
    assert fit_temperature(torch.from_numpy(logits), torch.from_numpy(targets)) < 0.6
