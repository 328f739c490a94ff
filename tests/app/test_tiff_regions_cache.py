"""TiffRegions decodes only the segments a region touches, and keeps decoded segments in an
LRU cache bounded by bytes of canonical (uint8) pixels: neighbouring regions of a job do not
decode a tile twice, and memory stays at the budget. Decodes are counted at page.decode."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from app.imaging.tiff_regions import TiffRegions

TILE = 32  # tiles of 32 x 32: 1024 canonical bytes each (grey uint8)


def grid(tmp_path: Path, rows: int, cols: int) -> tuple[Path, np.ndarray]:
    """A 16-bit grey image of rows x cols tiles whose tile (r, c) holds 257 * (10r + c)."""
    tiles = np.add.outer(np.arange(rows) * 10, np.arange(cols)).astype(np.uint16) * 257
    pixels = np.kron(tiles, np.ones((TILE, TILE), np.uint16))
    tifffile.imwrite(tmp_path / "g.tif", pixels, tile=(TILE, TILE), compression="zlib")
    return tmp_path / "g.tif", (pixels // 257).astype(np.uint8)


def counting(regions: TiffRegions) -> list[int]:
    """Segment indices decoded, in order."""
    decoded: list[int] = []
    decode: Callable[..., Any] = regions.decode

    def counted(data: bytes | None, index: int, **kwargs: Any) -> Any:
        decoded.append(index)
        return decode(data, index, **kwargs)

    regions.decode = counted  # type: ignore[method-assign]
    return decoded


def tile(regions: TiffRegions, row: int, col: int) -> np.ndarray:
    return regions.read(row * TILE, (row + 1) * TILE, col * TILE, (col + 1) * TILE)


def test_a_region_decodes_only_the_segments_it_touches(tmp_path: Path) -> None:
    path, expected = grid(tmp_path, 3, 4)
    regions = TiffRegions(path)
    decoded = counting(regions)
    out = regions.read(40, 70, 70, 100)  # rows 1-2, columns 2-3 of the tile grid
    assert out.dtype == np.uint8 and np.array_equal(out, expected[40:70, 70:100])
    assert sorted(decoded) == [6, 7, 10, 11]
    regions.close()


def test_the_cache_keeps_the_most_recently_used_segments_within_its_bytes(
    tmp_path: Path,
) -> None:
    path, expected = grid(tmp_path, 1, 4)
    regions = TiffRegions(path, cache_bytes=2 * TILE * TILE)  # room for exactly two tiles
    decoded = counting(regions)
    # 0 and 1 both kept; 0 used again, so 2 evicts 1; after 2 then 0, 1 evicts 2; 0 stays
    steps = [(0, [0]), (1, [1]), (0, []), (2, [2]), (2, []), (0, []), (1, [1]), (0, []), (2, [2])]
    for col, decodes in steps:
        before = len(decoded)
        assert np.array_equal(tile(regions, 0, col), expected[:, col * TILE : (col + 1) * TILE])
        assert decoded[before:] == decodes, (col, decoded)
        assert regions.cached == sum(s.nbytes for s in regions.cache.values()) <= 2048
    regions.close()


def test_a_segment_larger_than_the_cache_is_still_kept_until_the_next(tmp_path: Path) -> None:
    path, expected = grid(tmp_path, 1, 2)
    regions = TiffRegions(path, cache_bytes=100)
    decoded = counting(regions)
    for _ in range(3):  # the rows of one tile, read in three bands, decode it once
        assert np.array_equal(regions.read(0, TILE, 0, TILE), expected[:, :TILE])
    assert decoded == [0]
    tile(regions, 0, 1)
    assert decoded == [0, 1] and list(regions.cache) == [1]
    regions.close()
