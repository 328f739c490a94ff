import numpy as np
import pytest

from models.metrics import (
    adapted_rand_error,
    confusion_matrix,
    global_accuracy,
    iou_per_class,
    mean_iou,
    pixel_error,
    summarize,
)


def test_confusion_matrix_counts_and_ignores() -> None:
    target = np.array([[0, 0, 1], [1, 2, 3]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, target, num_classes=3, ignore_index=3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_iou_accuracy_and_error_by_hand() -> None:
    cm = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    # class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0 -> 0
    assert iou_per_class(cm) == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert mean_iou(cm) == pytest.approx(1 / 3)
    assert global_accuracy(cm) == pytest.approx(3 / 5)
    assert pixel_error(cm) == pytest.approx(2 / 5)


def test_absent_class_is_nan_and_skipped_in_mean() -> None:
    cm = np.array([[2, 0, 0], [0, 2, 0], [0, 0, 0]])
    assert np.isnan(iou_per_class(cm)[2])
    assert mean_iou(cm) == 1.0
    assert summarize(cm, ["a", "b", "c"])["iou/a"] == 1.0


def test_rand_error_zero_for_identical_and_split_invariant_labels() -> None:
    target = np.ones((6, 6), np.uint8)
    target[:, 3] = 0  # two cells split by a membrane column
    assert adapted_rand_error(target, target) == 0.0


def test_rand_error_by_hand_for_merged_cells() -> None:
    # Two true cells of 3 pixels each; the prediction merges them into one segment.
    target = np.array([[1, 1, 1, 0, 1, 1, 1]])
    pred = np.ones_like(target)
    # n = 6 cell pixels; sum_ab = 3^2 + 3^2 - 6 = 12; sum_a = 12; sum_b = 6^2 - 6 = 30
    precision, recall = 12 / 30, 12 / 12
    expected = 1 - 2 * precision * recall / (precision + recall)
    assert adapted_rand_error(pred, target) == pytest.approx(expected)


def test_rand_error_by_hand_for_thick_membrane() -> None:
    # One true cell of 4 pixels; the prediction marks one of them membrane (a singleton).
    target = np.array([[1, 1, 1, 1]])
    pred = np.array([[1, 1, 1, 0]])
    # joint counts 3 and 1 -> sum_ab = 9 + 1 - 4 = 6; sum_a = 16 - 4 = 12; sum_b = 6
    precision, recall = 6 / 6, 6 / 12
    assert adapted_rand_error(pred, target) == pytest.approx(
        1 - 2 * precision * recall / (precision + recall)
    )
