"""`app.imaging.decode` beyond the fast decoders: grey files Pillow decodes stay (H, W),
16-bit grey comes back as uint8, and a decoder's failure is described in printable ASCII,
at most 200 characters of it, or by its type when it says nothing; a MemoryError is the
413 with its fixed text. Pinned because the mutation run found no other test did."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.errors import InvalidImage, PayloadTooLarge
from app.imaging import decode as decode_module
from app.imaging.decode import declared_pixels, decode_image

GREY = np.add.outer(np.arange(6) * 40, np.arange(7) * 3).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["TIFF", "BMP"])
def test_grey_files_pillow_decodes_stay_one_channel(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(GREY).save(buffer, format=fmt)
    decoded = decode_image(buffer.getvalue(), 10**6)
    assert decoded.mode == "L" and decoded.pixels.shape == (6, 7)
    assert np.array_equal(decoded.pixels, GREY)


def test_sixteen_bit_grey_decodes_to_uint8() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.array([[0, 257, 65535, 32896]], np.uint16)).save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue(), 100)
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.tolist() == [[0, 1, 255, 128]]


def failing_open(error: Exception):
    def open_(*args: object, **kwargs: object) -> Image.Image:
        raise error

    return open_


def test_a_decoder_message_is_cut_to_200_characters_of_printable_ascii(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(decode_module.Image, "open", failing_open(ValueError("é" * 300)))
    with pytest.raises(InvalidImage) as raised:
        decode_image(b"not read", 100)
    assert str(raised.value.detail) == "the image header cannot be read: " + "\\xe9" * 200


def test_a_decoder_failure_without_a_message_is_named_by_its_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(decode_module.Image, "open", failing_open(KeyError()))
    with pytest.raises(InvalidImage) as raised:
        decode_image(b"not read", 100)
    assert str(raised.value.detail) == "the image header cannot be read: KeyError"


def test_memory_running_out_is_413_with_its_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_module.Image, "open", failing_open(MemoryError()))
    with pytest.raises(PayloadTooLarge) as raised:
        decode_image(b"not read", 100)
    assert str(raised.value.detail) == (
        "the image needs more memory to decode than the server has free"
    )


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 5).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_plain_refusals_say_what_is_wrong() -> None:
    with pytest.raises(InvalidImage) as raised:
        decode_image(b"", 100)
    assert str(raised.value.detail) == "the request carried no image data"
    with pytest.raises(InvalidImage) as raised:
        decode_image(b"plain text, not an image", 100)
    assert str(raised.value.detail) == "the data is not an image in a supported format"
    with pytest.raises(PayloadTooLarge) as too_large:
        decode_image(png(7, 6), 41)
    assert str(too_large.value.detail) == (
        "the image declares 7x6 = 42 pixels; the limit is 41 (SEG_MAX_PIXELS)"
    )


def test_declared_pixels_reads_the_header_and_rewinds() -> None:
    source = io.BytesIO(png(7, 6))
    assert declared_pixels(source) == 42 and source.tell() == 0
    garbage = io.BytesIO(b"plain text, not an image")
    assert declared_pixels(garbage) == 0 and garbage.tell() == 0


def test_declared_pixels_opens_only_the_accepted_formats() -> None:
    buffer = io.BytesIO()
    Image.new("L", (7, 6)).save(buffer, format="PPM")  # Pillow reads PPM; uploads may not
    assert declared_pixels(io.BytesIO(buffer.getvalue())) == 0
