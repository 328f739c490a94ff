"""TIFF read region by region (tiled, striped, compressed, 8/16-bit, BigTIFF, OME
pyramids) and class maps written as tiled BigTIFF with a colour map and georeferencing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from app.errors import InvalidImage
from app.imaging.tiff_regions import TiffInfo, TiffRegions
from app.imaging.tiff_write import colormap, write_class_map_tiff


def grey16(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (height, width), dtype=np.uint16)


def canonical16(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)


REGIONS = [(0, 700, 0, 900), (100, 400, 250, 800), (650, 720, 850, 950), (37, 38, 0, 900)]


@pytest.mark.parametrize(
    "layout",
    [
        {"tile": (256, 256), "compression": "zlib"},
        {"rowsperstrip": 37, "compression": "lzw"},
        {"tile": (128, 256), "compression": "zstd"},
        {"tile": (256, 256), "bigtiff": True},
        {"rowsperstrip": 700},
    ],
    ids=["tiled-deflate", "strips-lzw", "tiled-zstd", "bigtiff", "one-strip"],
)
def test_regions_of_16_bit_grey_equal_the_whole_image(
    tmp_path: Path, layout: dict[str, Any]
) -> None:
    image = grey16(700, 900)
    tifffile.imwrite(tmp_path / "a.tif", image, **layout)
    regions = TiffRegions(tmp_path / "a.tif", cache_bytes=256 * 1024)  # evicts as it goes
    try:
        assert regions.shape == (700, 900)
        for y0, y1, x0, x1 in REGIONS:
            assert np.array_equal(regions.read(y0, y1, x0, x1), canonical16(image)[y0:y1, x0:x1])
    finally:
        regions.close()


def test_rgb_rgba_and_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (300, 500, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, tile=(128, 128), extrasamples=["unassalpha"])
    regions = TiffRegions(tmp_path / "rgba.tif")
    assert np.array_equal(regions.read(10, 290, 20, 480), rgba[10:290, 20:480, :3])
    regions.close()
    smooth = np.broadcast_to(np.arange(500, dtype=np.uint8)[None, :, None] // 2, (300, 500, 3))
    tifffile.imwrite(
        tmp_path / "jpeg.tif", np.ascontiguousarray(smooth), tile=(128, 128), compression="jpeg"
    )
    regions = TiffRegions(tmp_path / "jpeg.tif")
    decoded = tifffile.imread(tmp_path / "jpeg.tif")
    assert np.array_equal(regions.read(0, 300, 0, 500), decoded)
    regions.close()


def test_a_pyramid_is_read_at_full_resolution(tmp_path: Path) -> None:
    image = (grey16(512, 768) >> 8).astype(np.uint8)
    with tifffile.TiffWriter(tmp_path / "pyramid.ome.tif", bigtiff=True) as writer:
        writer.write(
            image,
            tile=(128, 128),
            subifds=2,
            metadata={"PhysicalSizeX": 0.004, "PhysicalSizeY": 0.005},
        )
        writer.write(image[::2, ::2], tile=(128, 128), subfiletype=1)
        writer.write(image[::4, ::4], tile=(128, 128), subfiletype=1)
    regions = TiffRegions(tmp_path / "pyramid.ome.tif")
    assert regions.shape == (512, 768)
    assert np.array_equal(regions.read(0, 512, 0, 768), image)
    assert regions.info().physical_size == (0.004, 0.005)
    regions.close()


@pytest.mark.parametrize(
    "data",
    [b"II*\x00" + b"\xff" * 60, b"MM\x00*\x00\x00\x00\x08" + bytes(40), b"II+\x00" + bytes(12)],
)
def test_broken_tiffs_are_bad_images(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "bad.tif").write_bytes(data)
    with pytest.raises(InvalidImage):
        TiffRegions(tmp_path / "bad.tif")


def test_a_corrupt_segment_is_a_bad_image(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", grey16(256, 256), tile=(128, 128), compression="zlib")
    regions = TiffRegions(tmp_path / "a.tif")
    raw = bytearray((tmp_path / "a.tif").read_bytes())
    offset = int(regions.offsets[1])
    raw[offset : offset + 64] = b"\x00" * 64
    regions.close()
    (tmp_path / "a.tif").write_bytes(bytes(raw))
    regions = TiffRegions(tmp_path / "a.tif")
    with pytest.raises(InvalidImage, match="segment"):
        regions.read(0, 256, 0, 256)
    regions.close()


def test_class_map_tiff_opens_with_its_colour_map_and_georeferencing(tmp_path: Path) -> None:
    labels = np.random.default_rng(2).integers(0, 3, (700, 1100), dtype=np.uint8)
    palette = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    geo = TiffInfo(
        geo_tags=[(33550, 12, 3, (0.5, 0.5, 0.0)), (33922, 12, 6, (0, 0, 0, 1000.0, 2000.0, 0))],
        physical_size=(0.004, 0.004),
        physical_unit="µm",
    )
    write_class_map_tiff(
        tmp_path / "map.tif", lambda y0, y1: labels[y0:y1], 700, 1100, palette, geo, tile=256
    )
    with tifffile.TiffFile(tmp_path / "map.tif") as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and page.photometric == 3
        assert np.array_equal(page.asarray(), labels)
        assert np.array_equal(page.colormap, colormap(palette))
        assert page.tags[33550].value == (0.5, 0.5, 0.0)
        assert page.tags[33922].value[3:5] == (1000.0, 2000.0)
        assert page.tags["XResolution"].value[0] / page.tags["XResolution"].value[1] == 2.5e6
    with Image.open(tmp_path / "map.tif") as opened:  # Pillow reads it as a palette image
        assert opened.mode == "P" and np.array_equal(np.asarray(opened), labels)
        assert opened.getpalette()[:9] == [255, 0, 0, 0, 255, 0, 0, 0, 255]
