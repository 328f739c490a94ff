"""GeoTIFF georeferencing read from the tags: the pixel-to-map transform checked against
GDAL's (rasterio) reading of the same file, the EPSG code's range, the orientation tag, the
size limit on coordinates and what `describe()` puts in the GeoJSON answer. Test files are
written with tifffile (tag by tag) or by GDAL, not with Pillow, which the reader uses."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from app.imaging.georef import GeoReference, read_georeference

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import Affine  # noqa: E402

Tag = tuple[int, int, int, Any]  # (code, TIFF type, count, value) for tifffile
SCALE = (33550, 12, 3, (2.0, 3.0, 0.0))  # ModelPixelScale: 2 across, 3 down
TIE = (33922, 12, 6, (0.0, 0.0, 0.0, 100.0, 200.0, 0.0))  # pixel (0, 0) at map (100, 200)
NORTH_UP = (2.0, 0.0, 100.0, 0.0, -3.0, 200.0)


def geotiff(tags: list[Tag]) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((4, 6), np.uint8), extratags=tags, metadata=None)
    return buffer.getvalue()


def keys(*entries: tuple[int, int]) -> tuple[int, int, int, tuple[int, ...]]:
    """GeoKeyDirectory (34735) holding `entries` (key, value) inline."""
    values = [1, 1, 0, len(entries)]
    for key, value in entries:
        values += [key, 0, 1, value]
    return (34735, 3, len(values), tuple(values))


def gdal_transform(data: bytes) -> tuple[float, ...]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not georeferenced" style notes on minimal files
        with rasterio.MemoryFile(data) as memory, memory.open() as dataset:
            return tuple(dataset.transform)[:6]


def transform(reference: GeoReference | None) -> tuple[float, ...]:
    assert reference is not None
    return (reference.a, reference.b, reference.c, reference.d, reference.e, reference.f)


MATRIX = (34264, 12, 16, (2.0, 0.5, 0, 100.0, 0.25, -3.0, 0, 900.0) + (0,) * 7 + (1,))

CASES = {
    # PixelIsPoint: (100, 900) is pixel (0, 0)'s centre; the corner is half a pixel back
    # along both columns: c = 100 - (2 + 0.5) / 2, f = 900 - (0.25 - 3) / 2.
    "point-matrix": ([MATRIX, keys((1025, 2))], (2.0, 0.5, 98.75, 0.25, -3.0, 901.375)),
    # A scale with a second tie point: the first one places the grid.
    "two-tie-points": (
        [SCALE, (33922, 12, 12, TIE[3] + (4.0, 2.0, 0.0, 108.0, 194.0, 0.0))],
        NORTH_UP,
    ),
    "two-value-scale": ([(33550, 12, 2, (2.0, 3.0)), TIE], NORTH_UP),
    "empty-key-directory": ([SCALE, TIE, keys()], NORTH_UP),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_transform_is_gdals(case: tuple[list[Tag], tuple[float, ...]]) -> None:
    tags, expected = case
    data = geotiff(tags)
    assert gdal_transform(data) == expected  # the hand-computed value is GDAL's too
    reference = read_georeference(data)
    assert transform(reference) == expected
    assert reference is not None and reference.epsg is None


@pytest.mark.parametrize(
    "affine",
    [Affine(10.0, 10.0, 500.0, 10.0, -10.0, 900.0), Affine(0.0, 10.0, 500.0, 10.0, 0.0, 900.0)],
    ids=["rotated-45", "axes-swapped"],
)
def test_rotated_transforms_written_by_gdal(tmp_path: Path, affine: Affine) -> None:
    # Both invertible (determinants -200 and -100), so both keep their georeferencing: the
    # first with a*e = -b*d, the second with nothing on its diagonal (a = e = 0).
    with rasterio.open(
        tmp_path / "r.tif", "w", driver="GTiff", width=6, height=4, count=1, dtype="uint8",
        crs="EPSG:32633", transform=affine,
    ) as dataset:  # fmt: skip
        dataset.write(np.zeros((4, 6), np.uint8), 1)
    reference = read_georeference((tmp_path / "r.tif").read_bytes())
    assert transform(reference) == tuple(affine)[:6]
    assert reference is not None and reference.epsg == 32633


@pytest.mark.parametrize(("crs", "name"), [("EPSG:4326", "EPSG:4326"), (None, None)])
def test_geographic_crs_and_describe(tmp_path: Path, crs: str | None, name: str | None) -> None:
    # GDAL writes EPSG:4326 as GeographicTypeGeoKey (2048), with no ProjectedCSTypeGeoKey.
    affine = Affine(0.01, 0.0, 10.0, 0.0, -0.02, 50.0)  # north up, 0.01 x 0.02 degrees
    with rasterio.open(
        tmp_path / "g.tif", "w", driver="GTiff", width=6, height=4, count=1, dtype="uint8",
        crs=crs, transform=affine,
    ) as dataset:  # fmt: skip
        dataset.write(np.zeros((4, 6), np.uint8), 1)
    reference = read_georeference((tmp_path / "g.tif").read_bytes())
    assert reference is not None
    assert reference.describe() == {"transform": [0.01, 0.0, 10.0, 0.0, -0.02, 50.0], "crs": name}


@pytest.mark.parametrize(
    ("entry", "epsg"),
    [
        ((3072, 1), 1),  # the lowest code not reserved by GeoTIFF
        ((3072, 32766), 32766),  # the highest
        ((3072, 32767), None),  # user-defined: no EPSG code
        ((3072, 40000), None),  # private range
        ((2048, 0), None),  # undefined
        ((2048, 4258), 4258),
    ],
)
def test_only_real_epsg_codes_are_named(entry: tuple[int, int], epsg: int | None) -> None:
    reference = read_georeference(geotiff([SCALE, TIE, keys(entry)]))
    assert transform(reference) == NORTH_UP
    assert reference is not None and reference.epsg == epsg


@pytest.mark.parametrize(("orientation", "usable"), [(1, True), (2, False), (3, False)])
def test_orientation_other_than_top_left_drops_georeferencing(
    orientation: int, usable: bool
) -> None:
    reference = read_georeference(geotiff([SCALE, TIE, (274, 3, 1, orientation)]))
    assert (reference is not None) is usable


def test_coordinates_up_to_1e15_are_accepted() -> None:
    limit = 1e15
    tie = (33922, 12, 6, (0.0, 0.0, 0.0, limit, 200.0, 0.0))
    assert transform(read_georeference(geotiff([SCALE, tie])))[2] == limit
    beyond = (33922, 12, 6, (0.0, 0.0, 0.0, float(np.nextafter(limit, np.inf)), 200.0, 0.0))
    assert read_georeference(geotiff([SCALE, beyond])) is None
