"""The direct decoders (app/imaging/fast_decode.py): libspng for plain PNGs, libjpeg-turbo
through simplejpeg for plain JPEGs. For the files they take, pixels identical to Pillow's
path; every other file goes to Pillow; and neither accepts a damaged file that Pillow
refuses, nor reads one differently.

Reproducible: derandomized, no example database. A few seconds on one free core.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from app.errors import ProblemError
from app.imaging.decode import decode_image
from app.imaging.fast_decode import fast_jpeg, fast_png

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::UserWarning")]
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CHANNELS = {"L": (), "RGB": (3,), "RGBA": (4,)}


def pillow_pixels(data: bytes) -> np.ndarray:
    """The pixels as Pillow alone gives them under the decoder's rules (the reference)."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)
        if image.mode == "RGBA":
            image = image.convert("RGB")
        return np.asarray(image)


def opened_fast(data: bytes) -> np.ndarray | None:
    source = io.BytesIO(data)
    with Image.open(source) as opened:
        return fast_png(opened, source)


def opened_fast_jpeg(data: bytes) -> np.ndarray | None:
    source = io.BytesIO(data)
    with Image.open(source) as opened:
        return fast_jpeg(opened, source)


def save_png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def raw_png(
    width: int, height: int, depth: int, colour_type: int, pixels: bytes, row_bytes: int
) -> bytes:
    """A PNG written by hand (for what Pillow does not write: 2-bit grey, 16-bit RGB)."""
    rows = b"".join(
        b"\0" + pixels[(r * row_bytes) % len(pixels) :][:row_bytes].ljust(row_bytes, b"\0")
        for r in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def after_ihdr(png: bytes, extra: bytes) -> bytes:
    return png[:33] + extra + png[33:]


def random_image(seed: int, mode: str, height: int, width: int, smooth: bool) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (height, width, *CHANNELS[mode])
    if smooth:  # compressible, like photographs: exercises the PNG filters
        base = np.cumsum(rng.integers(-3, 4, shape, dtype=np.int64), axis=1)
        pixels = np.clip(base + 128, 0, 255).astype(np.uint8)
    else:
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def forbid_pillow_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Image.Image) -> None:
        raise AssertionError("Pillow decoded the pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    mode=st.sampled_from(sorted(CHANNELS)),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    smooth=st.booleans(),
    level=st.integers(0, 9),
    optimize=st.booleans(),
    text=st.booleans(),
)
def test_plain_pngs_decode_by_libspng_exactly_as_pillow(
    seed: int,
    mode: str,
    height: int,
    width: int,
    smooth: bool,
    level: int,
    optimize: bool,
    text: bool,
) -> None:
    image = random_image(seed, mode, height, width, smooth)
    data = save_png(image, compress_level=level, optimize=optimize)
    if text:  # harmless ancillary chunks keep the fast path
        extra = chunk(b"tEXt", b"Software\0segserve") + chunk(b"gAMA", struct.pack(">I", 45455))
        data = after_ihdr(data, extra)
    fast = opened_fast(data)
    assert fast is not None, "a plain PNG must take libspng's path"
    reference = pillow_pixels(data)
    assert fast.dtype == np.uint8 and fast.flags.c_contiguous
    assert np.array_equal(fast, reference)
    decoded = decode_image(data, 10**6)
    assert decoded.mode == mode and np.array_equal(decoded.pixels, reference)


def test_decode_image_uses_libspng_without_pillows_pixel_loading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rgb = random_image(1, "RGB", 24, 31, smooth=True)
    data = save_png(rgb)
    expected = np.asarray(rgb)
    forbid_pillow_pixels(monkeypatch)
    assert np.array_equal(decode_image(data, 10**6).pixels, expected)
    spooled = io.BytesIO(data)  # a file object takes the same path
    assert np.array_equal(decode_image(spooled, 10**6).pixels, expected)


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def _fallback_files() -> dict[str, bytes]:
    grey = random_image(2, "L", 9, 14, smooth=False)
    rgb = random_image(3, "RGB", 9, 14, smooth=False)
    wide = Image.fromarray(np.arange(9 * 14, dtype=np.uint16).reshape(9, 14) * 300)
    apng = io.BytesIO()
    grey.save(apng, format="PNG", save_all=True, append_images=[rgb.convert("L")])
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    return {
        "16-bit grey": save_png(wide),
        "1-bit": save_png(grey.convert("1")),
        "2-bit grey": raw_png(14, 9, 2, 0, bytes(range(9 * 4)), row_bytes=4),
        "16-bit RGB": raw_png(6, 5, 16, 2, bytes(range(256)) * 2, row_bytes=36),
        "palette": save_png(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)),
        "palette with transparency": save_png(
            rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), transparency=0
        ),
        "grey + alpha": save_png(grey.convert("LA")),
        "grey with tRNS": save_png(grey, transparency=7),
        "RGB with tRNS": save_png(rgb, transparency=(1, 2, 3)),
        "eXIf orientation": save_png(rgb, exif=_exif_orientation(6)),
        "raw profile exif text": after_ihdr(
            save_png(rgb),
            chunk(b"tEXt", b"Raw profile type exif\0\nexif\n      0\n"),
        ),
        "XMP orientation": after_ihdr(
            save_png(rgb), chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp)
        ),
        "compressed text": after_ihdr(
            save_png(rgb), chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"hello"))
        ),
        "animated": apng.getvalue(),
        "no IEND": save_png(rgb)[:-12],
        "a chunk past the end": save_png(rgb)[:-12] + struct.pack(">I", 99) + b"tEXt",
        "JPEG": _jpeg(rgb),
        "TIFF": _encoded(rgb, "TIFF"),
        "BMP": _encoded(rgb, "BMP"),
    }


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


FALLBACK = _fallback_files()


@pytest.mark.parametrize("name", sorted(FALLBACK))
def test_other_files_go_to_pillow(name: str) -> None:
    data = FALLBACK[name]
    try:
        reference: np.ndarray | None = None
        reference = decode_image_by_pillow(data)
    except Exception:
        reference = None
    assert opened_fast(data) is None
    if reference is None:
        with pytest.raises(ProblemError):
            decode_image(data, 10**6)
    else:
        assert np.array_equal(decode_image(data, 10**6).pixels, reference)


def decode_image_by_pillow(data: bytes) -> np.ndarray:
    """decode_image with libspng out of the picture."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("app.imaging.decode.fast_pixels", lambda opened, source: None)
        return decode_image(data, 10**6).pixels


def test_an_orientation_in_exif_is_still_applied() -> None:
    tall = np.zeros((20, 10, 3), np.uint8)
    tall[:5] = 255
    data = save_png(Image.fromarray(tall), exif=_exif_orientation(6))
    assert decode_image(data, 10**6).pixels.shape == (10, 20, 3)


def _recrc(data: bytearray) -> bytes:
    """Every chunk's CRC made right again, so the damage reaches the pixel decoders."""
    position = 8
    while position + 12 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        end = position + 12 + length
        if end > len(data):
            break
        crc = zlib.crc32(bytes(data[position + 4 : end - 4])) & 0xFFFFFFFF
        data[end - 4 : end] = struct.pack(">I", crc)
        position = end
    return bytes(data)


SEEDS = [
    save_png(random_image(s, mode, 11, 17, smooth=s % 2 == 0), compress_level=level)
    for s, (mode, level) in enumerate(
        [("L", 6), ("RGB", 1), ("RGBA", 9), ("L", 0), ("RGB", 0), ("RGBA", 3)]
    )
]


def assert_fast_path_agrees_with_pillow(
    damaged: bytes, fast_decoder: Callable[[bytes], np.ndarray | None]
) -> None:
    """Whenever the direct decoder returns pixels, Pillow's path reads the file to the same
    pixels; and decode_image answers exactly as Pillow's path does (pixels or a 4xx)."""
    try:
        reference: np.ndarray | None = decode_image_by_pillow(damaged)
    except ProblemError:
        reference = None
    try:
        fast = fast_decoder(damaged)
    except Exception:  # Pillow refused the header: never reaches the direct decoder
        fast = None
    if fast is not None:
        assert reference is not None and np.array_equal(fast, reference)
    try:
        answer: np.ndarray | None = decode_image(damaged, 10**6).pixels
    except ProblemError:
        answer = None
    if answer is None or reference is None:
        assert answer is None and reference is None
    else:
        assert np.array_equal(answer, reference)


@PROPERTY
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    edits=st.lists(st.tuples(st.integers(8, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(8, 10**6)),
    fix_crc=st.booleans(),
)
def test_damaged_pngs_libspng_accepts_pillow_reads_the_same(
    seed: int, edits: list[tuple[int, int]], cut: int | None, fix_crc: bool
) -> None:
    """Differential: whenever libspng returns pixels for a damaged file, Pillow's path reads
    that file too and to the same pixels (so the fast path never turns a 400 into a 200
    or changes an answer); otherwise decode_image answers exactly as Pillow's path."""
    data = bytearray(SEEDS[seed])
    for offset, value in edits:
        data[offset % len(data)] = value
    if cut is not None:
        data = data[: max(cut % len(data), 8)]
    assert_fast_path_agrees_with_pillow(_recrc(data) if fix_crc else bytes(data), opened_fast)


# JPEG -----------------------------------------------------------------------------------


def save_jpeg(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    mode=st.sampled_from(["L", "RGB"]),
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    smooth=st.booleans(),
    quality=st.integers(1, 100),
    subsampling=st.sampled_from([0, 1, 2]),
    progressive=st.booleans(),
    optimize=st.booleans(),
    restart=st.sampled_from([0, 1, 3]),
)
def test_plain_jpegs_decode_by_simplejpeg_exactly_as_pillow(
    seed: int,
    mode: str,
    height: int,
    width: int,
    smooth: bool,
    quality: int,
    subsampling: int,
    progressive: bool,
    optimize: bool,
    restart: int,
) -> None:
    """Exact equality, not within 1: Pillow and simplejpeg both run libjpeg-turbo with the
    same settings, and a version pair that differed would fail here."""
    image = random_image(seed, mode, height, width, smooth)
    options: dict[str, object] = dict(quality=quality, progressive=progressive, optimize=optimize)
    if mode == "RGB":
        options["subsampling"] = subsampling
    if restart:
        options["restart_marker_blocks"] = restart
    data = save_jpeg(image, **options)
    fast = opened_fast_jpeg(data)
    assert fast is not None, "a plain JPEG must take simplejpeg's path"
    reference = pillow_pixels(data)
    assert fast.dtype == np.uint8 and fast.flags.c_contiguous
    assert np.array_equal(fast, reference)
    assert np.array_equal(decode_image(data, 10**6).pixels, reference)


def test_a_photo_sized_jpeg_decodes_without_pillows_pixel_loading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    photo = random_image(5, "RGB", 300, 420, smooth=True)
    data = save_jpeg(photo, quality=88)
    reference = pillow_pixels(data)
    forbid_pillow_pixels(monkeypatch)
    assert np.array_equal(decode_image(data, 10**6).pixels, reference)


def _jpeg_fallbacks() -> dict[str, bytes]:
    rgb = random_image(6, "RGB", 20, 12, smooth=True)
    photo = random_image(8, "RGB", 90, 120, smooth=False)
    mpo = io.BytesIO()
    rgb.save(
        mpo, format="MPO", save_all=True, append_images=[rgb.transpose(Image.Transpose.ROTATE_90)]
    )
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    return {
        "CMYK": save_jpeg(rgb.convert("CMYK")),
        "EXIF orientation 6": save_jpeg(rgb, exif=_exif_orientation(6)),
        "EXIF orientation 3": save_jpeg(rgb, exif=_exif_orientation(3)),
        "XMP orientation": save_jpeg(rgb, xmp=xmp),
        "MPO": mpo.getvalue(),
        "truncated": save_jpeg(photo)[:-300],
        "no EOI": save_jpeg(photo)[:-2],
    }


JPEG_FALLBACK = _jpeg_fallbacks()


@pytest.mark.parametrize("name", sorted(JPEG_FALLBACK))
def test_other_jpegs_go_to_pillow(name: str) -> None:
    data = JPEG_FALLBACK[name]
    try:
        reference: np.ndarray | None = decode_image_by_pillow(data)
    except ProblemError:
        reference = None
    assert opened_fast_jpeg(data) is None
    if reference is None:
        with pytest.raises(ProblemError):
            decode_image(data, 10**6)
    else:
        assert np.array_equal(decode_image(data, 10**6).pixels, reference)


def test_orientation_one_keeps_the_fast_path() -> None:
    rgb = random_image(7, "RGB", 9, 16, smooth=True)
    data = save_jpeg(rgb, exif=_exif_orientation(1))
    fast = opened_fast_jpeg(data)
    assert fast is not None and np.array_equal(fast, pillow_pixels(data))


JPEG_SEEDS = [
    save_jpeg(random_image(s, mode, 19, 23, smooth=True), quality=90, progressive=progressive)
    for s, (mode, progressive) in enumerate(
        [("L", False), ("RGB", False), ("L", True), ("RGB", True)]
    )
]


@PROPERTY
@given(
    seed=st.sampled_from(range(len(JPEG_SEEDS))),
    edits=st.lists(st.tuples(st.integers(2, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(2, 10**6)),
)
def test_damaged_jpegs_simplejpeg_accepts_pillow_reads_the_same(
    seed: int, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(JPEG_SEEDS[seed])
    for offset, value in edits:
        data[offset % len(data)] = value
    if cut is not None:
        data = data[: max(cut % len(data), 2)]
    assert_fast_path_agrees_with_pillow(bytes(data), opened_fast_jpeg)
