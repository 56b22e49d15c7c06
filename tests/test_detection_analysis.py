"""The detection confusion matrix (with background), per-image errors and simulated predictions."""

from __future__ import annotations

import numpy as np
import pytest

from cvhelpers.detection.coco_eval import evaluate_coco, evaluate_detections
from cvhelpers.data.coco import AnnotatedImage
from cvhelpers.data.scenes import generate_scenes
from cvhelpers.detection.analysis import (confused_objects, detection_confusion_matrix, image_errors, match_class_agnostic,
                                          simulate_detections)
from cvhelpers.detection.metrics import Detections
from cvhelpers.evaluation.metrics import per_class_report, worst_indices

pytestmark = pytest.mark.filterwarnings("ignore:.*__array__ implementation:DeprecationWarning")


def sample(boxes, labels, crowd=None) -> AnnotatedImage:
    return AnnotatedImage(np.zeros((100, 100, 3), np.uint8), np.array(boxes, np.float32).reshape(-1, 4),
                          np.array(labels, np.int64), iscrowd=None if crowd is None else np.array(crowd))


def detections(boxes, labels, scores) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(labels, np.int64))


def test_greedy_matching_uses_the_best_pairs_first():
    # prediction 0 overlaps object 0 best; prediction 1 overlaps object 0 too, but also object 1
    ious = np.array([[0.9, 0.0], [0.8, 0.6]])
    assert match_class_agnostic(ious, 0.5) == [(0, 0), (1, 1)]
    assert match_class_agnostic(ious, 0.7) == [(0, 0)]


def test_confusion_matrix_by_hand():
    truth = [sample([[0, 0, 20, 20], [50, 50, 70, 70], [0, 60, 20, 80]], [0, 1, 2])]
    predicted = [detections(
        [[0, 0, 20, 21],      # class 0 found as 0: correct
         [50, 50, 70, 69],    # class 1 found as 2: confusion
         [80, 0, 99, 20],     # on nothing: a false positive of class 1
         [0, 60, 20, 80]],    # would find class 2, but its score is below the threshold
        [0, 2, 1, 2], [0.9, 0.8, 0.7, 0.2])]
    cm = detection_confusion_matrix(predicted, truth, num_classes=3, score_threshold=0.5)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = 1  # correct
    expected[1, 2] = 1  # class 1 predicted as class 2
    expected[2, 3] = 1  # class 2 missed (background column)
    expected[3, 1] = 1  # false positive of class 1 (background row)
    np.testing.assert_array_equal(cm, expected)
    (errors,) = image_errors(predicted, truth, num_classes=3, score_threshold=0.5)
    assert (errors.correct, errors.wrong_class, errors.missed, errors.false_positives) == (1, 1, 1, 1)
    assert errors.total == 3
    # lowering the threshold finds class 2
    assert detection_confusion_matrix(predicted, truth, 3, score_threshold=0.1)[2, 2] == 1


def test_crowd_regions_neither_count_nor_punish():
    truth = [sample([[0, 0, 50, 50], [60, 60, 90, 90]], [0, 0], crowd=[True, False])]
    predicted = [detections([[5, 5, 30, 30], [60, 60, 90, 90]], [0, 0], [0.9, 0.9])]
    cm = detection_confusion_matrix(predicted, truth, num_classes=1)
    np.testing.assert_array_equal(cm, [[1, 0], [0, 0]])


def test_confusion_matrix_sums_and_per_class_report_on_scenes():
    scenes = generate_scenes("test", 12, seed=4)
    predicted = simulate_detections(scenes, seed=1, false_positives_per_image=1.0)
    cm = detection_confusion_matrix(predicted, scenes, num_classes=4, score_threshold=0.3)
    true_counts = np.bincount(np.concatenate([s.labels for s in scenes]), minlength=4)
    kept = np.concatenate([p.labels[p.scores >= 0.3] for p in predicted])
    np.testing.assert_array_equal(cm[:4].sum(axis=1), true_counts)  # every object once
    np.testing.assert_array_equal(cm[:, :4].sum(axis=0), np.bincount(kept, minlength=4))
    assert cm[4, 4] == 0
    reports = per_class_report(cm, ["circle", "triangle", "square", "star", "background"])[:4]
    for k, report in enumerate(reports):
        assert report.recall == pytest.approx(cm[k, k] / true_counts[k])
        assert report.precision == pytest.approx(cm[k, k] / max(cm[:, k].sum(), 1))


def test_confused_objects_are_the_cases_behind_each_cell():
    scenes = generate_scenes("test", 12, seed=4)
    predicted = simulate_detections(scenes, seed=1, false_positives_per_image=1.0, wrong_class_rate=0.3)
    cm = detection_confusion_matrix(predicted, scenes, num_classes=4, score_threshold=0.3)
    assert cm[:4, :4].sum() > np.trace(cm[:4, :4])  # some confusions to find
    for a in range(4):
        for b in range(4):
            cases = confused_objects(predicted, scenes, a, b, score_threshold=0.3)
            assert len(cases) == cm[a, b]
            for image, obj, pred in cases:
                assert scenes[image].labels[obj] == a and predicted[image].labels[pred] == b
                assert predicted[image].scores[pred] >= 0.3


def test_worst_images_orders_by_mistakes():
    errors = image_errors(
        [detections([], [], []), detections([[0, 0, 9, 9]], [0], [0.9]), detections([], [], [])],
        [sample([[0, 0, 10, 10]], [0]), sample([[0, 0, 10, 10]], [0]), sample([], [])], 1)
    assert [e.total for e in errors] == [1, 0, 0]
    totals = [e.total for e in errors]
    assert worst_indices(totals, k=3, higher_is_better=False, skip=0).tolist() == [0]  # images without mistakes are not listed
    more = [0, 2, 5, 2, 0, 1]  # worst first, ties keep image order, k caps the list
    assert worst_indices(more, k=3, higher_is_better=False, skip=0).tolist() == [2, 1, 3]
    assert worst_indices(more, k=10, higher_is_better=False, skip=0).tolist() == [2, 1, 3, 5]


def test_simulation_is_deterministic_and_perfect_without_noise():
    scenes = generate_scenes("val", 8, seed=5)
    first = simulate_detections(scenes, seed=3, with_masks=True)
    again = simulate_detections(scenes, seed=3, with_masks=True)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.masks, b.masks)
    assert all(p.masks.shape[1:] == (160, 160) for p in first)
    perfect = simulate_detections(scenes, miss_rate=0, box_noise=0, wrong_class_rate=0,
                                  duplicate_rate=0, false_positives_per_image=0, with_masks=True)
    for iou_type in ("bbox", "segm"):
        assert evaluate_coco(perfect, scenes, iou_type=iou_type)["map50_95"] == pytest.approx(1.0)
    noisy = evaluate_detections(simulate_detections(scenes, seed=3), scenes)
    assert 0.1 < noisy.mean_ap() < noisy.mean_ap(0.5) < 1.0
