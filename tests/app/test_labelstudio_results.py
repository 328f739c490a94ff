"""The BrushLabels results of one Label Studio prediction, built in process: one result per
labelled class present with Label Studio's fields, its mask in the brush RLE (read back by
the test's own decoder), per-class and overall scores, and the size estimate the answer
budget (and its 413 detail) uses."""

from __future__ import annotations

import json

import numpy as np

from app.imaging.masks.labelstudio import BrushTarget, brush_results, results_size_bound
from tests.app.test_labelstudio_brush_rle import painted

TARGET = BrushTarget("paint", "img", "picture", {2: "Sky", 0: "Red", 1: "green"})
# Class 1 ("green") is absent and comes between the two present classes.
LABELS = np.array([[0, 0, 2], [2, 2, 2]], np.uint8)
# Top-class probability x 255: class 0 has 255 and 0 (mean 0.5), class 2 has 1, 2, 3, 4
# (mean 2.5 / 255 = 0.00980392...), all six 265 / 6 / 255 = 0.17320261...
CONFIDENCE = np.array([[255, 0, 1], [2, 3, 4]], np.uint8)


def result(index: int, label: str, score: float) -> dict[str, object]:
    return {
        "id": f"task7-{index}",
        "from_name": "paint",
        "to_name": "img",
        "type": "brushlabels",
        "original_width": 3,
        "original_height": 2,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": [], "brushlabels": [label]},
        "score": score,
        "readonly": False,
    }


def test_results_with_scores() -> None:
    results, rles, score = brush_results(LABELS, CONFIDENCE, TARGET, "task7-")
    assert results == [result(0, "Red", 0.5), result(2, "Sky", 0.009804)]
    assert score == 0.173203
    assert [type(r["score"]) for r in results] == [float, float]
    assert len(rles) == 2
    for index, rle in zip((0, 2), rles, strict=True):
        assert np.array_equal(painted(rle, LABELS.shape), np.equal(LABELS, index))


def test_results_without_scores_are_sure() -> None:
    """A labels-only model has no confidences: every score is 1.0."""
    results, rles, score = brush_results(LABELS, None, TARGET, "task7-")
    assert results == [result(0, "Red", 1.0), result(2, "Sky", 1.0)]
    assert score == 1.0
    assert len(rles) == 2


def test_no_labelled_class_present() -> None:
    target = BrushTarget("paint", "img", "picture", {1: "green"})
    assert brush_results(LABELS, CONFIDENCE, target, "t") == ([], [], 0.173203)


def test_size_bound_by_hand() -> None:
    """Classes 0 and 2 each have two runs (2 and 4 pixels): a bound of (53 + 2 x 27) // 8
    + 1 = 14 RLE bytes, 4 JSON bytes each plus 512 around; 512 more for the prediction."""
    bound = results_size_bound(LABELS, TARGET)
    assert type(bound) is int
    assert bound == 2 * (14 * 4 + 512) + 512
    assert results_size_bound(LABELS, BrushTarget("p", "i", "k", {1: "green"})) == 512


def answer_bytes(labels: np.ndarray, confidence: np.ndarray, target: BrushTarget) -> int:
    """The JSON bytes of the results with their RLE filled in, as the route answers."""
    results, rles, score = brush_results(labels, confidence, target, "task-123456-")
    for item, rle in zip(results, rles, strict=True):
        item["value"]["rle"] = list(rle)
    body = {"result": results, "score": score, "model_version": "m-0.0.1"}
    return len(json.dumps(body, separators=(",", ":")))


def test_size_bound_covers_the_answer() -> None:
    rng = np.random.default_rng(0)
    target = BrushTarget("p" * 40, "i" * 40, "image", {0: "a" * 40, 1: "b", 2: "c"})
    for shape, classes in (((1, 1), 1), ((40, 60), 3), ((97, 53), 2), ((200, 200), 3)):
        labels = rng.integers(0, classes, shape).astype(np.uint8)
        confidence = rng.integers(0, 256, shape).astype(np.uint8)
        actual = answer_bytes(labels, confidence, target)
        assert actual <= results_size_bound(labels, target), shape
