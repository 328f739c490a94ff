"""Douglas-Peucker on rings (app.imaging.masks.simplify) and through polygons(): what a
tolerance keeps, checked against hand-worked outlines and against the plain recursive
Douglas-Peucker of tests/app/test_masks.py, also on rings scaled below the pixel (chords
shorter than 1) with the tolerance scaled alike, which must keep the same points."""

from __future__ import annotations

import numpy as np

from app.imaging.masks.polygons import polygons, ring_area, trace
from app.imaging.masks.simplify import simplify_rings
from tests.app.test_masks import recursive_douglas_peucker


def traced_rings() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    rings = []
    for _ in range(60):
        blocks = rng.random(tuple(rng.integers(2, 7, 2))) < 0.5
        mask = np.kron(blocks, np.ones((int(rng.integers(1, 4)), int(rng.integers(1, 4))), bool))
        traced = trace(mask)
        rings += [traced.ring(k) for k in range(traced.areas.size) if not traced.pinched[k]]
    return rings


def test_zero_tolerance_gives_every_ring_back_as_it_is() -> None:
    with_collinear = np.array([[0, 0], [1, 0], [2, 0], [2, 2], [0, 2]])  # (1, 0) on a side
    two_points = np.array([[0, 0], [3, 0]])
    rings = [with_collinear, two_points]
    for ring, same in zip(simplify_rings(rings, 0.0), rings, strict=True):
        assert np.array_equal(ring, same)
    assert simplify_rings([], 1.0) == []


def test_a_ring_of_one_repeated_point_collapses_quietly() -> None:
    square = np.array([[0, 0], [4, 0], [4, 4], [0, 4]])
    degenerate = np.array([[2, 2], [2, 2], [2, 2], [2, 2]])
    with np.errstate(all="raise"):  # no 0 / 0 on the way
        square_out, degenerate_out = simplify_rings([square, degenerate], 0.5)
    assert np.array_equal(square_out, square)
    assert degenerate_out.shape == (0, 2)


def test_a_staircase_simplifies_to_its_triangle() -> None:
    # Pixels on and below the diagonal: a staircase whose steps are 1/sqrt(2) from the
    # diagonal; at tolerance 1 the outline is the triangle (0,0), (6,6), (0,6): 3 points.
    mask = np.tril(np.ones((6, 6), bool))
    (exact,) = polygons(mask)
    assert len(exact) == 1 and exact[0].shape[0] == 14 and ring_area(exact[0]) == 21
    (simple,) = polygons(mask, 1.0)
    assert len(simple) == 1
    assert sorted(map(tuple, simple[0].tolist())) == [(0, 0), (0, 6), (6, 6)]
    assert ring_area(simple[0]) == 18  # still the positive (outer) orientation
    (steps,) = polygons(mask, 0.5)  # the steps' outer corners are 0.707 off: kept
    assert steps[0].shape[0] > 3


def test_simplification_keeps_the_recursive_points_at_any_scale() -> None:
    rings = traced_rings()
    assert len(rings) > 100
    for tolerance in (0.6, 1.0, 1.5, 2.2):
        unscaled = simplify_rings(rings, tolerance)
        for scale in (1.0, 0.5, 0.25):  # powers of two: exact in floating point
            scaled = [ring * scale for ring in rings]
            fast = simplify_rings(scaled, tolerance * scale)
            for ring, got in zip(scaled, fast, strict=True):
                assert np.array_equal(got, recursive_douglas_peucker(ring, tolerance * scale))
            # The same points whatever the scale: tolerance and coordinates scale alike,
            # also where chords get shorter than 1.
            for got, base in zip(fast, unscaled, strict=True):
                assert np.array_equal(got, base * scale)
