"""Pixel values TiffRegions gives for the sample types and layouts the README's conversion
rules cover: signed and float samples scaled and clipped, MinIsWhite inverted, grey with
alpha, one-row/one-column images, one-row strips, JPEG with shared tables, empty tiles.
Expected values are computed by hand or decoded by Pillow, never by TiffRegions."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from app.imaging.tiff_regions import TiffRegions


def read_all(path: Path) -> np.ndarray:
    regions = TiffRegions(path)
    try:
        return regions.read(0, regions.height, 0, regions.width)
    finally:
        regions.close()


def test_float_samples_are_rounded_and_clipped_to_0_255(tmp_path: Path) -> None:
    values = np.array([[-5.0, 0.4, 254.6, 255.5, 300.0, 1000.0]], np.float32)
    tifffile.imwrite(tmp_path / "f.tif", values)
    out = read_all(tmp_path / "f.tif")
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 255, 255, 255, 255]]


def test_signed_16_bit_samples_are_divided_by_257_and_negatives_clip_to_0(
    tmp_path: Path,
) -> None:
    values = np.array([[-32768, -300, 0, 128, 129, 257, 32767]], np.int16)
    tifffile.imwrite(tmp_path / "i.tif", values)
    out = read_all(tmp_path / "i.tif")
    assert out.dtype == np.uint8
    # 128/257 = 0.498 -> 0, 129/257 = 0.502 -> 1, 32767/257 = 127.498 -> 127
    assert out.tolist() == [[0, 0, 0, 0, 1, 1, 127]]


@pytest.mark.parametrize(
    ("values", "tiled"),
    [
        (np.array([[0, 10, 200, 255]] * 16, np.uint8), False),
        (np.array([[0, 2570, 51400, 65535]] * 16, np.uint16), True),  # x257: 0, 10, 200, 255
    ],
    ids=["8-bit-strips", "16-bit-tiles"],
)
def test_min_is_white_is_inverted(tmp_path: Path, values: np.ndarray, tiled: bool) -> None:
    layout = {"tile": (16, 16)} if tiled else {}
    tifffile.imwrite(tmp_path / "w.tif", values, photometric="miniswhite", **layout)
    out = read_all(tmp_path / "w.tif")
    assert out.dtype == np.uint8
    assert out.tolist() == [[255, 245, 55, 0]] * 16


def test_grey_with_alpha_gives_the_grey_channel(tmp_path: Path) -> None:
    pixels = np.random.default_rng(4).integers(0, 256, (40, 50, 2), dtype=np.uint8)
    tifffile.imwrite(
        tmp_path / "ga.tif", pixels, photometric="minisblack", extrasamples=["unassalpha"]
    )
    regions = TiffRegions(tmp_path / "ga.tif")
    out = regions.read(5, 35, 10, 45)
    regions.close()
    assert out.dtype == np.uint8 and out.shape == (30, 35)
    assert np.array_equal(out, pixels[5:35, 10:45, 0])


@pytest.mark.parametrize("shape", [(1, 30), (30, 1)], ids=["one-row", "one-column"])
def test_one_pixel_thin_images_are_read(tmp_path: Path, shape: tuple[int, int]) -> None:
    pixels = np.arange(30, dtype=np.uint8).reshape(shape) * 7
    tifffile.imwrite(tmp_path / "thin.tif", pixels)
    regions = TiffRegions(tmp_path / "thin.tif")
    assert regions.shape == shape
    assert np.array_equal(regions.read(0, shape[0], 0, shape[1]), pixels)
    regions.close()


def test_strips_of_one_row(tmp_path: Path) -> None:
    pixels = np.random.default_rng(5).integers(0, 256, (30, 20), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "r1.tif", pixels, rowsperstrip=1)
    regions = TiffRegions(tmp_path / "r1.tif")
    assert np.array_equal(regions.read(3, 17, 2, 19), pixels[3:17, 2:19])
    assert np.array_equal(regions.read(0, 30, 0, 20), pixels)
    regions.close()


def test_jpeg_strips_with_shared_tables_as_libtiff_writes_them(tmp_path: Path) -> None:
    # Pillow saves through libtiff: abbreviated JPEG strips whose quantisation and Huffman
    # tables are in the JPEGTables tag, not in each strip.
    y, x = np.mgrid[0:100, 0:120]
    rgb = np.stack([(x * 2) % 256, (y * 2) % 256, (x + y) % 256], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "j.tif", compression="jpeg", strip_size=120 * 3 * 16)
    with tifffile.TiffFile(tmp_path / "j.tif") as tif:  # the file is what the test needs
        assert tif.pages[0].jpegtables and len(tif.pages[0].dataoffsets) > 1
    with Image.open(tmp_path / "j.tif") as opened:
        reference = np.asarray(opened.convert("RGB")).astype(int)
    regions = TiffRegions(tmp_path / "j.tif")
    out = regions.read(10, 90, 5, 115)
    regions.close()
    assert out.dtype == np.uint8 and out.shape == (80, 110, 3)
    assert np.abs(out - reference[10:90, 5:115]).max() <= 2


def test_a_tile_with_no_bytes_reads_as_zeros(tmp_path: Path) -> None:
    # A sparse file: a TileByteCounts entry of 0 means the tile was never written.
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) + 1000) * 3
    tifffile.imwrite(tmp_path / "s.tif", pixels, tile=(32, 32), compression="zlib")
    with tifffile.TiffFile(tmp_path / "s.tif") as tif:
        tag = tif.pages[0].tags[325]  # TileByteCounts
        fmt, at = {3: "<H", 4: "<I"}[int(tag.dtype)], tag.valueoffset
    raw = bytearray((tmp_path / "s.tif").read_bytes())
    struct.pack_into(fmt, raw, at + struct.calcsize(fmt), 0)  # tile 1: top right
    (tmp_path / "s.tif").write_bytes(bytes(raw))
    expected = np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8)
    expected[:32, 32:] = 0
    out = read_all(tmp_path / "s.tif")
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
