"""Pillow's pixels, faster, for the plain PNG and JPEG files most uploads are.

`decode_image` (decode.py) has Pillow read the header first: the format, the size (the
pixel limit is checked there, before anything is decoded) and the mode. For a plain file,
`fast_pixels` then decodes the pixels with the library underneath directly:

- PNG, by libspng (from imagecodecs, already a dependency for TIFF): 8-bit grey, RGB or
  RGBA, no transparency chunk, nothing that could carry an EXIF orientation, no animation,
  no compressed text. PNG is lossless and libspng, like Pillow, ignores gamma, sRGB, cHRM
  and ICC chunks, so its pixels are Pillow's. About 2x faster for RGB, whose pixels Pillow
  unpacks to 4 bytes each and numpy copies again; about the same for grey (zlib and the
  Paeth filter dominate both).
- JPEG, by libjpeg-turbo through simplejpeg: baseline or progressive, grey or YCbCr/RGB
  (not CMYK/YCCK), no EXIF orientation other than 1, not MPO. Pillow runs libjpeg-turbo
  too, with the same defaults (accurate integer IDCT, fancy upsampling), so the pixels
  are the same; libjpeg-turbo versions could in principle differ by 1 in a channel, so
  the tests require exact equality with the Pillow installed (tests/app/
  test_fast_decode.py): a lock update that broke it would fail there, not in production.
  1.6x faster for a 1920x1440 4:2:0 photo (Pillow decodes to 4 bytes a pixel and copies).

Both libraries are the stricter readers (libspng checks chunk CRCs and the zlib checksum;
simplejpeg turns every libjpeg warning, a truncated file included, into an error): a
file either refuses, or whose decoded shape is not the header's, goes to Pillow, which
decides as before. A damaged file is therefore never accepted here that Pillow refuses.
"""

from __future__ import annotations

import io
from typing import IO

import numpy as np
import simplejpeg
from imagecodecs import spng_decode  # loaded now, not on the first request
from PIL import ExifTags, Image


def fast_pixels(opened: Image.Image, source: IO[bytes]) -> np.ndarray | None:
    """The canonical pixels of `opened` (read by Pillow from `source`, header only) when
    it is a plain PNG or JPEG, else None: Pillow decodes it. MemoryError propagates."""
    if opened.format == "PNG":
        return fast_png(opened, source)
    if opened.format == "JPEG":
        return fast_jpeg(opened, source)
    return None


def _whole_file(source: IO[bytes], limit: int) -> bytes | None:
    """The file's bytes, or None when it is larger than `limit`: a file on disk (spooled)
    that is mostly metadata is not pulled into memory for this."""
    if source.seek(0, io.SEEK_END) > limit:
        return None
    source.seek(0)
    return source.read()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow's modes of 8-bit PNGs: (PNG colour type, the decoded array's trailing shape).
_PLAIN_PNG: dict[str, tuple[int, tuple[int, ...]]] = {
    "L": (0, ()),
    "RGB": (2, (3,)),
    "RGBA": (6, (4,)),
}
# Chunks that send a PNG to Pillow: EXIF (an orientation), animation, compressed text (read
# by Pillow with its own bounds). tEXt is looked at by keyword (see `_orientation_text`).
_PILLOW_CHUNKS = frozenset({b"eXIf", b"acTL", b"fcTL", b"fdAT", b"zTXt", b"iTXt", b"tRNS"})


def fast_png(opened: Image.Image, source: IO[bytes]) -> np.ndarray | None:
    """The canonical pixels of a plain PNG (`opened` by Pillow from `source`) decoded by
    libspng, or None: Pillow decodes it.

    Plain: Pillow reads it as 8-bit L, RGB or RGBA (alpha dropped as `_to_canonical`
    does), the chunk list is whole up to IEND, and no chunk could change what Pillow's path
    gives (see `_PILLOW_CHUNKS`). A file libspng refuses, or whose decoded shape is not the
    header's, is Pillow's to decide."""
    if (
        opened.format != "PNG"
        or opened.mode not in _PLAIN_PNG
        or opened.info.get("transparency") is not None
    ):
        return None
    width, height = opened.size
    colour_type, channels = _PLAIN_PNG[opened.mode]
    samples = height * width * (channels[0] if channels else 1)
    data = _whole_file(source, 2 * samples + 65536)  # a PNG past 2 bytes a sample: Pillow
    if data is None or not _plain_chunks(data, colour_type):
        return None
    try:
        decoded = spng_decode(data)
    except MemoryError:
        raise  # 413, as from Pillow
    except Exception:  # a damaged file, or one libspng reads more strictly: Pillow decides
        return None
    if decoded.dtype != np.uint8 or decoded.shape != (height, width, *channels):
        return None
    if opened.mode == "RGBA":
        return np.ascontiguousarray(decoded[..., :3])
    return np.asarray(decoded)


def _plain_chunks(data: bytes, colour_type: int) -> bool:
    """IHDR says 8 bits of `colour_type`, every chunk fits in the file up to IEND, and none
    is one of `_PILLOW_CHUNKS` or an orientation-carrying tEXt."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 33:
        return False
    if data[24] != 8 or data[25] != colour_type:
        return False
    position = len(PNG_SIGNATURE)
    while position + 12 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        end = position + 12 + length
        if end > len(data) or kind in _PILLOW_CHUNKS:
            return False
        if kind == b"tEXt" and _orientation_text(data[position + 8 : end - 4]):
            return False
        if kind == b"IEND":
            return True
        position = end
    return False


def _orientation_text(text: bytes) -> bool:
    """A tEXt chunk Pillow could read an EXIF orientation from ("Raw profile type exif",
    XMP, ...): judged by its keyword."""
    keyword = text.split(b"\0", 1)[0].lower()
    return b"exif" in keyword or b"xmp" in keyword or b"xml" in keyword


# Pillow's JPEG modes decoded here, with simplejpeg's colour space for them.
_PLAIN_JPEG = {"L": "GRAY", "RGB": "RGB"}
_ROTATING = frozenset(range(2, 9))  # EXIF orientations exif_transpose acts on


def fast_jpeg(opened: Image.Image, source: IO[bytes]) -> np.ndarray | None:
    """The canonical pixels of a plain JPEG decoded by libjpeg-turbo (simplejpeg), or
    None: Pillow decodes it (CMYK, MPO, an EXIF orientation, a file simplejpeg refuses)."""
    if opened.format != "JPEG" or opened.mode not in _PLAIN_JPEG:
        return None
    try:  # exactly what exif_transpose asks (EXIF, then XMP): damage there is Pillow's
        orientation = opened.getexif().get(ExifTags.Base.Orientation, 1)
    except MemoryError:
        raise
    except Exception:
        return None
    if orientation in _ROTATING:
        return None
    width, height = opened.size
    data = _whole_file(source, 4 * height * width + 65536)
    if data is None:
        return None
    try:
        decoded: np.ndarray = simplejpeg.decode_jpeg(  # Pillow's settings; warnings raise
            data, _PLAIN_JPEG[opened.mode], fastdct=False, fastupsample=False, strict=True
        )
    except MemoryError:
        raise
    except Exception:  # an error or a libjpeg warning (truncation, ...): Pillow decides
        return None
    channels = 1 if opened.mode == "L" else 3
    if decoded.dtype != np.uint8 or decoded.shape != (height, width, channels):
        return None
    return decoded.reshape(height, width) if channels == 1 else decoded
