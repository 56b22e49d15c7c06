"""Classification metrics written in plain NumPy, so every number can be traced by hand.

All functions accept NumPy arrays or torch tensors (any device) and return NumPy values or
Python floats. Class ids are 0-based integers.

Example:
    >>> preds, targets = [0, 1, 1, 2], [0, 1, 2, 2]
    >>> accuracy(preds, targets)
    0.75
    >>> confusion_matrix(preds, targets, num_classes=3)
    array([[1, 0, 0],
           [0, 1, 0],
           [0, 1, 1]])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "to_numpy",
    "to_labels",
    "accuracy",
    "confusion_matrix",
    "ClassReport",
    "per_class_report",
    "worst_indices",
    "worst_mistakes",
    "expected_calibration_error",
    "ReliabilityCurve",
    "reliability_curve",
    "softmax",
    "negative_log_likelihood",
    "fit_temperature",
]


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array from a NumPy array, a list, or a torch tensor (on any device)."""
    if hasattr(x, "detach"):  # a torch tensor; checked by duck typing so torch stays optional
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def to_labels(logits_or_preds: Any, targets: Any | None = None) -> np.ndarray:
    """Predicted class ids as ``int64``.

    ``N x C`` scores (logits or probabilities) become ``argmax`` over dim 1; ``N`` integer ids
    pass through. With ``targets`` given, scores are recognised as having one more dimension
    than the targets (so ``N x C x H x W`` segmentation logits work too).
    """
    values = to_numpy(logits_or_preds)
    target_ndim = to_numpy(targets).ndim if targets is not None else 1
    if values.ndim == target_ndim + 1:
        return values.argmax(axis=1).astype(np.int64)
    if np.issubdtype(values.dtype, np.floating) and not np.all(values == np.round(values)):
        raise ValueError(
            f"got float values of shape {values.shape} that are not class ids; pass N x C scores "
            "or integer predictions"
        )
    return values.astype(np.int64)


def _check_same_shape(preds: np.ndarray, targets: np.ndarray) -> None:
    if preds.shape != targets.shape:
        raise ValueError(f"predictions have shape {preds.shape} but targets {targets.shape}")
    if preds.size == 0:
        raise ValueError("no samples: predictions and targets are empty")


def accuracy(logits_or_preds: Any, targets: Any) -> float:
    """Fraction of correct predictions, in ``[0, 1]``.

    Args:
        logits_or_preds: ``N x C`` scores or ``N`` predicted class ids.
        targets: ``N`` true class ids.
    """
    targets = to_numpy(targets).astype(np.int64)
    preds = to_labels(logits_or_preds, targets)
    _check_same_shape(preds, targets)
    return float((preds == targets).mean())


def confusion_matrix(preds: Any, targets: Any, num_classes: int) -> np.ndarray:
    """Count how often each true class was predicted as each class.

    Args:
        preds: ``N`` predicted class ids (or ``N x C`` scores).
        targets: ``N`` true class ids.
        num_classes: ``K``; ids must lie in ``[0, K)``.

    Returns:
        ``K x K`` ``int64`` array: ``cm[true, predicted]`` (rows = true class, columns =
        predicted class, the same layout as scikit-learn). The diagonal holds the correct ones.
    """
    targets = to_numpy(targets).astype(np.int64).ravel()
    preds = to_labels(preds, targets).ravel()
    _check_same_shape(preds, targets)
    for name, ids in (("predictions", preds), ("targets", targets)):
        if ids.min() < 0 or ids.max() >= num_classes:
            raise ValueError(
                f"{name} hold class ids in [{ids.min()}, {ids.max()}] but num_classes={num_classes}"
            )
    # Each (true, pred) pair gets one number, true * K + pred; counting those numbers fills the
    # matrix row by row.
    counts = np.bincount(targets * num_classes + preds, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


@dataclass(frozen=True)
class ClassReport:
    """Precision, recall and F1 of one class (each in ``[0, 1]``) and its number of true samples."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


def per_class_report(cm: Any, class_names: Sequence[str] | None = None) -> list[ClassReport]:
    """Precision, recall, F1 and support for every class of a confusion matrix.

    ``precision = TP / (TP + FP)`` (of the samples predicted as this class, how many are it),
    ``recall = TP / (TP + FN)`` (of the samples of this class, how many were found),
    ``f1 = 2 * precision * recall / (precision + recall)``. A ratio whose denominator is 0
    (a class never predicted, or absent from the targets) is reported as ``0.0``, as
    scikit-learn does with ``zero_division=0``.

    Args:
        cm: ``K x K`` matrix from :func:`confusion_matrix` (rows true, columns predicted).
        class_names: ``K`` names; default ``"0"``, ``"1"``, ...

    Returns:
        ``K`` :class:`ClassReport` entries in class order (``dataclasses.asdict`` turns each into
        a dict, e.g. for a pandas table).
    """
    cm = to_numpy(cm).astype(np.int64)
    num_classes = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if cm.shape != (num_classes, num_classes) or len(names) != num_classes:
        raise ValueError(f"need a square K x K matrix and K names; got {cm.shape}, "
                         f"{len(names)} names")

    def ratio(a: float, b: float) -> float:
        return float(a / b) if b > 0 else 0.0

    reports = []
    for k in range(num_classes):
        true_positives = cm[k, k]
        predicted = cm[:, k].sum()  # column: everything predicted as k
        actual = cm[k, :].sum()  # row: everything that truly is k
        precision = ratio(true_positives, predicted)
        recall = ratio(true_positives, actual)
        f1 = ratio(2 * precision * recall, precision + recall)
        reports.append(ClassReport(names[k], precision, recall, f1, int(actual)))
    return reports


def worst_indices(scores: Any, k: int, higher_is_better: bool = True,
                  skip: float | None = None) -> np.ndarray:
    """Indices of the ``k`` worst items by a per-item score, worst first (ties keep item order).

    One rule for every "worst images" view: segmentation ranks images by their mIoU
    (``higher_is_better=True``), detection by their number of errors
    (``higher_is_better=False, skip=0``: images without errors are not "worst").

    >>> worst_indices([0.9, 0.2, 0.5], k=2).tolist()
    [1, 2]
    >>> worst_indices([0, 3, 1], k=3, higher_is_better=False, skip=0).tolist()
    [1, 2]
    """
    values = np.asarray(to_numpy(scores), np.float64).ravel()
    order = np.argsort(values if higher_is_better else -values, kind="stable")
    if skip is not None:
        order = order[values[order] != skip]
    return order[:k].astype(np.int64)


def worst_mistakes(probs: Any, targets: Any, k: int = 16) -> np.ndarray:
    """Indices of the ``k`` most confident wrong predictions, most confident first.

    These are the images worth looking at: often mislabelled data or truly ambiguous classes.

    Args:
        probs: ``N x C`` class probabilities (logits give the same order of mistakes only
            within equal softmax normalisers, so prefer probabilities).
        targets: ``N`` true class ids.
        k: how many to return; fewer come back when there are fewer mistakes.

    Returns:
        ``int64`` indices into the ``N`` samples.
    """
    probs = to_numpy(probs)
    targets = to_numpy(targets).astype(np.int64)
    preds = probs.argmax(axis=1)
    _check_same_shape(preds, targets)
    confidence = probs.max(axis=1)
    wrong = np.flatnonzero(preds != targets)
    # stable sort: equal confidences keep their dataset order, so results are reproducible
    order = np.argsort(-confidence[wrong], kind="stable")
    return wrong[order][:k].astype(np.int64)


@dataclass(frozen=True)
class ReliabilityCurve:
    """Confidence against accuracy per confidence bin: the data of a reliability diagram.

    Attributes:
        bin_edges: ``n_bins + 1`` edges from 0 to 1; bin ``b`` is ``(edges[b], edges[b+1]]``.
        confidence: ``n_bins`` mean top probability of the predictions in each bin (``nan``
            for an empty bin).
        accuracy: ``n_bins`` fraction of those predictions that are right (``nan`` if empty).
        counts: ``n_bins`` number of predictions in each bin (``int64``).
    """

    bin_edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray


def reliability_curve(probs: Any, targets: Any, n_bins: int = 15) -> ReliabilityCurve:
    """Group predictions by confidence and measure each group's accuracy.

    Predictions are put into ``n_bins`` equal-width bins ``(0, 1/n], (1/n, 2/n], ...,
    ((n-1)/n, 1]`` by their confidence (the top probability). A calibrated model's points lie
    on the diagonal: of the predictions made with 80 % confidence, 80 % are right.

    Args:
        probs: ``N x C`` class probabilities (apply softmax to logits first).
        targets: ``N`` true class ids.
        n_bins: number of bins (15 is the usual choice).
    """
    probs = to_numpy(probs).astype(np.float64)
    targets = to_numpy(targets).astype(np.int64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == targets).astype(np.float64)
    _check_same_shape(correct, targets.astype(np.float64))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.digitize(confidence, edges[1:-1], right=True)  # 0 .. n_bins-1
    counts = np.bincount(bin_ids, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins become nan
        mean_confidence = np.bincount(bin_ids, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(bin_ids, weights=correct, minlength=n_bins) / counts
    return ReliabilityCurve(edges, mean_confidence, accuracy, counts)


def expected_calibration_error(probs: Any, targets: Any, n_bins: int = 15) -> float:
    """How far confidence is from accuracy, on average (ECE, top-label, L1), in ``[0, 1]``.

    Predictions are grouped by confidence (the top probability) into ``n_bins`` equal-width
    bins ``(0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1]`` (see :func:`reliability_curve`). In each
    bin we compare the mean confidence with the fraction of correct predictions; ECE is the
    average gap weighted by bin size::

        ECE = sum over bins  |accuracy(bin) - confidence(bin)| * count(bin) / N

    A perfectly calibrated model that says "90 %" is right 90 % of the time (ECE 0).

    Args:
        probs: ``N x C`` class probabilities (apply softmax to logits first).
        targets: ``N`` true class ids.
        n_bins: number of bins (15 is the usual choice).
    """
    curve = reliability_curve(probs, targets, n_bins)
    filled = curve.counts > 0
    gaps = np.abs(curve.accuracy[filled] - curve.confidence[filled])
    return float(np.sum(gaps * curve.counts[filled]) / curve.counts.sum())


# --- Temperature scaling ------------------------------------------------------------------------


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """``N x C`` probabilities ``softmax(logits / temperature)`` (``float64``, rows sum to 1).

    A temperature above 1 softens overconfident predictions; it never changes which class is
    the most probable, so accuracy stays the same.
    """
    z = to_numpy(logits).astype(np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)  # subtracting the row max avoids overflow in exp
    exp = np.exp(z)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: Any, targets: Any, temperature: float = 1.0) -> float:
    """Mean ``-log p(true class)`` under ``softmax(logits / temperature)`` (cross-entropy).

    Lower is better; unlike accuracy it punishes confident mistakes hard, which is why it is
    the quantity temperature scaling minimises.
    """
    z = to_numpy(logits).astype(np.float64) / temperature
    targets = to_numpy(targets).astype(np.int64)
    log_norm = z.max(axis=1) + np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(targets)), targets]))


def fit_temperature(logits: Any, targets: Any, max_iter: int = 100) -> float:
    """The temperature ``T`` that minimises the NLL of ``softmax(logits / T)`` (Guo et al., 2017).

    Fit it on a validation split (never on the test set), then divide the test logits by it.
    One number, so it cannot overfit much, and argmax, hence accuracy, never changes.
    Optimised with L-BFGS over ``log T`` (so ``T`` stays positive), starting at ``T = 1``.

    Args:
        logits: ``N x C`` raw scores of the model (not probabilities).
        targets: ``N`` true class ids.
        max_iter: L-BFGS iterations (it usually converges in a handful).

    Returns:
        ``T > 0``: above 1 for an overconfident model, below 1 for an underconfident one.
    """
    import torch  # only this function needs torch

    z = torch.as_tensor(to_numpy(logits), dtype=torch.float64)
    y = torch.as_tensor(to_numpy(targets), dtype=torch.int64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp().item())
