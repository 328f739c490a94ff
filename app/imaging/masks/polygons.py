"""Polygons of a binary mask traced along pixel edges, vectorised in numpy.

Pixel (row r, column c) is the unit square [c, c+1] x [r, r+1]: x right, y down, pixel
edges on integer coordinates. Every edge between a mask pixel and a non-mask pixel (or the
image border) is directed with the mask on its left in (x, y) terms, so outer rings come
out with a positive shoelace area and holes negative. Edges are chained into rings; where
two mask pixels touch only at a corner the chain turns towards the mask, so regions are
4-connected (a region that touches itself at a corner gives a ring that visits that corner
twice). Rings are ordered and labelled with pointer jumping (no Python loop per edge),
collinear points are dropped, and each hole is attached to its region's outer ring by a
scan to the left along its row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.imaging.masks.simplify import simplify_rings

# Directions: 0 = +x, 1 = +y, 2 = -x, 3 = -y; turning "left" (towards the mask) is d + 1.
DX = np.array([1, 0, -1, 0], np.int64)
DY = np.array([0, 1, 0, -1], np.int64)


@dataclass(frozen=True)
class Rings:
    """Closed rings of one mask: ring k is points[starts[k]:starts[k+1]] (first point not
    repeated), with its signed area and, for holes, the index of its outer ring."""

    points: np.ndarray  # (n, 2) int64 x, y
    starts: np.ndarray  # (rings + 1,) int64
    areas: np.ndarray  # (rings,) signed, in pixels
    parents: np.ndarray  # (rings,) outer ring of a hole; an outer ring is its own parent
    pinched: np.ndarray  # (rings,) bool: the ring visits a point twice

    def ring(self, k: int) -> np.ndarray:
        return self.points[self.starts[k] : self.starts[k + 1]]


def boundary_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start x, start y and direction of every boundary edge, mask on the left."""
    padded = np.pad(mask.astype(bool), 1)
    # Horizontal edges at y = 0..H between rows y-1 and y (padded rows y and y+1).
    above, below = padded[:-1, 1:-1], padded[1:, 1:-1]
    ys, xs = np.nonzero(below & ~above)  # mask below: +x from (x, y)
    ys2, xs2 = np.nonzero(above & ~below)  # mask above: -x from (x+1, y)
    # Vertical edges at x = 0..W between columns x-1 and x.
    left, right = padded[1:-1, :-1], padded[1:-1, 1:]
    ys3, xs3 = np.nonzero(right & ~left)  # mask right: -y from (x, y+1)
    ys4, xs4 = np.nonzero(left & ~right)  # mask left: +y from (x, y)
    start_x = np.concatenate((xs, xs2 + 1, xs3, xs4)).astype(np.int64)
    start_y = np.concatenate((ys, ys2, ys3 + 1, ys4)).astype(np.int64)
    direction = np.concatenate(
        (np.zeros(xs.size), np.full(xs2.size, 2), np.full(xs3.size, 3), np.ones(xs4.size))
    ).astype(np.int64)
    return start_x, start_y, direction


def _next_edges(
    start_x: np.ndarray, start_y: np.ndarray, direction: np.ndarray, width: int
) -> np.ndarray:
    """The edge following each edge: the one leaving its end point, the left turn where two
    leave (two mask pixels meeting at a corner)."""
    stride = width + 1
    start_id = start_y * stride + start_x
    end_id = (start_y + DY[direction]) * stride + start_x + DX[direction]
    order = np.argsort(start_id, kind="stable")
    sorted_ids = start_id[order]
    first = np.searchsorted(sorted_ids, end_id, side="left")
    last = np.searchsorted(sorted_ids, end_id, side="right")
    candidate = order[first]
    two = (last - first) == 2
    if two.any():
        other = order[np.minimum(first + 1, order.size - 1)]
        wanted = (direction + 1) % 4
        use_other = two & (direction[candidate] != wanted)
        candidate = np.where(use_other, other, candidate)
    return np.asarray(candidate, np.int64)


def _label_cycles(nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a permutation made of cycles: each element's cycle label (its smallest member)
    and its distance to the end of the cycle walked from that member."""
    n = nxt.size
    label = np.arange(n, dtype=np.int64)
    jump = nxt.copy()
    steps = 1
    while steps < n:
        label = np.minimum(label, label[jump])
        jump = jump[jump]
        steps *= 2
    # List ranking: cut each cycle before its label, count the steps to the cut.
    last = nxt == label
    rank = np.where(last, 0, 1).astype(np.int64)
    jump = np.where(last, np.arange(n), nxt)
    steps = 1
    while steps < n:
        rank = rank + rank[jump]
        jump = jump[jump]
        steps *= 2
    return label, rank


def trace(mask: np.ndarray) -> Rings:
    """Exact rings of a (H, W) boolean mask."""
    width = mask.shape[1]
    start_x, start_y, direction = boundary_edges(mask)
    if start_x.size == 0:
        empty = np.empty(0, np.int64)
        return Rings(np.empty((0, 2), np.int64), np.zeros(1, np.int64), empty, empty,
                     np.empty(0, bool))  # fmt: skip
    nxt = _next_edges(start_x, start_y, direction, width)
    label, rank = _label_cycles(nxt)
    # Walk order: by ring, then from the ring's label edge onwards (rank counts down).
    order = np.lexsort((-rank, label))
    previous_direction = np.empty_like(direction)
    previous_direction[nxt] = direction
    corner = direction[order] != previous_direction[order]
    kept = order[corner]
    ring_of = label[kept]
    boundaries = np.flatnonzero(np.diff(ring_of)) + 1
    starts = np.concatenate(([0], boundaries, [kept.size])).astype(np.int64)
    points = np.stack((start_x[kept], start_y[kept]), axis=1)
    areas = _signed_areas(points, starts)
    parents = _parents(mask, areas, start_x, start_y, direction, label, ring_of[starts[:-1]])
    # A point twice in one ring: equal (ring, point) keys next to each other once sorted.
    ring_number = np.repeat(np.arange(starts.size - 1), np.diff(starts))
    keys = np.sort((ring_number * (mask.shape[0] + 1) + points[:, 1]) * (width + 1) + points[:, 0])
    repeated = keys[1:][keys[1:] == keys[:-1]] // ((mask.shape[0] + 1) * (width + 1))
    pinched = np.zeros(areas.size, bool)
    pinched[repeated] = True
    return Rings(points, starts, areas, parents, pinched)


def _signed_areas(points: np.ndarray, starts: np.ndarray) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    index = np.arange(x.size)
    ring = np.repeat(np.arange(starts.size - 1), np.diff(starts))
    following = np.where(index + 1 == starts[ring + 1], starts[ring], index + 1)
    cross = x * y[following] - x[following] * y
    return np.add.reduceat(cross, starts[:-1]) // 2


def _parents(
    mask: np.ndarray,
    areas: np.ndarray,
    start_x: np.ndarray,
    start_y: np.ndarray,
    direction: np.ndarray,
    label: np.ndarray,
    ring_labels: np.ndarray,
) -> np.ndarray:
    """Each hole's outer ring. From a hole's +y edge (mask on its left) the scan goes left
    through mask pixels of the same row to the nearest -y edge (mask on its right): an edge
    of the same region, on its outer ring or on a hole further left; the chain ends at the
    outer ring."""
    rings = areas.size
    ring_index = np.full(label.size, -1, np.int64)
    ring_index[ring_labels] = np.arange(rings)
    edge_ring = ring_index[label]
    stride = mask.shape[1] + 1
    down = np.flatnonzero(direction == 1)  # mask on the left: x = start_x, row start_y
    up = np.flatnonzero(direction == 3)  # mask on the right: row start_y - 1
    up_keys = (start_y[up] - 1) * stride + start_x[up]
    up_order = np.argsort(up_keys)
    sorted_up = up_keys[up_order]
    link = np.arange(rings, dtype=np.int64)
    holes = areas < 0
    if holes.any():
        # One +y edge per hole ring: the first in edge order.
        hole_edges = down[holes[edge_ring[down]]]
        first_of_ring = np.unique(edge_ring[hole_edges], return_index=True)[1]
        chosen = hole_edges[first_of_ring]
        keys = start_y[chosen] * stride + start_x[chosen]
        found = up[up_order[np.searchsorted(sorted_up, keys, side="left") - 1]]
        link[edge_ring[chosen]] = edge_ring[found]
    steps = 1
    while steps < rings:
        link = link[link]
        steps *= 2
    return link


def split_pinches(ring: np.ndarray) -> list[np.ndarray]:
    """A ring that visits a point twice (a region touching itself at a pixel corner) as
    simple rings: each loop between two visits is cut out as a ring of its own."""
    keys = ring[:, 0] * (int(ring[:, 1].max()) + 1) + ring[:, 1]
    loops: list[np.ndarray] = []
    stack: list[int] = []
    position: dict[int, int] = {}
    for i, key in enumerate(keys.tolist()):
        if key in position:
            cut = position[key]
            loop = stack[cut:]
            del stack[cut + 1 :]
            for index in loop[1:]:
                position.pop(int(keys[index]), None)
            loops.append(ring[loop])
        else:
            position[key] = len(stack)
            stack.append(i)
    loops.append(ring[stack])
    return [loop for loop in loops if loop.shape[0] >= 3]


def ring_area(ring: np.ndarray) -> float:
    """Signed shoelace area of a closed ring (first point not repeated)."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


def polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[list[np.ndarray]]:
    """The mask as polygons, each [outer ring, hole, ...] (first point not repeated):
    outer rings with positive shoelace area in (x, y), holes negative; simple rings (a
    ring pinched at a corner is split there). With a tolerance > 0 each ring is simplified
    by Douglas-Peucker and rings that collapse are dropped (a dropped outer ring drops its
    holes)."""
    rings = trace(mask)
    pieces: list[np.ndarray] = []
    roles: list[tuple[int, bool]] = []  # (traced ring, outer)
    for k in range(rings.areas.size):
        ring = rings.ring(k)
        split = split_pinches(ring) if rings.pinched[k] else [ring]
        for piece in split:
            positive = ring_area(piece) > 0 if len(split) > 1 else rings.areas[k] > 0
            pieces.append(piece)
            roles.append((k, bool(positive)))
    outer: dict[int, list[np.ndarray]] = {}
    holes: dict[int, list[np.ndarray]] = {}
    for piece, (k, positive) in zip(simplify_rings(pieces, tolerance), roles, strict=True):
        if piece.shape[0] < 3:
            continue
        parent = int(rings.parents[k])
        if positive and parent == k and k not in outer:
            outer[k] = [piece]
        else:
            holes.setdefault(parent, []).append(piece)
    return [ring_list + holes.get(k, []) for k, ring_list in outer.items()]
