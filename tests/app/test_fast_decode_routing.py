"""Which files `app.imaging.fast_decode` decodes itself and which it leaves to Pillow
(None): a PNG tEXt chunk whose keyword could carry an orientation (EXIF, XMP) goes to
Pillow, one that only mentions EXIF in its text does not; a JPEG is read whole only up
to 4 bytes a pixel + 64 KiB. The pixels are Pillow's either way, so these tests look at
the route itself (pinned because the mutation run found nothing else did)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from app.imaging.fast_decode import fast_jpeg, fast_png

PIXELS = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)


def chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_with_text(text: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(PIXELS).save(buffer, format="PNG")
    plain = buffer.getvalue()
    return plain[:33] + chunk(b"tEXt", text) + plain[33:]  # right after IHDR


def fast_png_of(data: bytes) -> np.ndarray | None:
    source = io.BytesIO(data)
    with Image.open(source) as opened:
        return fast_png(opened, source)


@pytest.mark.parametrize(
    "text",
    [
        b"Raw profile type exif\0\n exif\n 0\n",
        b"Raw profile type EXIF\0x",
        b"XML:com.adobe.xmp\0<x/>",
        b"xmp\0data",
        b"xml\0data",
        b"xmp",  # no NUL: Pillow takes the whole text as the keyword, and so does this
    ],
)
def test_text_keywords_that_could_carry_an_orientation_go_to_pillow(text: bytes) -> None:
    assert fast_png_of(png_with_text(text)) is None


@pytest.mark.parametrize(
    "text",
    [
        b"Comment\0exif",  # the keyword is before the first NUL; the text may say anything
        b"Comment\0exif\0xmp",
        b"Title\0",
        b"Author\0xml and xmp",
    ],
)
def test_other_text_chunks_keep_the_direct_decoder(text: bytes) -> None:
    decoded = fast_png_of(png_with_text(text))
    assert decoded is not None and np.array_equal(decoded, PIXELS)


def jpeg_of_size(size: int) -> tuple[bytes, int, int]:
    """A 16x8 grey JPEG padded with comment segments to exactly `size` bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 16), 77, np.uint8)).save(buffer, format="JPEG", quality=90)
    plain = buffer.getvalue()
    missing = size - len(plain)
    segments = []
    while missing > 0:
        # A COM segment: marker (2) + length (2) + payload; length counts itself.
        total = min(missing, 60000)
        if 0 < missing - total < 4:  # leave room for a last whole segment
            total -= 4
        payload = b"c" * (total - 4)
        segments.append(b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload)
        missing -= total
    data = plain[:2] + b"".join(segments) + plain[2:]
    assert len(data) == size
    return data, 8, 16


def fast_jpeg_of(data: bytes) -> np.ndarray | None:
    source = io.BytesIO(data)
    with Image.open(source) as opened:
        return fast_jpeg(opened, source)


def test_a_jpeg_up_to_four_bytes_a_pixel_plus_64_kib_is_read_whole() -> None:
    limit = 4 * 8 * 16 + 65536
    data, height, width = jpeg_of_size(limit)
    decoded = fast_jpeg_of(data)
    assert decoded is not None and decoded.shape == (height, width)
    assert np.abs(decoded.astype(int) - 77).max() <= 1


def test_a_jpeg_one_byte_over_that_goes_to_pillow() -> None:
    data, _, _ = jpeg_of_size(4 * 8 * 16 + 65536 + 1)
    assert fast_jpeg_of(data) is None
    data, _, _ = jpeg_of_size(5 * 8 * 16 + 65536)  # a limit of 5 bytes a pixel would take it
    assert fast_jpeg_of(data) is None


def test_a_large_noisy_jpeg_is_read_by_the_direct_decoder() -> None:
    """A limit of 4 * height / width + 64 KiB would send this 300x200 photo to Pillow."""
    noise = np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=100)
    assert len(buffer.getvalue()) > 4 * 300 + 65536  # the precondition
    decoded = fast_jpeg_of(buffer.getvalue())
    assert decoded is not None and decoded.shape == (200, 300, 3)


def test_a_grey_jpeg_decodes_directly_to_a_two_dimensional_map_equal_to_pillows() -> None:
    """Grey is decoded as libjpeg's GRAY (one channel) and given back as (H, W)."""
    smooth = np.add.outer(np.arange(24) * 5, np.arange(40) * 3).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(smooth).save(buffer, format="JPEG", quality=80)
    decoded = fast_jpeg_of(buffer.getvalue())
    assert decoded is not None and decoded.dtype == np.uint8 and decoded.shape == (24, 40)
    with Image.open(io.BytesIO(buffer.getvalue())) as reference:
        assert np.array_equal(decoded, np.asarray(reference))


def png_of_size(size: int) -> bytes:
    """An 8x16 RGB PNG padded by a neutral tEXt chunk to exactly `size` bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 16, 3), 9, np.uint8)).save(buffer, format="PNG")
    plain = buffer.getvalue()
    payload = b"Comment\0" + b"x" * (size - len(plain) - 12 - len(b"Comment\0"))
    data = plain[:33] + chunk(b"tEXt", payload) + plain[33:]
    assert len(data) == size
    return data


def test_a_png_up_to_two_bytes_a_sample_plus_64_kib_is_read_whole() -> None:
    """The limit counts samples (pixels x channels): an RGB file may be 3x an L one."""
    limit = 2 * 8 * 16 * 3 + 65536
    decoded = fast_png_of(png_of_size(limit))
    assert decoded is not None and decoded.shape == (8, 16, 3) and (decoded == 9).all()
    assert fast_png_of(png_of_size(limit + 1)) is None
    assert fast_png_of(png_of_size(2 * 8 * 16 + 65536 + 1)) is not None  # past 2 a pixel
