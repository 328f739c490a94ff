"""The class-map BigTIFF's own tags: the colour map's table, grey maps without one,
deflate compression, no tifffile JSON description, and the resolution carried from the
input's OME physical pixel size (micrometres only; nothing for other units or zero sizes).
Read back with tifffile, and the resolution also with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from app.imaging.tiff_regions import TiffInfo
from app.imaging.tiff_write import colormap, write_class_map_tiff

LABELS = np.random.default_rng(5).integers(0, 4, (300, 400), dtype=np.uint8)
PALETTE = [(255, 0, 128), (0, 255, 0), (0, 0, 255), (10, 20, 30)]


def write(path: Path, palette: list[tuple[int, int, int]] | None, info: TiffInfo | None) -> None:
    write_class_map_tiff(path, lambda y0, y1: LABELS[y0:y1], 300, 400, palette, info, tile=256)


def test_colormap_is_a_uint16_table_of_the_first_256_colours() -> None:
    # 300 colours: a uint8 map can index only the first 256; the rest are cut, not an error.
    palette = [(i % 256, (3 * i) % 256, 255 - i % 256) for i in range(300)]
    table = colormap(palette)
    assert table.dtype == np.uint16 and table.shape == (3, 256)
    assert table[:, 0].tolist() == [0, 0, 65535]  # 255 x 257
    assert table[:, 1].tolist() == [257, 771, 65278]  # (1, 3, 254) x 257
    assert table[:, 255].tolist() == [65535, 253 * 257, 0]  # colour 255 = (255, 765 % 256, 0)
    short = colormap(PALETTE)
    assert short[:, 0].tolist() == [65535, 0, 128 * 257]
    assert not short[:, 4:].any()  # unused entries stay black


def test_grey_map_is_minisblack_deflated_without_a_colour_map(tmp_path: Path) -> None:
    write(tmp_path / "grey.tif", None, None)
    with tifffile.TiffFile(tmp_path / "grey.tif") as tif:
        page = tif.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK and page.colormap is None
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert np.array_equal(page.asarray(), LABELS)


def test_palette_map_is_deflated_with_no_tifffile_description(tmp_path: Path) -> None:
    write(tmp_path / "map.tif", PALETTE, None)
    with tifffile.TiffFile(tmp_path / "map.tif") as tif:
        page = tif.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        # No ImageDescription: tifffile's default would be a JSON {"shape": ...} description.
        assert "ImageDescription" not in page.tags
        assert not tif.is_shaped
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.NONE  # nothing to carry


@pytest.mark.parametrize("unit", ["µm", "um", None])
def test_micrometre_pixel_size_becomes_pixels_per_centimetre(
    tmp_path: Path, unit: str | None
) -> None:
    # 0.25 x 0.5 µm pixels: 1 cm = 10^4 µm holds 40000 pixels across and 20000 down.
    info = TiffInfo(geo_tags=[], physical_size=(0.25, 0.5), physical_unit=unit)
    write(tmp_path / "map.tif", PALETTE, info)
    with tifffile.TiffFile(tmp_path / "map.tif") as tif:
        tags = tif.pages[0].tags
        assert tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        x_num, x_den = tags["XResolution"].value
        y_num, y_den = tags["YResolution"].value
        assert (x_num / x_den, y_num / y_den) == (40000.0, 20000.0)
    with Image.open(tmp_path / "map.tif") as opened:  # Pillow turns pixels/cm into dpi
        assert opened.info["dpi"] == pytest.approx((40000 * 2.54, 20000 * 2.54))


@pytest.mark.parametrize(
    ("size", "unit"),
    [((0.25, 0.5), "mm"), ((0.0, 0.5), "µm"), ((0.5, 0.0), "µm"), ((0.0, 0.0), None)],
    ids=["millimetres", "zero-x", "zero-y", "zero-both"],
)
def test_no_resolution_for_other_units_or_zero_sizes(
    tmp_path: Path, size: tuple[float, float], unit: str | None
) -> None:
    # A unit other than micrometres is not read as micrometres, and a zero OME size (an
    # upload can say PhysicalSizeX="0") writes the map without a resolution, not a crash.
    info = TiffInfo(geo_tags=[], physical_size=size, physical_unit=unit)
    write(tmp_path / "map.tif", PALETTE, info)
    with tifffile.TiffFile(tmp_path / "map.tif") as tif:
        tags = tif.pages[0].tags
        assert tags["ResolutionUnit"].value == tifffile.RESUNIT.NONE
        assert tags["XResolution"].value == tags["YResolution"].value == (1, 1)
        assert np.array_equal(tif.pages[0].asarray(), LABELS)
