"""Class maps as a GeoJSON FeatureCollection: one Feature per class present, a MultiPolygon
with holes, in pixel coordinates (x right, y down, pixel edges on integers) or, for a
georeferenced GeoTIFF, in its map coordinates.

Rings follow RFC 7946's right-hand rule numerically (outer rings counterclockwise in the
coordinates as written, holes clockwise), and are closed (last point = first point).
The text is built ring by ring: no Python list of every coordinate is held.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from app.imaging.georef import GeoReference
from app.imaging.masks.polygons import polygons

# JSON bytes of one point: "[x,y]," with two '%.12g' numbers (at most 19 characters each,
# as in -1.23456789012e+24).
MAP_POINT_BYTES = 2 * 19 + 4
FEATURE_OVERHEAD_BYTES = 400
# A ring's "[" and "]", its polygon's "[" and "]" and the commas before each, less the
# comma its last point does not have.
RING_BYTES = 4
FLOAT_FORMAT = "%.12g"


def corner_visits(labels: np.ndarray, rows_per_band: int = 512) -> int:
    """How many ring points exact tracing gives, over every class together, counted from the
    2x2 blocks around each pixel corner without tracing: a class found once or three times
    in a block turns there once, a class on two diagonal pixels twice."""
    height, width = labels.shape
    visits3 = 0  # three times the visits: a class found three times adds 1/3 per pixel
    for top in range(0, height + 1, rows_per_band):
        bottom = min(top + rows_per_band, height + 1)  # corner rows top..bottom-1
        # Label rows top-1..bottom-1 with a border of -1 (outside the image), as int16.
        band = np.full((bottom - top + 1, width + 2), -1, np.int16)
        first, last = max(top - 1, 0), min(bottom, height)
        band[first - top + 1 : last - top + 1, 1:-1] = labels[first:last]
        tl, tr = band[:-1, :-1], band[:-1, 1:]
        bl, br = band[1:, :-1], band[1:, 1:]
        for p, q, r, s in ((tl, tr, bl, br), (tr, tl, br, bl), (bl, br, tl, tr), (br, bl, tr, tl)):
            # s is p's diagonal partner, q and r the others.
            count = 1 + (p == q) + (p == r) + (p == s)
            diagonal = (count == 2) & (p == s)
            real = p >= 0
            visits3 += int(np.count_nonzero(real & ((count == 1) | diagonal))) * 3
            visits3 += int(np.count_nonzero(real & (count == 3)))
    return visits3 // 3


def geojson_size_bound(labels: np.ndarray, classes: Sequence[str], georeferenced: bool) -> int:
    """Upper estimate of the answer's bytes (simplification only shrinks it); each present
    class's feature writes its name (as a JSON string) once."""
    points = corner_visits(labels)
    rings = points // 4  # every ring has at least 4 points
    digits = len(str(max(labels.shape)))
    per_point = MAP_POINT_BYTES if georeferenced else 2 * digits + 4
    # Each ring repeats its first point and adds at most RING_BYTES of brackets and commas
    # (a one-ring polygon "[[...]]," of single pixels: an isolated-pixel map needs them).
    points += rings
    names = sum(len(json.dumps(name)) for name in classes)
    features = len(classes) * FEATURE_OVERHEAD_BYTES + names
    return points * per_point + rings * RING_BYTES + features + 1024


def _ring_text(ring: np.ndarray, georef: GeoReference | None) -> str:
    closed = np.concatenate((ring, ring[:1]))
    if georef is None:
        return json.dumps(closed.tolist(), separators=(",", ":"))  # the C encoder: fast
    if georef.flips:
        closed = closed[::-1]  # a mirroring transform would turn the rings' orientation
    x, y = closed[:, 0].astype(np.float64), closed[:, 1].astype(np.float64)
    mx = georef.a * x + georef.b * y + georef.c
    my = georef.d * x + georef.e * y + georef.f
    return "[" + ",".join(f"[{FLOAT_FORMAT % u},{FLOAT_FORMAT % v}]" for u, v in zip(
        mx.tolist(), my.tolist(), strict=True)) + "]"  # fmt: skip


def _geometry_text(shapes: list[list[np.ndarray]], georef: GeoReference | None) -> Iterator[str]:
    yield '{"type":"MultiPolygon","coordinates":['
    for n, rings in enumerate(shapes):
        yield ("," if n else "") + "[" + ",".join(_ring_text(r, georef) for r in rings) + "]"
    yield "]}"


def feature_collection(
    labels: np.ndarray,
    classes: list[str],
    tolerance: float,
    georef: GeoReference | None,
    header: dict[str, Any],
) -> bytes:
    """The FeatureCollection's UTF-8 text; `header` adds foreign members (model, size)."""
    space = "map" if georef is not None else "pixel"
    crs = f"EPSG:{georef.epsg}" if georef is not None and georef.epsg is not None else None
    collection: dict[str, Any] = {"type": "FeatureCollection", **header}
    collection["coordinate_space"] = space
    if georef is not None:
        collection["georeference"] = georef.describe()
        if crs is not None:
            # RFC 7946 dropped "crs"; GDAL, QGIS and PostGIS still read this form.
            collection["crs"] = {"type": "name", "properties": {"name": _crs_urn(georef.epsg)}}
    head = json.dumps(collection, separators=(",", ":"))[:-1]
    parts = [head, ',"features":[']
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    first = True
    for index in np.flatnonzero(counts).tolist():
        properties = {
            "class_index": index,
            "class_name": classes[index] if index < len(classes) else str(index),
            "pixels": int(counts[index]),
            "coordinate_space": space,
            "crs": crs if georef is not None else None,
        }
        if georef is not None and crs is None:
            properties["crs_note"] = "the GeoTIFF names no EPSG code; coordinates are its own"
        shapes = polygons(labels == index, tolerance)
        parts.append(("" if first else ",") + '{"type":"Feature","id":' + str(index))
        parts.append(',"properties":' + json.dumps(properties, separators=(",", ":")))
        parts.append(',"geometry":')
        parts.extend(_geometry_text(shapes, georef))
        parts.append("}")
        first = False
    parts.append("]}")
    return "".join(parts).encode()


def _crs_urn(epsg: int | None) -> str:
    # EPSG:4326's official axis order is latitude first; GeoTIFF X is longitude.
    return "urn:ogc:def:crs:OGC:1.3:CRS84" if epsg == 4326 else f"urn:ogc:def:crs:EPSG::{epsg}"
