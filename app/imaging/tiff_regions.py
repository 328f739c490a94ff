"""Regions of a TIFF, BigTIFF or OME-TIFF read tile by tile (or strip by strip), never the
whole image: huge EM montages and remote-sensing scenes go through jobs this way.

Pixels come out canonical as from `decode_image` (README, "Image conversion rules"):
(h, w) grey or (h, w, 3) RGB uint8; 16-bit values scaled by 1/257 and rounded; alpha
dropped. A pyramidal file is read at its full-resolution level. Decoded segments are kept
in a small LRU cache, as neighbouring tiles overlap.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import tifffile

from app.errors import InvalidImage

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)  # pixel scale, tie points, transform, keys
CACHE_BYTES = 64 * 1024 * 1024


def is_tiff(head: bytes) -> bool:
    return head[:4] in TIFF_MAGIC


@dataclass(frozen=True)
class TiffInfo:
    """What carries over from an input TIFF to the class-map TIFF."""

    geo_tags: list[tuple[int, int, int, Any]]  # (code, datatype, count, value) for tifffile
    physical_size: tuple[float, float] | None  # OME PhysicalSizeX, PhysicalSizeY
    physical_unit: str | None


class TiffRegions:
    """`read(y0, y1, x0, x1)` of the file's full-resolution image, canonical uint8."""

    def __init__(self, path: Path, cache_bytes: int = CACHE_BYTES) -> None:
        self.handle: BinaryIO = open(path, "rb")  # noqa: SIM115 (closed by close())
        try:
            # OME-XML may name other files (any path on this machine) holding its planes:
            # never follow them. The file's own first image is read; its XML still gives
            # the pixel sizes (info).
            self.tif = tifffile.TiffFile(self.handle, is_ome=False)
            self._open()
        except InvalidImage:
            self.close()
            raise
        except Exception as exc:  # an untrusted file: any failure is a bad image
            self.close()
            raise InvalidImage(f"the TIFF file cannot be read: {exc}") from None
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_bytes, self.cached = cache_bytes, 0

    def _open(self) -> None:
        series = self.tif.series[0]
        level = series.levels[0] if series.levels else series
        page = level.pages[0] if level.pages else None
        if not isinstance(page, tifffile.TiffPage):
            raise InvalidImage("the TIFF file holds no image page")
        if page.planarconfig == 2 and page.samplesperpixel > 1:
            raise InvalidImage("TIFF with separate colour planes is not supported")
        if page.samplesperpixel not in (1, 2, 3, 4) or page.imagedepth != 1:
            raise InvalidImage(f"TIFF with {page.samplesperpixel} samples is not supported")
        if page.dtype is None or np.dtype(page.dtype).kind not in "uif":
            raise InvalidImage(f"TIFF sample type {page.dtype} is not supported")
        self.page = page
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        if self.height <= 0 or self.width <= 0:
            raise InvalidImage(f"the TIFF declares an empty size {self.width}x{self.height}")
        self.samples = int(page.samplesperpixel)
        self.tiled = bool(page.is_tiled)
        self.seg_h = int(page.tilelength) if self.tiled else int(page.rowsperstrip or self.height)
        self.seg_w = int(page.tilewidth) if self.tiled else self.width
        self.seg_h = min(max(self.seg_h, 1), self.height)
        self.across = -(-self.width // self.seg_w)
        self.offsets, self.counts = page.dataoffsets, page.databytecounts
        expected = self.across * -(-self.height // self.seg_h)
        if len(self.offsets) < expected or len(self.counts) < expected:
            raise InvalidImage("the TIFF's segment table does not cover its image")
        self.miniswhite = page.photometric == 0
        self.decode = page.decode
        self.jpegtables = getattr(page, "jpegtables", None)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def info(self) -> TiffInfo:
        tags = []
        for code in GEO_TAGS:
            tag = self.page.tags.get(code)
            if tag is not None:
                tags.append((code, int(tag.dtype), int(tag.count), tag.value))
        size = unit = None
        description = self.tif.pages.first.description  # OME-XML, or anything else
        if description:
            size, unit = _ome_physical_size(description)
        return TiffInfo(tags, size, unit)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows y0:y1 and columns x0:x1 (clipped to the image), canonical uint8."""
        y1, x1 = min(y1, self.height), min(x1, self.width)
        channels = () if self.samples < 3 else (3,)
        out = np.empty((y1 - y0, x1 - x0, *channels), np.uint8)
        for row in range(y0 // self.seg_h, -(-y1 // self.seg_h)):
            for col in range(x0 // self.seg_w, -(-x1 // self.seg_w)):
                segment = self._segment(row * self.across + col)
                top, left = row * self.seg_h, col * self.seg_w
                sy0, sy1 = max(y0, top), min(y1, top + segment.shape[0])
                sx0, sx1 = max(x0, left), min(x1, left + segment.shape[1])
                if sy1 > sy0 and sx1 > sx0:
                    out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = segment[
                        sy0 - top : sy1 - top, sx0 - left : sx1 - left
                    ]
        return out

    def _segment(self, index: int) -> np.ndarray:
        cached = self.cache.get(index)
        if cached is not None:
            self.cache.move_to_end(index)
            return cached
        try:
            count = int(self.counts[index])
            data = None
            if count:
                self.handle.seek(int(self.offsets[index]))
                data = self.handle.read(count)
            decoded, _, shape = self.decode(data, index, jpegtables=self.jpegtables)
            if decoded is None:  # an empty segment: zeros
                decoded = np.zeros(shape, np.dtype(self.page.dtype))
            segment = _canonical(np.asarray(decoded).reshape(shape)[0], self.miniswhite)
        except InvalidImage:
            raise
        except Exception as exc:  # an untrusted file: any failure is a bad image
            raise InvalidImage(f"a TIFF segment cannot be decoded: {exc}") from None
        self.cache[index] = segment
        self.cached += segment.nbytes
        while self.cached > self.cache_bytes and len(self.cache) > 1:
            _, dropped = self.cache.popitem(last=False)
            self.cached -= dropped.nbytes
        return segment

    def close(self) -> None:
        tif = getattr(self, "tif", None)
        if tif is not None:
            tif.close()
        self.handle.close()


def _canonical(segment: np.ndarray, miniswhite: bool) -> np.ndarray:
    """(h, w, samples) of any supported type to (h, w) grey or (h, w, 3) RGB uint8."""
    values = segment
    if values.dtype != np.uint8:
        # As decode_image does with Pillow's I;16 and I modes: integers / 257, rounded;
        # floats clipped to 0-255.
        scaled = values.astype(np.float64)
        if values.dtype.kind in "ui":
            scaled /= 257.0
        values = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if miniswhite:
        values = 255 - values
    samples = values.shape[2] if values.ndim == 3 else 1
    if samples <= 2:  # grey, or grey with alpha: the alpha is dropped
        return np.ascontiguousarray(values.reshape(values.shape[0], values.shape[1], -1)[..., 0])
    return np.ascontiguousarray(values[..., :3])


def _ome_physical_size(xml: str) -> tuple[tuple[float, float] | None, str | None]:
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None, None
    for element in root.iter():
        if element.tag.endswith("Pixels"):
            x, y = element.get("PhysicalSizeX"), element.get("PhysicalSizeY")
            if x and y:
                try:
                    return (float(x), float(y)), element.get("PhysicalSizeXUnit") or "µm"
                except ValueError:
                    return None, None
    return None, None
