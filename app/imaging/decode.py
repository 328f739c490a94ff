"""Image decoding with the size checked before any pixel is decoded.

Conversion rules (also in the README):
- EXIF orientation is applied, so the class map matches the image as viewers show it.
- Multi-frame files (animated GIF, multi-page TIFF): the first frame is used.
- 16-bit and 32-bit integer grey is scaled to 8 bits (v / 257, rounded); float grey is
  clipped to 0-255 (NaN becomes 0). Palette images become RGB (or RGBA with transparency), CMYK and
  YCbCr become RGB, 1-bit becomes L.
- Alpha is dropped: pixels keep their colour values, transparency is not composited.
- To 1 model channel: ITU-R 601-2 luma (Pillow "L"); to 3: RGB, grey replicated.

Only the plugins of the accepted formats parse an upload, and whatever a plugin raises on
a damaged file is InvalidImage (400), never a 500.

Pillow always reads the header (format, size, mode: the size limit is checked there). The
pixels of plain PNGs (8-bit grey, RGB or RGBA, no transparency chunk, nothing that could
carry an EXIF orientation, no animation, no compressed text) are then decoded by libspng
(imagecodecs, already a dependency for TIFF): about 2x faster for RGB, whose pixels Pillow
unpacks to 4 bytes each and copies again into numpy. libspng's output for those files is
exactly Pillow's (PNG is lossless; gamma, sRGB, cHRM and ICC chunks are ignored by both),
and it is the stricter reader (chunk CRCs, the zlib checksum): a file it refuses goes to
Pillow, which decides as before. Everything else is Pillow's. JPEG stays on Pillow, which
runs libjpeg-turbo itself: simplejpeg measured at most ~0.3 ms faster per 480x360 image,
not worth a dependency (issue 15).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import numpy as np
from imagecodecs import spng_decode  # loaded now, not on the first request
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from app.errors import InvalidImage, PayloadTooLarge

# We enforce our own limit (SEG_MAX_PIXELS) from the header before decoding; Pillow's
# own bomb check would fire at a different, fixed size.
Image.MAX_IMAGE_PIXELS = None
# The Pillow plugins allowed to parse an upload, by the ids Image.open knows them by; every
# other plugin (DDS, AVIF, SPIDER, ...) never sees untrusted bytes. The JPEG plugin also
# opens MPO files, which Image.open lists under JPEG.
OPEN_FORMATS = tuple(
    plugin.format
    for plugin in (
        PngImagePlugin.PngImageFile,
        JpegImagePlugin.JpegImageFile,
        TiffImagePlugin.TiffImageFile,
        BmpImagePlugin.BmpImageFile,
        BmpImagePlugin.DibImageFile,
        WebPImagePlugin.WebPImageFile,
        GifImagePlugin.GifImageFile,
    )
)
SUPPORTED_FORMATS = frozenset({*OPEN_FORMATS, "MPO"})


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (H, W) grey or (H, W, 3) RGB, uint8, orientation applied
    format: str
    mode: str  # the file's own Pillow mode, before conversion

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def decode_image(
    data: bytes | IO[bytes],
    max_pixels: int,
    check_size: Callable[[int, int], None] | None = None,
) -> DecodedImage:
    """Decode an untrusted image file: its bytes, or a seekable binary file positioned at 0.

    Anything the file makes Pillow raise is the client's bad image (InvalidImage, 400);
    a size above `max_pixels` is PayloadTooLarge (413), checked from the header alone, as
    is anything `check_size(width, height)` raises (e.g. an answer too large for that size).
    """
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if _is_empty(source):
        raise InvalidImage("the request carried no image data")
    try:
        opened = Image.open(source, formats=OPEN_FORMATS)  # lazy: reads the header only
    except UnidentifiedImageError:
        raise InvalidImage("the data is not an image in a supported format") from None
    except MemoryError:
        raise _too_much_memory() from None
    except Exception as exc:  # any plugin failure on untrusted data is a bad file
        raise InvalidImage(f"the image header cannot be read: {_reason(exc)}") from None
    with opened:
        return _decode_opened(opened, source, max_pixels, check_size)


def declared_pixels(source: IO[bytes]) -> int:
    """Width x height as the file's header declares it (0 when it cannot be read: decoding
    will then say why), the file left at 0. For admission, before any pixel is decoded."""
    try:
        with Image.open(source, formats=OPEN_FORMATS) as opened:
            width, height = opened.size
    except Exception:  # an untrusted file: decode_image reports it properly
        return 0
    finally:
        source.seek(0)
    return max(int(width), 0) * max(int(height), 0)


def _decode_opened(
    opened: Image.Image,
    source: IO[bytes],
    max_pixels: int,
    check_size: Callable[[int, int], None] | None,
) -> DecodedImage:
    file_format = opened.format or ""
    if file_format not in SUPPORTED_FORMATS:
        raise InvalidImage(f"image format {file_format or 'unknown'} is not supported")
    width, height = opened.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"the image declares {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} (SEG_MAX_PIXELS)"
        )
    if check_size is not None:
        check_size(width, height)
    mode = opened.mode
    try:
        pixels = fast_png(opened, source)
        if pixels is None:
            opened.seek(0)
            opened.load()
            pixels = _to_canonical(ImageOps.exif_transpose(opened))
    except MemoryError:
        raise _too_much_memory() from None
    except Exception as exc:  # any plugin failure on untrusted data is a bad file
        raise InvalidImage(f"the image data is truncated or corrupt: {_reason(exc)}") from None
    return DecodedImage(pixels, file_format, mode)


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
    # Read whole only when no larger than its pixels (+ slack): a file on disk (spooled)
    # that is mostly ancillary chunks is not pulled into memory for this.
    if source.seek(0, io.SEEK_END) > 2 * height * width * len(channels or (1,)) + 65536:
        return None
    source.seek(0)
    data = source.read()
    if not _plain_chunks(data, colour_type):
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


def _is_empty(source: IO[bytes]) -> bool:
    start = source.tell()
    empty = not source.read(1)
    source.seek(start)
    return empty


def _reason(exc: Exception) -> str:
    """A short, printable description of a decoder failure (no paths, no raw bytes)."""
    text = str(exc)[:200].encode("ascii", "backslashreplace").decode("ascii")
    return text if text else type(exc).__name__


def _too_much_memory() -> PayloadTooLarge:
    return PayloadTooLarge("the image needs more memory to decode than the server has free")


def _to_canonical(image: Image.Image) -> np.ndarray:
    """Grey (H, W) or RGB (H, W, 3) uint8 following the module's rules."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return np.asarray(image)
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image).astype(np.float64)
        if mode.startswith("I"):
            values = values / 257.0
        # NaN (float files) would make the cast undefined: it becomes 0.
        return np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)
    if mode in ("1", "LA", "La"):
        return np.asarray(image.convert("L"))
    if mode in ("P", "PA"):
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Canonical pixels to (H, W, channels) uint8 for a model."""
    if pixels.ndim == 2:
        grey = pixels[..., None]
        return grey if channels == 1 else np.repeat(grey, 3, axis=2)
    if channels == 3:
        return pixels
    return np.asarray(Image.fromarray(pixels, "RGB").convert("L"))[..., None]
