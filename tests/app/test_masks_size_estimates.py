"""The GeoJSON and COCO answers' size estimates, which decide the 413 before anything is
built: they must hold for the worst maps (isolated pixels: one ring per pixel and class),
stay close enough not to refuse answers that fit, and be whole byte counts (the 413 message
prints them). Expected values are worked out by hand."""

from __future__ import annotations

from itertools import groupby

import numpy as np

from app.imaging.georef import GeoReference
from app.imaging.masks.coco import coco_document, coco_size_bound, run_count_bound
from app.imaging.masks.geojson import feature_collection, geojson_size_bound

NORTH_UP = GeoReference(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_600_000.0, 32633)


def isolated_pixels(side: int) -> np.ndarray:
    labels = np.zeros((side, side), np.uint8)
    labels[1::2, 1::2] = 1  # every pixel of class 1 alone: a square, and a hole in class 0
    return labels


def test_isolated_pixels_fit_the_geojson_estimate() -> None:
    # 2401 one-pixel squares and as many holes, two-digit coordinates almost everywhere:
    # each ring's brackets and commas have to be counted, not only its points.
    labels = isolated_pixels(99)
    for georef in (None, NORTH_UP):
        body = feature_collection(labels, ["a", "b"], 0.0, georef, {})
        assert len(body) <= geojson_size_bound(labels, ["a", "b"], georef is not None)


def test_the_geojson_estimate_is_close_for_isolated_pixels() -> None:
    """A looser estimate would refuse answers that fit SEG_MAX_ANSWER_BYTES."""
    labels = isolated_pixels(99)
    body = feature_collection(labels, ["a", "b"], 0.0, None, {})
    assert geojson_size_bound(labels, ["a", "b"], False) <= 1.06 * len(body)


def test_estimates_of_one_pixel_by_hand() -> None:
    labels = np.zeros((1, 1), np.uint8)
    # One ring of 4 corners written as 5 points "[x,y]," of one-digit numbers (6 bytes), or
    # of two 19-character numbers (42 bytes) in map coordinates; 4 bytes of ring and
    # polygon brackets; 400 for the feature and 5 for its name "sky" (with its quotes);
    # 1024 for the collection.
    assert geojson_size_bound(labels, ["sky"], False) == 5 * 6 + 4 + 400 + 5 + 1024
    assert geojson_size_bound(labels, ["sky"], True) == 5 * 42 + 4 + 400 + 5 + 1024


def test_coco_estimate_by_hand() -> None:
    labels = np.array([[0, 2], [1, 2]], np.uint8)
    # Column by column: 0 1 2 2, two changes of class; each starts a run in two masks, and
    # each of the 3 classes' masks may have 2 more: 10 runs of at most 7 characters, 320
    # bytes an entry, the names as JSON strings ("a", "bb", "ccc": 3 + 4 + 5 bytes) twice
    # (categories and annotations), 1024 for the document.
    assert coco_size_bound(labels, ["a", "bb", "ccc"]) == 10 * 7 + 3 * 320 + 2 * 12 + 1024


def runs_of(labels: np.ndarray) -> int:
    """The run lengths pycocotools writes for every class mask together: the runs of the
    column-major mask, with a leading empty run where it starts with the class."""
    flat = labels.ravel(order="F").tolist()
    total = 0
    for value in set(flat):
        groups = [key for key, _ in groupby(v == value for v in flat)]
        total += len(groups) + (1 if groups[0] else 0)
    return total


def test_run_count_bound_holds_and_is_reached_by_one_class() -> None:
    rng = np.random.default_rng(5)
    alternating = np.indices((6, 7)).sum(axis=0) % 2  # a checkerboard: every pixel a change
    for labels in (alternating, rng.integers(0, 4, (9, 11)), isolated_pixels(9)):
        flat = labels.ravel(order="F")
        assert run_count_bound(flat, int(labels.max()) + 1) >= runs_of(labels)
    single = np.zeros((3, 4), np.uint8)  # one mask, all ones: the runs 0 and 12
    assert run_count_bound(single.ravel(order="F"), 1) == runs_of(single) == 2


def test_estimates_are_whole_bytes() -> None:
    for labels in (np.zeros((1, 1), np.uint8), isolated_pixels(9)):
        assert isinstance(geojson_size_bound(labels, ["a", "b"], False), int)
        assert isinstance(coco_size_bound(labels, ["a", "b"]), int)
        assert len(coco_document(labels, ["a", "b"], {})) <= coco_size_bound(labels, ["a", "b"])


def test_long_class_names_fit_the_estimates() -> None:
    """Class names come from the model's spec and may be long or non-ASCII (written as
    \\u escapes): both answers write them, so both estimates count them."""
    labels = np.array([[0, 1, 2]], np.uint8)
    names = ["n" * 2000, "é" * 1500, "x"]
    header = {"model": {"name": "m", "version": "1"}, "width": 3, "height": 1}
    coco = coco_document(labels, names, header)
    geojson = feature_collection(labels, names, 0.0, None, header)
    assert len(coco) > 5000 and len(geojson) > 5000  # the names dominate both answers
    assert len(coco) <= coco_size_bound(labels, names)
    assert len(geojson) <= geojson_size_bound(labels, names, False)
