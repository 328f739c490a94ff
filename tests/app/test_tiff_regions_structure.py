"""What TiffRegions accepts and refuses, with the exact detail a job's client reads in its
problem+json (InvalidImage): separate colour planes, sample counts and types, empty sizes,
segment tables that do not cover the image; and the OME physical sizes carried over."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.errors import InvalidImage
from app.imaging.tiff_regions import TiffRegions


def refused(detail: str) -> pytest.RaisesContext[InvalidImage]:
    return pytest.raises(InvalidImage, match=f"^{re.escape(detail)}$")


def set_entry(path: Path, code: int, field: str, value: int) -> None:
    """Overwrite the count or the (inline, first) value of tag `code` in a classic TIFF."""
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags[code]
        at, dtype = tag.offset, int(tag.dtype)
    raw = bytearray(path.read_bytes())
    if field == "count":
        struct.pack_into("<I", raw, at + 4, value)
    else:
        struct.pack_into("<H" if dtype == 3 else "<I", raw, at + 8, value)
    path.write_bytes(bytes(raw))


def grey_tiff(pixels: np.ndarray, planar: int) -> bytes:
    """A minimal little-endian TIFF of one uncompressed 8-bit grey strip."""
    height, width = pixels.shape
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1)]
    entries += [(273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, height * width)]
    entries += [(284, 3, planar)]
    data_at = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for code, dtype, value in entries:
        ifd += struct.pack("<HHII", code, dtype, 1, data_at if code == 273 else value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + pixels.tobytes()


def test_one_sample_declared_planar_is_read(tmp_path: Path) -> None:
    # PlanarConfiguration 2 with one sample per pixel is the same layout as 1: legal.
    pixels = np.random.default_rng(6).integers(0, 256, (20, 30), dtype=np.uint8)
    (tmp_path / "p.tif").write_bytes(grey_tiff(pixels, planar=2))
    regions = TiffRegions(tmp_path / "p.tif")
    assert np.array_equal(regions.read(0, 20, 0, 30), pixels)
    regions.close()


@pytest.mark.parametrize(
    ("samples", "photometric", "extra"),
    [(3, "rgb", []), (2, "minisblack", ["unassalpha"])],
    ids=["rgb", "grey-alpha"],
)
def test_separate_colour_planes_are_refused(
    tmp_path: Path, samples: int, photometric: str, extra: list[str]
) -> None:
    planes = np.zeros((samples, 20, 30), np.uint8)
    tifffile.imwrite(
        tmp_path / "p.tif",
        planes,
        planarconfig="separate",
        photometric=photometric,
        extrasamples=extra,
    )
    with refused("TIFF with separate colour planes is not supported"):
        TiffRegions(tmp_path / "p.tif")


def test_five_samples_are_refused(tmp_path: Path) -> None:
    pixels = np.zeros((20, 30, 5), np.uint8)
    tifffile.imwrite(tmp_path / "s5.tif", pixels, photometric="minisblack", planarconfig="contig")
    with refused("TIFF with 5 samples is not supported"):
        TiffRegions(tmp_path / "s5.tif")


@pytest.mark.parametrize(
    ("pixels", "name"),
    [
        (np.full((20, 30), 3 + 4j, np.complex64), "complex64"),
        (np.ones((20, 30), bool), "bool"),
    ],
    ids=["complex", "bilevel"],
)
def test_sample_types_other_than_integers_and_floats_are_refused(
    tmp_path: Path, pixels: np.ndarray, name: str
) -> None:
    tifffile.imwrite(tmp_path / "t.tif", pixels)
    with refused(f"TIFF sample type {name} is not supported"):
        TiffRegions(tmp_path / "t.tif")


@pytest.mark.parametrize(("code", "size"), [(257, "32x0"), (256, "0x32")], ids=["h", "w"])
@pytest.mark.parametrize("tiled", [False, True], ids=["strips", "tiles"])
def test_an_empty_size_is_refused(tmp_path: Path, code: int, size: str, tiled: bool) -> None:
    layout = {"tile": (16, 16)} if tiled else {}
    pixels = np.zeros((32, 32), np.uint8)
    tifffile.imwrite(tmp_path / "z.tif", pixels, metadata=None, **layout)
    set_entry(tmp_path / "z.tif", code, "value", 0)  # ImageLength or ImageWidth
    with refused(f"the TIFF declares an empty size {size}"):
        TiffRegions(tmp_path / "z.tif")


@pytest.mark.parametrize("code", [324, 325], ids=["offsets", "bytecounts"])
def test_a_tile_table_short_of_the_grid_is_refused(tmp_path: Path, code: int) -> None:
    # 256 x 300 in 128 x 128 tiles: 2 across, 3 down (the last row part full): 6 tiles.
    pixels = np.zeros((300, 256), np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", pixels, tile=(128, 128))
    set_entry(tmp_path / "t.tif", code, "count", 5)
    with refused("the TIFF's segment table does not cover its image"):
        TiffRegions(tmp_path / "t.tif")


@pytest.mark.parametrize("code", [273, 279], ids=["offsets", "bytecounts"])
def test_a_strip_table_short_of_the_image_is_refused(tmp_path: Path, code: int) -> None:
    pixels = np.zeros((300, 256), np.uint16)  # 5 strips of 64 rows, the last one 44
    tifffile.imwrite(tmp_path / "s.tif", pixels, rowsperstrip=64)
    set_entry(tmp_path / "s.tif", code, "count", 4)
    with refused("the TIFF's segment table does not cover its image"):
        TiffRegions(tmp_path / "s.tif")


def test_an_unreadable_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\xff" * 60)
    with pytest.raises(InvalidImage, match=r"^the TIFF file cannot be read: "):
        TiffRegions(tmp_path / "bad.tif")


@pytest.mark.parametrize(
    ("metadata", "size", "unit"),
    [
        ({"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25}, (0.5, 0.25), "µm"),  # OME's default
        (
            {"PhysicalSizeX": 2, "PhysicalSizeY": 3, "PhysicalSizeXUnit": "nm"},
            (2.0, 3.0),
            "nm",
        ),
        ({"PhysicalSizeX": 0.5}, None, None),  # one axis only: nothing to carry over
    ],
    ids=["default-unit", "nanometres", "x-only"],
)
def test_ome_physical_size_and_unit(
    tmp_path: Path,
    metadata: dict[str, object],
    size: tuple[float, float] | None,
    unit: str | None,
) -> None:
    tifffile.imwrite(tmp_path / "o.ome.tif", np.zeros((8, 8), np.uint8), metadata=metadata)
    regions = TiffRegions(tmp_path / "o.ome.tif")
    info = regions.info()
    regions.close()
    assert (info.physical_size, info.physical_unit) == (size, unit)
