"""What the client sends (a file, bytes or a numpy array as an image body) and how it reads
the class-map PNG that comes back."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from segserve.errors import InputError, UnexpectedAnswer

# The service's table (app/imaging/media_types.py; a test keeps the two equal). The client
# does not import `app`: a user's own top-level `app` package would shadow it.
IMAGE_MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                     ".tif": "image/tiff", ".tiff": "image/tiff", ".bmp": "image/bmp",
                     ".webp": "image/webp", ".gif": "image/gif"}  # fmt: skip
UNTYPED = "application/octet-stream"  # the service sniffs the format

ImageInput: TypeAlias = str | os.PathLike[str] | bytes | NDArray[Any]


def describe(image: ImageInput) -> str:
    """A short name for an input in messages and progress lines."""
    if isinstance(image, bytes | bytearray | memoryview):
        return f"<{len(image)} bytes>"
    if isinstance(image, np.ndarray):
        return f"<array {'x'.join(map(str, image.shape))} {image.dtype}>"
    return os.fspath(image)


def array_png(pixels: NDArray[Any]) -> bytes:
    """A numpy image as a lossless PNG: (H, W) uint8 or uint16 grey, (H, W, 1|3|4) uint8."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    grey = pixels.ndim == 2 and pixels.dtype.kind == "u" and pixels.dtype.itemsize in (1, 2)
    colour = pixels.ndim == 3 and pixels.shape[2] in (3, 4) and pixels.dtype == np.uint8
    if not (grey or colour):
        raise InputError(
            f"cannot send an array of shape {pixels.shape} and dtype {pixels.dtype}: use "
            "(H, W) uint8 or uint16, or (H, W, 3|4) uint8"
        )
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise InputError(f"cannot send an empty image of shape {pixels.shape}")
    # Native byte order and contiguous: Pillow picks L, I;16, RGB or RGBA from the array.
    native = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("="))
    buffer = io.BytesIO()
    Image.fromarray(native).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def image_body(image: ImageInput) -> tuple[bytes, str]:
    """The request body and its content type for a path, encoded bytes or a numpy array."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image), UNTYPED
    if isinstance(image, np.ndarray):
        return array_png(image), "image/png"
    if not isinstance(image, str | os.PathLike):
        raise InputError(f"cannot send a {type(image).__name__}: give a path, bytes or an array")
    path = Path(image)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return data, IMAGE_MEDIA_TYPES.get(path.suffix.lower(), UNTYPED)


def class_map(png: bytes) -> NDArray[np.uint8]:
    """The class indices of the service's palette PNG, as an (H, W) uint8 array."""
    try:
        with Image.open(io.BytesIO(png), formats=["PNG"]) as image:
            if image.mode not in ("P", "L"):
                raise UnexpectedAnswer(f"the class map is a {image.mode} PNG, not a palette one")
            # Pixel values of a mode-P image are the palette indices: the classes.
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnexpectedAnswer(f"the class map is not a readable PNG: {exc}") from exc
