"""Image decoding with the size checked before any pixel is decoded.

Conversion rules (also in the README):
- EXIF orientation is applied, so the class map matches the image as viewers show it.
- Multi-frame files (animated GIF, multi-page TIFF): the first frame is used.
- 16-bit and 32-bit integer grey is scaled to 8 bits (v / 257, rounded); float grey is
  clipped to 0-255. Palette images become RGB (or RGBA with transparency), CMYK and
  YCbCr become RGB, 1-bit becomes L.
- Alpha is dropped: pixels keep their colour values, transparency is not composited.
- To 1 model channel: ITU-R 601-2 luma (Pillow "L"); to 3: RGB, grey replicated.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import InvalidImage, PayloadTooLarge

# We enforce our own limit (SEG_MAX_PIXELS) from the header before decoding; Pillow's
# own bomb check would fire at a different, fixed size.
Image.MAX_IMAGE_PIXELS = None
SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "TIFF", "BMP", "DIB", "WEBP", "GIF"})


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


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    if not data:
        raise InvalidImage("the request carried no image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except UnidentifiedImageError:
        raise InvalidImage("the data is not an image in a supported format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"the image header cannot be read: {exc}") from None
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
    try:
        opened.seek(0)
        opened.load()
        pixels = _to_canonical(ImageOps.exif_transpose(opened))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"the image data is truncated or corrupt: {exc}") from None
    return DecodedImage(pixels, file_format, opened.mode)


def _to_canonical(image: Image.Image) -> np.ndarray:
    """Grey (H, W) or RGB (H, W, 3) uint8 following the module's rules."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return np.asarray(image)
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image).astype(np.float64)
        if mode.startswith("I"):
            values = values / 257.0
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
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
