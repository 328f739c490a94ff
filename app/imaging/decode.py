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

Pillow always reads the header (format, size, mode: the size limit is checked there);
plain PNGs and JPEGs are then decoded by libspng and libjpeg-turbo directly, to exactly
Pillow's pixels (app/imaging/fast_decode.py), everything else by Pillow.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import numpy as np
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
from app.imaging.fast_decode import fast_pixels

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
        pixels = fast_pixels(opened, source)
        if pixels is None:
            opened.seek(0)
            opened.load()
            ImageOps.exif_transpose(opened, in_place=True)  # no copy when nothing to turn
            pixels = _to_canonical(opened)
    except MemoryError:
        raise _too_much_memory() from None
    except Exception as exc:  # any plugin failure on untrusted data is a bad file
        raise InvalidImage(f"the image data is truncated or corrupt: {_reason(exc)}") from None
    return DecodedImage(pixels, file_format, mode)


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
