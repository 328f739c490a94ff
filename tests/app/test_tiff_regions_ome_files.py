"""An uploaded OME-TIFF's XML can name other files (by any path on the server) as holding
its planes. TiffRegions never follows them: it reads the uploaded file's own first image,
and still takes the pixel sizes from the XML."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import tifffile

from app.imaging.tiff_regions import TiffRegions

OME = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="{own}">'
    '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint8" '
    'SizeX="8" SizeY="8" SizeC="1" SizeZ="1" SizeT="1" PhysicalSizeX="0.5" PhysicalSizeY="0.5">'
    '<TiffData IFD="0" PlaneCount="1"><UUID FileName="{name}">{other}</UUID></TiffData>'
    "</Pixels></Image></OME>"
)


def test_planes_named_in_another_file_are_not_read_from_it(tmp_path: Path) -> None:
    elsewhere = tmp_path / "server" / "private.tif"
    elsewhere.parent.mkdir()
    tifffile.imwrite(elsewhere, np.full((8, 8), 77, np.uint8), metadata=None)
    upload = tmp_path / "job" / "input"
    upload.parent.mkdir()
    own = np.arange(64, dtype=np.uint8).reshape(8, 8)
    for name in (str(elsewhere), "../server/private.tif"):
        xml = OME.format(own=uuid.uuid4().urn, name=name, other=uuid.uuid4().urn)
        tifffile.imwrite(upload, own, description=xml, metadata=None)
        regions = TiffRegions(upload)
        try:
            # Following the XML took the other file's page and read it at its offsets
            # in the upload's bytes: pixels of neither file.
            assert regions.shape == (8, 8)
            assert np.array_equal(regions.read(0, 8, 0, 8), own)
            assert regions.info().physical_size == (0.5, 0.5)
        finally:
            regions.close()
