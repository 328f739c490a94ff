"""Douglas-Peucker simplification of many closed rings at once, vectorised in numpy.

Each ring (first point not repeated) is closed and split at its first point and the point
farthest from it, as usual for closed rings. Then every round finds, for all segments of
all rings together, the point farthest from its segment's chord and keeps it where that
distance passes the tolerance: the same points the recursive algorithm keeps, in as many
numpy passes as the recursion is deep instead of a Python call per kept point.
"""

from __future__ import annotations

import numpy as np


def simplify_rings(rings: list[np.ndarray], tolerance: float) -> list[np.ndarray]:
    """Each ring simplified; a ring left with fewer than 3 points comes back empty."""
    if tolerance <= 0 or not rings:
        return rings
    sizes = np.array([r.shape[0] for r in rings], np.int64)
    closed_sizes = sizes + 1
    ends = np.cumsum(closed_sizes)
    starts = ends - closed_sizes
    points = np.concatenate([np.concatenate((r, r[:1])) for r in rings]).astype(np.float64)
    ring_of = np.repeat(np.arange(len(rings)), closed_sizes)
    keep = np.zeros(points.shape[0], bool)
    keep[starts] = True
    keep[ends - 1] = True
    # The point farthest from each ring's first point.
    offsets = points - points[starts][ring_of]
    reach = np.hypot(offsets[:, 0], offsets[:, 1])
    order = np.lexsort((-reach, ring_of))
    keep[order[np.searchsorted(ring_of[order], np.arange(len(rings)))]] = True
    index = np.arange(points.shape[0])
    settled = keep.copy()  # kept, or inside a segment already within the tolerance
    while True:
        previous = np.maximum.accumulate(np.where(keep, index, 0))
        following = np.minimum.accumulate(np.where(keep, index, index.size)[::-1])[::-1]
        i = np.flatnonzero(~settled)
        if i.size == 0:
            break
        a, b = points[previous[i]], points[following[i]]
        chord = b - a
        length = np.hypot(chord[:, 0], chord[:, 1])
        rel = points[i] - a
        cross = np.abs(chord[:, 0] * rel[:, 1] - chord[:, 1] * rel[:, 0])
        distance = np.where(length > 0, cross / np.where(length > 0, length, 1), np.hypot(
            rel[:, 0], rel[:, 1]))  # fmt: skip
        segment = previous[i]
        worst = np.lexsort((-distance, segment))
        first = np.concatenate(([True], segment[worst][1:] != segment[worst][:-1]))
        chosen = worst[first]
        chosen = chosen[distance[chosen] > tolerance]
        settled[i[~np.isin(segment, segment[chosen])]] = True
        if chosen.size == 0:
            break
        keep[i[chosen]] = True
        settled[i[chosen]] = True
    result = []
    for n, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        kept = rings[n][keep[start : end - 1]]
        result.append(kept if kept.shape[0] >= 3 else kept[:0])
    return result
