"""GeoJSON features as a reader sees them: one Feature per class present with its
properties, the legacy "crs" member GDAL and QGIS read, rings that keep RFC 7946's
right-hand rule after a mirroring (north-up) map transform, and compact text (the answer's
size estimate counts no whitespace). Expected values are worked out by hand."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import numpy as np

from app.imaging.georef import GeoReference
from app.imaging.masks.geojson import feature_collection

# A north-up UTM grid: 10 m pixels, origin (500000, 4600000) at the top left; Y goes up as
# rows go down, so the transform mirrors.
UTM = {"a": 10.0, "b": 0.0, "c": 500_000.0, "d": 0.0, "e": -10.0, "f": 4_600_000.0}


def collection(labels: np.ndarray, classes: list[str], georef: GeoReference | None) -> Any:
    return json.loads(feature_collection(labels, classes, 0.0, georef, {}))


def signed_area(ring: list[list[float]]) -> float:
    """Shoelace area of a closed ring: positive when counterclockwise with y up."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in pairwise(ring)) / 2


def test_one_feature_per_class_with_its_properties() -> None:
    labels = np.array([[0, 0, 2], [0, 2, 2]], np.uint8)  # class 1 absent
    found = collection(labels, ["background", "road", "building"], None)
    assert found["coordinate_space"] == "pixel"
    assert [f["id"] for f in found["features"]] == [0, 2]
    for feature, name in zip(found["features"], ["background", "building"], strict=True):
        assert feature["type"] == "Feature"
        assert set(feature) == {"type", "id", "properties", "geometry"}
        assert feature["properties"] == {
            "class_index": feature["id"],
            "class_name": name,
            "pixels": 3,
            "coordinate_space": "pixel",
            "crs": None,
        }
        (polygon,) = feature["geometry"]["coordinates"]  # one L-shaped region, no hole
        assert signed_area(polygon[0]) == 3.0


def test_classes_past_the_names_are_named_by_their_index() -> None:
    labels = np.array([[0, 1, 2]], np.uint8)  # the model answers more classes than it names
    found = collection(labels, ["only"], None)
    assert [f["properties"]["class_name"] for f in found["features"]] == ["only", "1", "2"]


def test_crs_member_names_the_epsg_code_as_an_ogc_urn() -> None:
    labels = np.zeros((2, 2), np.uint8)
    for epsg, urn in [
        (32633, "urn:ogc:def:crs:EPSG::32633"),
        # GeoTIFF X is longitude: EPSG:4326 (latitude first) is written as OGC CRS84.
        (4326, "urn:ogc:def:crs:OGC:1.3:CRS84"),
    ]:
        found = collection(labels, ["a"], GeoReference(**UTM, epsg=epsg))
        assert found["crs"] == {"type": "name", "properties": {"name": urn}}
        assert found["coordinate_space"] == "map"
        assert found["features"][0]["properties"] == {
            "class_index": 0,
            "class_name": "a",
            "pixels": 4,
            "coordinate_space": "map",
            "crs": f"EPSG:{epsg}",
        }


def test_a_geotiff_without_epsg_code_says_so_per_feature() -> None:
    found = collection(np.zeros((2, 2), np.uint8), ["a"], GeoReference(**UTM, epsg=None))
    assert "crs" not in found
    properties = found["features"][0]["properties"]
    assert properties["crs"] is None
    assert properties["crs_note"] == "the GeoTIFF names no EPSG code; coordinates are its own"


def test_north_up_map_rings_keep_the_right_hand_rule() -> None:
    labels = np.ones((5, 5), np.uint8)
    labels[2, 2] = 0  # a one-pixel hole in class 1, itself class 0's square
    found = collection(labels, ["hole", "field"], GeoReference(**UTM, epsg=32633))
    hole, field = (f["geometry"]["coordinates"] for f in found["features"])
    (outer, inner) = field[0]
    # Outer rings counterclockwise, holes clockwise, in map coordinates (Y up): 100 m2 a pixel.
    assert signed_area(outer) == 25 * 100.0
    assert signed_area(inner) == -100.0
    assert signed_area(hole[0][0]) == 100.0
    xs, ys = zip(*outer, strict=True)
    assert (min(xs), max(xs), min(ys), max(ys)) == (500_000, 500_050, 4_599_950, 4_600_000)
    hx, hy = zip(*inner, strict=True)
    assert (min(hx), max(hx), min(hy), max(hy)) == (500_020, 500_030, 4_599_970, 4_599_980)


def test_the_text_is_compact() -> None:
    labels = np.array([[0, 1], [1, 1]], np.uint8)
    header = {"model": {"name": "m", "version": "1"}, "width": 2, "height": 2}
    for georef in (None, GeoReference(**UTM, epsg=32633)):
        body = feature_collection(labels, ["a", "b"], 0.0, georef, header)
        assert b" " not in body and b"\n" not in body
        assert len(json.loads(body)["features"]) == 2
