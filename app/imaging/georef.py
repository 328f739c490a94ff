"""GeoTIFF georeferencing: the pixel-to-map affine transform and the CRS of an upload.

Read from the TIFF tags with Pillow (no GDAL): ModelTransformationTag (34264), else
ModelPixelScaleTag (33550) with one ModelTiepointTag (33922); the CRS is the EPSG code of
ProjectedCSTypeGeoKey (3072) or GeographicTypeGeoKey (2048) in the GeoKeyDirectoryTag
(34735). Raster space follows GeoTIFF's PixelIsArea (GDAL's convention): pixel (0, 0)'s top
left corner is (0, 0); a PixelIsPoint file's tie point is a pixel centre, shifted by half a
pixel as GDAL does.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from PIL import Image, TiffImagePlugin

MODEL_PIXEL_SCALE = 33550
MODEL_TIEPOINT = 33922
MODEL_TRANSFORMATION = 34264
GEO_KEY_DIRECTORY = 34735
ORIENTATION = 274
RASTER_TYPE_KEY = 1025  # GTRasterTypeGeoKey: 1 PixelIsArea, 2 PixelIsPoint
GEOGRAPHIC_TYPE_KEY = 2048
PROJECTED_TYPE_KEY = 3072
USER_DEFINED = 32767
# No real map coordinate or pixel size comes near this; larger values (and the overflow to
# infinity they could cause once multiplied by a pixel position) are refused.
MAX_MAGNITUDE = 1e15


@dataclass(frozen=True)
class GeoReference:
    """Map X = a*x + b*y + c, Y = d*x + e*y + f for pixel-edge coordinates (x, y)."""

    a: float
    b: float
    c: float
    d: float
    e: float
    f: float
    epsg: int | None  # None: the file names no EPSG code (user-defined or no GeoKeys)

    @property
    def flips(self) -> bool:
        """True when the transform mirrors (the usual north-up image: y down, Y up)."""
        return self.a * self.e - self.b * self.d < 0

    def describe(self) -> dict[str, Any]:
        return {
            "transform": [self.a, self.b, self.c, self.d, self.e, self.f],
            "crs": f"EPSG:{self.epsg}" if self.epsg is not None else None,
        }


def read_georeference(source: bytes | IO[bytes]) -> GeoReference | None:
    """The upload's georeferencing, or None (not a TIFF, no usable tags, a rotated or
    flipped orientation, or anything unreadable: the polygons stay in pixel coordinates).
    A file object is read from its start and left where it was."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    position = stream.tell()
    try:
        stream.seek(0)
        with Image.open(stream, formats=["TIFF"]) as image:
            if not isinstance(image, TiffImagePlugin.TiffImageFile):
                return None
            tags = image.tag_v2
            return _from_tags({key: tags.get(key) for key in _TAGS})
    except Exception:  # untrusted file: any failure only means "not georeferenced"
        return None
    finally:
        stream.seek(position)


_TAGS = (MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION, GEO_KEY_DIRECTORY, ORIENTATION)


def _numbers(value: Any) -> list[float] | None:
    if value is None:
        return None
    items = value if isinstance(value, Sequence) else (value,)
    try:
        numbers = [float(item) for item in items]
    except (TypeError, ValueError):
        return None
    usable = all(math.isfinite(n) and abs(n) <= MAX_MAGNITUDE for n in numbers)
    return numbers if usable else None


def _from_tags(tags: dict[int, Any]) -> GeoReference | None:
    orientation = tags.get(ORIENTATION)
    if orientation not in (None, 1):
        return None  # the decoder turns the pixels; the tags describe the file's own grid
    keys = _geo_keys(tags.get(GEO_KEY_DIRECTORY))
    epsg = keys.get(PROJECTED_TYPE_KEY) or keys.get(GEOGRAPHIC_TYPE_KEY)
    epsg = epsg if epsg is not None and 0 < epsg < USER_DEFINED else None
    shift = 0.5 if keys.get(RASTER_TYPE_KEY) == 2 else 0.0
    matrix = _numbers(tags.get(MODEL_TRANSFORMATION))
    if matrix is not None and len(matrix) == 16:
        a, b, _, c, d, e, _, f = matrix[:8]
        c, f = c - (a + b) * shift, f - (d + e) * shift
        reference = GeoReference(a, b, c, d, e, f, epsg)
    else:
        scale, tiepoint = _numbers(tags.get(MODEL_PIXEL_SCALE)), _numbers(tags.get(MODEL_TIEPOINT))
        if scale is None or tiepoint is None or len(scale) < 2 or len(tiepoint) < 6:
            return None
        i, j, _, x, y, _ = tiepoint[:6]
        sx, sy = scale[0], scale[1]
        i, j = i + shift, j + shift
        reference = GeoReference(sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy, epsg)
    return reference if reference.a * reference.e - reference.b * reference.d != 0 else None


def _geo_keys(directory: Any) -> dict[int, int]:
    """GeoKey id -> value for the keys stored inline (TIFFTagLocation 0)."""
    values = _numbers(directory)
    if values is None or len(values) < 4:
        return {}
    shorts = [int(v) for v in values]
    count = min(shorts[3], (len(shorts) - 4) // 4)
    keys: dict[int, int] = {}
    for n in range(count):
        key, location, _, value = shorts[4 + 4 * n : 8 + 4 * n]
        if location == 0:
            keys[key] = value
    return keys
