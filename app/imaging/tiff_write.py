"""Class maps as tiled BigTIFF: uint8 class indices with the model's palette as the
colour map, written tile row by tile row from a map that may live on disk."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

from app.imaging.tiff_regions import TiffInfo

TILE = 512


def colormap(palette: list[tuple[int, int, int]]) -> np.ndarray:
    """(3, 256) uint16 TIFF colour map: 8-bit colours scaled to 16 bits (x 257)."""
    table = np.zeros((3, 256), np.uint16)
    for index, colour in enumerate(palette[:256]):
        table[:, index] = np.asarray(colour, np.uint16) * 257
    return table


def write_class_map_tiff(
    path: Path,
    rows: Callable[[int, int], np.ndarray],
    height: int,
    width: int,
    palette: list[tuple[int, int, int]] | None,
    info: TiffInfo | None = None,
    tile: int = TILE,
) -> None:
    """Write the (height, width) map that `rows(y0, y1)` gives a band at a time (at most
    `tile` rows of it are in memory), deflate-compressed, with georeferencing and OME
    physical pixel sizes carried from `info`. Without a palette, a grey image (e.g. the
    top-class probability x 255)."""

    def tiles() -> Iterator[np.ndarray]:
        for top in range(0, height, tile):
            band = rows(top, min(top + tile, height))
            for left in range(0, width, tile):
                block = np.zeros((tile, tile), np.uint8)
                part = band[:, left : left + tile]
                block[: part.shape[0], : part.shape[1]] = part
                yield block

    # (code, datatype, count, value, write once): tifffile's extra-tag form.
    extratags = [(*tag, True) for tag in info.geo_tags] if info is not None else []
    resolution = None
    if info is not None and info.physical_size is not None:
        # Pixels per centimetre from the OME size in micrometres (the usual unit).
        size_x, size_y = info.physical_size
        if info.physical_unit in (None, "µm", "um") and size_x > 0 and size_y > 0:
            resolution = (1e4 / size_x, 1e4 / size_y, "CENTIMETER")
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        writer.write(
            tiles(), shape=(height, width), dtype=np.uint8, tile=(tile, tile),
            photometric="palette" if palette is not None else "minisblack",
            colormap=colormap(palette) if palette is not None else None, compression="zlib",
            extratags=extratags, resolution=resolution[:2] if resolution else None,
            resolutionunit=resolution[2] if resolution else None,
            metadata=None,
        )  # fmt: skip
