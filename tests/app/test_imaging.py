import io
import struct
import tempfile
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, features

from app.errors import InvalidImage, PayloadTooLarge
from app.imaging.decode import decode_image, to_channels
from app.imaging.encode import (
    class_map_json,
    class_stats,
    decode_run_length,
    overlay_png,
    palette_png,
    run_length,
)
from tests.app.conftest import png_bytes

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (13, 17, 3), dtype=np.uint8)


def encoded(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "WEBP"])
def test_lossless_formats_decode_exactly(fmt: str) -> None:
    save = {"lossless": True} if fmt == "WEBP" else {}
    decoded = decode_image(encoded(Image.fromarray(RGB), fmt, **save), 10**6)
    assert decoded.format == fmt and np.array_equal(decoded.pixels, RGB)


def test_jpeg_decodes_close_to_the_original() -> None:
    smooth = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    decoded = decode_image(encoded(Image.fromarray(smooth), "JPEG", quality=95), 10**6)
    assert decoded.pixels.shape == (48, 64)
    assert np.abs(decoded.pixels.astype(int) - smooth).mean() < 3


def test_sixteen_bit_grey_is_scaled_to_eight_bits() -> None:
    values = np.array([[0, 257, 65535, 32896]], np.uint16)
    data = encoded(Image.fromarray(values), "PNG")
    decoded = decode_image(data, 100)
    assert decoded.mode.startswith("I") and decoded.pixels.tolist() == [[0, 1, 255, 128]]


def test_palette_rgba_la_and_bilevel_modes() -> None:
    palette_image = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    decoded = decode_image(encoded(palette_image, "PNG"), 10**6)
    assert np.array_equal(decoded.pixels, np.asarray(palette_image.convert("RGB")))
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])
    assert np.array_equal(decode_image(png_bytes(rgba), 10**6).pixels, RGB)  # alpha dropped
    la = Image.fromarray(RGB[..., 0]).convert("LA")
    assert np.array_equal(decode_image(encoded(la, "PNG"), 10**6).pixels, RGB[..., 0])
    bilevel = Image.fromarray(RGB[..., 0] > 127)
    assert set(np.unique(decode_image(encoded(bilevel, "PNG"), 10**6).pixels)) <= {0, 255}


def test_exif_orientation_is_applied() -> None:
    tall = np.zeros((20, 10, 3), np.uint8)
    tall[:5] = 255  # bright top band
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    decoded = decode_image(encoded(Image.fromarray(tall), "JPEG", exif=exif, quality=95), 10**6)
    assert decoded.pixels.shape == (10, 20, 3)
    assert decoded.pixels[:, -5:].mean() > 200 and decoded.pixels[:, :5].mean() < 50


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buffer.getvalue(), 10**6)
    assert decoded.pixels.shape[:2] == (8, 8) and decoded.pixels.mean() < 50


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares a size but carries almost no pixel data (an image bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


def test_bomb_is_rejected_from_the_header() -> None:
    with pytest.raises(PayloadTooLarge, match="100000x100000"):
        decode_image(png_header_only(100_000, 100_000), max_pixels=8192 * 8192)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, I am text", png_bytes(RGB)[:60], png_header_only(0, 5), png_header_only(64, 64)],
    ids=["empty", "text", "truncated-png", "zero-size", "short-pixel-data"],
)
def test_bad_data_is_invalid_image(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_image(data, 10**6)


def test_truncated_jpeg_is_invalid() -> None:
    data = encoded(Image.fromarray(RGB), "JPEG")
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2], 10**6)


def test_channel_conversion_rules() -> None:
    grey = RGB[..., 0]
    assert to_channels(grey, 1).shape == (13, 17, 1)
    assert np.array_equal(to_channels(grey, 3), np.dstack([grey] * 3))
    luma = to_channels(RGB, 1)[..., 0].astype(float)
    expected = RGB @ np.array([0.299, 0.587, 0.114])
    assert np.abs(luma - expected).max() <= 1.0  # ITU-R 601-2


def test_palette_png_round_trips_exact_indices() -> None:
    labels = RNG.integers(0, 11, (31, 29), dtype=np.uint8)
    palette = [(i * 20, 255 - i * 20, i) for i in range(11)]
    image = Image.open(io.BytesIO(palette_png(labels, palette)))
    assert image.mode == "P" and image.size == (29, 31)
    assert np.array_equal(np.asarray(image), labels)
    assert image.getpalette()[:33] == [v for c in palette for v in c]


def test_run_length_round_trip_and_json_forms() -> None:
    labels = np.array([[0, 0, 1], [1, 1, 2]], np.uint8)
    assert run_length(labels) == [0, 2, 1, 3, 2, 1]
    assert np.array_equal(decode_run_length(run_length(labels), 2, 3), labels)
    big = RNG.integers(0, 3, (40, 50), dtype=np.uint8)
    assert np.array_equal(decode_run_length(class_map_json(big, "rle")["counts"], 40, 50), big)
    assert class_map_json(labels, "list")["rows"] == [[0, 0, 1], [1, 1, 2]]
    stats = class_stats(labels, ["a", "b", "c", "d"])
    assert [s["pixels"] for s in stats] == [2, 3, 1, 0]
    assert stats[1]["fraction"] == 0.5


def test_overlay_blends_with_alpha() -> None:
    labels = np.array([[0, 1]], np.uint8)
    pixels = np.array([[100, 200]], np.uint8)
    palette = [(255, 0, 0), (0, 0, 255)]
    read = lambda data: np.asarray(Image.open(io.BytesIO(data)))  # noqa: E731
    assert read(overlay_png(pixels, labels, palette, 0.0)).tolist() == [[[100] * 3, [200] * 3]]
    assert read(overlay_png(pixels, labels, palette, 1.0)).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    assert read(overlay_png(pixels, labels, palette, 0.5))[0, 0].tolist() == [178, 50, 50]


def tiff_16bit(offset_type: int = 4, offset: bytes | None = None, side: int = 4) -> bytes:
    """A classic little-endian 16-bit grey TIFF; StripOffsets of the given type and value
    (default: a LONG pointing at the pixels, a valid file)."""
    pixels = b"\x01\x02" * side * side
    short = lambda v: struct.pack("<H", v)  # noqa: E731
    entry_count = 9
    pixels_at = 8 + 2 + 12 * entry_count + 4
    entries = [
        (256, 3, short(side)),  # ImageWidth
        (257, 3, short(side)),  # ImageLength
        (258, 3, short(16)),  # BitsPerSample
        (259, 3, short(1)),  # Compression: none
        (262, 3, short(1)),  # PhotometricInterpretation: black is zero
        (273, offset_type, struct.pack("<I", pixels_at) if offset is None else offset),
        (277, 3, short(1)),  # SamplesPerPixel
        (278, 3, short(side)),  # RowsPerStrip
        (279, 4, struct.pack("<I", len(pixels))),  # StripByteCounts
    ]
    ifd, values = b"", b""
    for tag, kind, value in entries:
        if len(value) <= 4:
            ifd += struct.pack("<HHI", tag, kind, 1) + value.ljust(4, b"\0")
        else:  # stored after the pixels, the entry points at it
            ifd += struct.pack("<HHII", tag, kind, 1, pixels_at + len(pixels) + len(values))
            values += value
    header = b"II*\0" + struct.pack("<IH", 8, entry_count)
    return header + ifd + b"\0" * 4 + pixels + values


def dds_header(fourcc: bytes) -> bytes:
    """A DDS header with a compressed pixel format (FourCC) Pillow does not implement."""
    header = struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + b"\0" * 44
    pixel_format = struct.pack("<II4s5I", 32, 0x4, fourcc, 0, 0, 0, 0, 0)
    return b"DDS " + header + pixel_format + struct.pack("<5I", 0x1000, 0, 0, 0, 0) + b"\0" * 64


def spider_header() -> bytes:
    """A SPIDER header naming image 1 of a stack that is not one (Pillow: AttributeError)."""
    fields = [0.0] * 27  # 1-based: nslice, nrow, iform, nsam, labrec, labbyt, lenbyt, imgnum
    for index, value in {1: 1, 2: 4, 5: 1, 12: 4, 13: 1, 22: 108, 23: 108, 27: 1}.items():
        fields[index - 1] = float(value)
    return struct.pack(">27f", *fields) + b"\0" * 200


HOSTILE_FILES = {
    "16-bit tiff, RATIONAL strip offsets": tiff_16bit(5, struct.pack("<II", 1, 3)),
    "16-bit tiff, SRATIONAL strip offsets": tiff_16bit(10, struct.pack("<ii", -1, 3)),
    "16-bit tiff, DOUBLE strip offsets": tiff_16bit(12, struct.pack("<d", 1e300)),
    "16-bit tiff, 2**64-1 strip offsets": tiff_16bit(16, struct.pack("<Q", 2**64 - 1)),
    "dds, unknown fourcc": dds_header(b"ZZZZ"),
    "dds, dx10 format 0": dds_header(b"DX10"),
    "spider, stack image without a stack": spider_header(),
}


@pytest.mark.parametrize("data", HOSTILE_FILES.values(), ids=HOSTILE_FILES.keys())
def test_files_that_break_pillow_plugins_are_invalid_images(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_image(data, 10**6)


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_avif_that_breaks_its_plugin_is_invalid() -> None:
    """AVIF is not accepted, so its plugin (RuntimeError on this file) never sees it."""
    avif = bytearray(encoded(Image.fromarray(RGB), "AVIF"))
    box = avif.index(b"pitm") - 4  # the primary item box: size, type, version+flags, id
    avif[box + 12 : box + 14] = b"\0\0"  # primary item 0: "Missing or empty image item"
    with pytest.raises(InvalidImage, match="not an image in a supported format"):
        decode_image(bytes(avif), 10**6)


def test_the_tiff_builder_makes_a_valid_file() -> None:
    """The hostile TIFFs above differ from a good one only in their strip offsets."""
    decoded = decode_image(tiff_16bit(), 100)
    assert decoded.format == "TIFF" and decoded.mode.startswith("I;16")
    assert decoded.pixels.shape == (4, 4) and (decoded.pixels == round(0x0201 / 257)).all()


def test_a_spooled_file_decodes_like_its_bytes() -> None:
    data = encoded(Image.fromarray(RGB), "PNG")
    with tempfile.SpooledTemporaryFile(max_size=64) as spooled:  # past 64 bytes: on disk
        spooled.write(data)
        spooled.seek(0)
        decoded = decode_image(spooled, 10**6)
        assert not spooled.closed
    assert decoded.format == "PNG" and np.array_equal(decoded.pixels, RGB)
    with tempfile.SpooledTemporaryFile() as empty, pytest.raises(InvalidImage, match="no image"):
        decode_image(empty, 10**6)


@pytest.mark.parametrize(
    ("data", "decoder"),
    [
        (png_bytes(RGB), "app.imaging.fast_decode.spng_decode"),  # libspng's path
        (encoded(Image.fromarray(RGB), "TIFF"), "PIL.ImageFile.ImageFile.load"),  # Pillow's
    ],
)
def test_memory_error_while_decoding_is_413(
    monkeypatch: pytest.MonkeyPatch, data: bytes, decoder: str
) -> None:
    def exhausted(*args: object) -> None:
        raise MemoryError

    monkeypatch.setattr(decoder, exhausted)
    with pytest.raises(PayloadTooLarge, match="memory"):
        decode_image(data, 10**6)


def test_float_nan_becomes_zero_without_an_invalid_cast() -> None:
    values = np.array([[np.nan, 300.0, -5.0, 127.6]], np.float32)
    data = encoded(Image.fromarray(values), "TIFF")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy: invalid value in cast
        decoded = decode_image(data, 100)
    assert decoded.mode == "F" and decoded.pixels.tolist() == [[0, 255, 0, 128]]
