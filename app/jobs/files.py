"""A job's files: probing an upload's size without decoding it, and the class map kept in
a file mapped into memory."""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path

import numpy as np
from PIL import Image

from app.errors import InvalidImage
from app.imaging.decode import OPEN_FORMATS
from app.imaging.tiff_regions import TiffRegions, is_tiff

# A job's folder: its upload, its maps (mapped uint8 files) and its result files.
INPUT, LABELS, RESULT_PNG, RESULT_TIFF = "input", "labels.u8", "result.png", "result.tif"
CONFIDENCE, RESULT_CONFIDENCE = "confidence.u8", "confidence.tif"


def input_is_tiff(path: Path) -> bool:
    with open(path, "rb") as file:
        return is_tiff(file.read(4))


def probe_tiff(path: Path) -> tuple[int, int]:
    """Width and height of a TIFF's full-resolution image, its structure checked."""
    regions = TiffRegions(path)
    try:
        return regions.width, regions.height
    finally:
        regions.close()


class LabelFile:
    """The job's (height, width) uint8 class map in a file, mapped into memory. After each
    flush its pages are dropped from the process (they are on disk): a 32,768^2 map never
    counts as 1 GiB of resident memory."""

    def __init__(self, path: Path, height: int, width: int) -> None:
        size = height * width
        self.file = open(path, "r+b" if path.exists() else "w+b")  # noqa: SIM115
        if os.fstat(self.file.fileno()).st_size != size:
            self.file.truncate(size)
        self.map = mmap.mmap(self.file.fileno(), size)
        self.array: np.ndarray = np.frombuffer(self.map, np.uint8).reshape(height, width)

    def flush(self) -> None:
        self.map.flush()
        self.map.madvise(mmap.MADV_DONTNEED)

    def band(self, y0: int, y1: int) -> np.ndarray:
        """Rows y0:y1 as an array of their own; the mapped pages are dropped again."""
        rows = np.array(self.array[y0:y1])
        self.map.madvise(mmap.MADV_DONTNEED)
        return rows

    def __enter__(self) -> LabelFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.map.flush()
        del self.array
        # A view may still be referenced (by an exception's traceback): the map then closes
        # when the view goes.
        with contextlib.suppress(BufferError):
            self.map.close()
        self.file.close()


def probe_image(path: Path) -> tuple[int, int]:
    """Width and height from the file's header, without decoding a pixel."""
    try:
        with Image.open(path, formats=OPEN_FORMATS) as opened:
            width, height = opened.size
    except Exception as exc:  # an untrusted file: any failure is a bad image
        raise InvalidImage(f"the upload is not an image in a supported format ({exc})") from None
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the image declares an empty size {width}x{height}")
    return int(width), int(height)
