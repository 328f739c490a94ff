"""What TiffRegions.info() says of a TIFF that carries no description: no physical pixel
size and no unit (None, not empty text), so the job's result BigTIFF is written without a
resolution instead of failing to read one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from app.imaging.tiff_regions import TiffRegions
from app.imaging.tiff_write import write_class_map_tiff


def test_a_tiff_without_description_has_no_physical_size(tmp_path: Path) -> None:
    pixels = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    tifffile.imwrite(tmp_path / "plain.tif", pixels, metadata=None)
    with tifffile.TiffFile(tmp_path / "plain.tif") as written:
        assert written.pages.first.description == ""  # the precondition: no description
    regions = TiffRegions(tmp_path / "plain.tif")
    try:
        info = regions.info()
        assert info.physical_size is None and info.physical_unit is None
        assert np.array_equal(regions.read(0, 12, 0, 10), pixels)
    finally:
        regions.close()
    labels = (pixels % 2).astype(np.uint8)
    palette = [(0, 0, 0), (255, 255, 255)]
    write_class_map_tiff(tmp_path / "out.tif", lambda y0, y1: labels[y0:y1], 12, 10, palette, info)
    with tifffile.TiffFile(tmp_path / "out.tif") as result:
        assert np.array_equal(result.asarray(), labels)
        assert result.pages.first.tags["ResolutionUnit"].value == 1  # none
