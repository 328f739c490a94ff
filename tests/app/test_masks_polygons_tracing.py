"""Pixel-edge tracing into polygons (app.imaging.masks.polygons) on small hand-made masks
whose outlines are known: exact rings, their orientation (outer rings positive in x right,
y down; holes negative), holes attached to their own region, a region touching itself at a
corner split there, the empty mask, and the polygons filled back into pixels by an even-odd
rasteriser written here, compared with the mask."""

from __future__ import annotations

import numpy as np

from app.imaging.masks.polygons import polygons, ring_area, trace


def canonical(ring: np.ndarray | list[list[int]]) -> list[tuple[int, int]]:
    """A ring as a list of (x, y) starting at its smallest point, direction kept."""
    points = [(int(x), int(y)) for x, y in np.asarray(ring).tolist()]
    start = points.index(min(points))
    return points[start:] + points[:start]


def fill(polygon: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre is inside an odd number of the polygon's rings (even-odd)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    cx, cy = cols + 0.5, rows + 0.5
    inside = np.zeros(shape, bool)
    for ring in polygon:
        x0, y0 = ring[:, 0].astype(float), ring[:, 1].astype(float)
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        for ax, ay, bx, by in zip(x0, y0, x1, y1, strict=True):
            if ay != by:
                crosses = ((ay > cy) != (by > cy)) & (cx < ax + (cy - ay) * (bx - ax) / (by - ay))
                inside ^= crosses
    return inside


def filled(mask: np.ndarray) -> np.ndarray:
    out = np.zeros(mask.shape, bool)
    for polygon in polygons(mask):
        piece = fill(polygon, mask.shape)
        assert not (out & piece).any()  # polygons never overlap
        out |= piece
    return out


def frame_with_island() -> np.ndarray:
    mask = np.ones((5, 5), bool)
    mask[1:4, 1:4] = False  # a 3 x 3 hole ...
    mask[2, 2] = True  # ... with a one-pixel island in it
    return mask


def test_a_frame_with_an_island_is_two_polygons_with_exact_rings() -> None:
    result = polygons(frame_with_island())
    assert len(result) == 2
    frame, island = sorted(result, key=lambda p: len(p), reverse=True)
    assert len(frame) == 2 and len(island) == 1
    assert canonical(frame[0]) == [(0, 0), (5, 0), (5, 5), (0, 5)]  # outer: positive
    assert canonical(frame[1]) == [(1, 1), (1, 4), (4, 4), (4, 1)]  # hole: reversed
    assert canonical(island[0]) == [(2, 2), (3, 2), (3, 3), (2, 3)]
    assert ring_area(frame[0]) == 25 and ring_area(frame[1]) == -9
    assert ring_area(island[0]) == 1


def test_traced_rings_areas_parents_and_flags() -> None:
    rings = trace(frame_with_island())
    assert rings.areas.dtype.kind == "i"  # whole pixel counts
    assert sorted(rings.areas.tolist()) == [-9, 1, 25]
    outer = int(np.flatnonzero(rings.areas == 25)[0])
    hole = int(np.flatnonzero(rings.areas == -9)[0])
    island = int(np.flatnonzero(rings.areas == 1)[0])
    assert rings.parents[hole] == outer
    assert rings.parents[outer] == outer and rings.parents[island] == island
    assert rings.pinched.dtype == bool and not rings.pinched.any()
    assert rings.areas[rings.pinched].size == 0  # the flag selects rings
    assert rings.starts[0] == 0 and rings.starts[-1] == rings.points.shape[0] == 12


def u_closed_at_a_corner() -> np.ndarray:
    # The region touches itself at the corner (x 2, y 1): pixel (1, 1) is outside the
    # 4-connected region, reached from the outside only through that corner.
    return np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1]], bool)


def test_a_region_touching_itself_is_split_at_the_corner() -> None:
    mask = u_closed_at_a_corner()
    rings = trace(mask)
    assert rings.areas.tolist() == [7]  # one ring, its loops 8 and -1: the 7 pixels
    assert rings.pinched.tolist() == [True]
    assert rings.areas[rings.pinched].tolist() == [7]
    corners = canonical(rings.ring(0))
    assert corners.count((2, 1)) == 2
    (polygon,) = polygons(mask)
    assert canonical(polygon[0]) == [(0, 0), (2, 0), (2, 1), (3, 1), (3, 3), (0, 3)]
    assert canonical(polygon[1]) == [(1, 1), (1, 2), (2, 2), (2, 1)]
    assert ring_area(polygon[0]) == 8 and ring_area(polygon[1]) == -1
    assert np.array_equal(filled(mask), mask)


def test_plain_rings_are_not_flagged_as_pinched() -> None:
    mask = np.zeros((4, 6), bool)
    mask[1:3, 1:5] = True  # a rectangle: several points share a row or a column
    rings = trace(mask)
    assert rings.pinched.tolist() == [False]
    assert canonical(rings.ring(0)) == [(1, 1), (5, 1), (5, 3), (1, 3)]


def test_the_empty_mask_has_no_rings_in_the_same_layout() -> None:
    full = trace(np.ones((2, 3), bool))
    for shape in ((3, 4), (1, 1), (0, 5)):
        mask = np.zeros(shape, bool)
        assert polygons(mask) == [] and polygons(mask, 1.0) == []
        rings = trace(mask)
        assert rings.points.shape == (0, 2) and rings.starts.tolist() == [0]
        assert rings.areas.size == rings.parents.size == rings.pinched.size == 0
        for name in ("points", "starts", "areas", "parents", "pinched"):
            assert getattr(rings, name).dtype == getattr(full, name).dtype, name


def test_ring_area_is_the_signed_shoelace_area() -> None:
    rectangle = np.array([[0, 0], [2, 0], [2, 3], [0, 3]])
    assert ring_area(rectangle) == 6.0
    assert ring_area(rectangle[::-1]) == -6.0
    ell = np.array([[0, 0], [2, 0], [2, 1], [1, 1], [1, 3], [0, 3]])
    assert ring_area(ell) == 4.0
    assert ring_area(np.array([[1, 1], [4, 1], [1, 5]])) == 6.0  # a triangle: 3 * 4 / 2


def test_polygons_fill_back_to_their_masks() -> None:
    rng = np.random.default_rng(11)
    masks = [frame_with_island(), u_closed_at_a_corner(), np.eye(5, dtype=bool)]
    masks += [rng.random((9, 12)) < p for p in (0.3, 0.5, 0.7)]
    for mask in masks:
        assert np.array_equal(filled(mask), mask)
        for polygon in polygons(mask):
            assert ring_area(polygon[0]) > 0
            assert all(ring_area(hole) < 0 for hole in polygon[1:])


def test_a_row_of_holes_all_belong_to_their_region() -> None:
    # Seven one-pixel holes in a row: scanning left from each hole meets the hole before
    # it, so the last one reaches the outer ring only through six others.
    mask = np.ones((3, 15), bool)
    mask[1, 1:15:2] = False
    rings = trace(mask)
    outer = int(np.flatnonzero(rings.areas > 0)[0])
    assert rings.areas.tolist().count(-1) == 7
    assert rings.parents.tolist() == [outer] * 8
    (polygon,) = polygons(mask)
    assert canonical(polygon[0]) == [(0, 0), (15, 0), (15, 3), (0, 3)]
    holes = sorted(canonical(hole) for hole in polygon[1:])
    assert holes == [[(x, 1), (x, 2), (x + 1, 2), (x + 1, 1)] for x in range(1, 15, 2)]
    assert np.array_equal(filled(mask), mask)
