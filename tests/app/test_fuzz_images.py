"""Property-based fuzzing of image decoding: valid files of many modes and formats, made
with Pillow, then mutated byte by byte. The only outcomes allowed are a decoded image or a
4xx problem; never a 500, never an exception of any other kind.

Reproducible: derandomized, no example database. About 10-15 s on one free core.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from app.config import Settings
from app.errors import ProblemError
from app.imaging.decode import SUPPORTED_FORMATS, decode_image
from app.main import create_app
from tests.app.conftest import wait_ready
from tests.app.test_imaging import HOSTILE_FILES, png_header_only, tiff_16bit
from tests.app.tiny_models import write_model

pytestmark = [
    pytest.mark.timeout(300),
    # Pillow warns about the damage it skips over ("Corrupt EXIF data", ...): expected here.
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
MAX_PIXELS = 256 * 256  # mutated headers declare sizes; keep each decode small
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def seed_files() -> dict[str, bytes]:
    """Small valid files: every format the service accepts, in many modes and codecs."""
    rng = np.random.default_rng(7)
    grey = Image.fromarray(rng.integers(0, 256, (13, 21), np.uint8))
    rgb = Image.fromarray(rng.integers(0, 256, (13, 21, 3), np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (13, 21, 4), np.uint8))
    wide = Image.fromarray(rng.integers(0, 65536, (13, 21), np.uint16))
    bilevel = grey.convert("1")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    files = {
        "png-1": _save(bilevel, "PNG"),
        "png-L": _save(grey, "PNG"),
        "png-LA": _save(grey.convert("LA"), "PNG"),
        "png-P-transparent": _save(palette, "PNG", transparency=3),
        "png-RGB": _save(rgb, "PNG"),
        "png-RGBA": _save(rgba, "PNG"),
        "png-I;16": _save(wide, "PNG"),
        "png-animated": _save(grey, "PNG", save_all=True, append_images=[grey.rotate(90)]),
        "tiff-I;16": tiff_16bit(),
        "tiff-I;16-pillow": _save(wide, "TIFF"),
        "tiff-F": _save(Image.fromarray(rng.random((13, 21), np.float32) * 300), "TIFF"),
        "tiff-1-group4": _save(bilevel, "TIFF", compression="group4"),
        "tiff-L-lzw": _save(grey, "TIFF", compression="tiff_lzw"),
        "tiff-RGB-deflate": _save(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "tiff-RGB-packbits": _save(rgb, "TIFF", compression="packbits"),
        "tiff-RGB-jpeg": _save(rgb, "TIFF", compression="jpeg"),
        "tiff-CMYK": _save(rgb.convert("CMYK"), "TIFF"),
        "tiff-P": _save(palette, "TIFF"),
        "tiff-multipage": _save(grey, "TIFF", save_all=True, append_images=[rgb]),
        "gif-P": _save(palette, "GIF"),
        "gif-animated": _save(palette, "GIF", save_all=True, append_images=[grey.convert("P")]),
        "bmp-1": _save(bilevel, "BMP"),
        "bmp-L": _save(grey, "BMP"),
        "bmp-P": _save(palette, "BMP"),
        "bmp-RGB": _save(rgb, "BMP"),
        "bmp-RGBA": _save(rgba, "BMP"),
        "dib-RGB": _save(rgb, "DIB"),
        "webp-lossless": _save(rgba, "WEBP", lossless=True),
        "webp-lossy": _save(rgb, "WEBP", quality=50),
        "jpeg-L": _save(grey, "JPEG"),
        "jpeg-RGB-progressive": _save(rgb, "JPEG", progressive=True, quality=80),
        "jpeg-CMYK": _save(rgb.convert("CMYK"), "JPEG"),
        "mpo": _save(rgb, "MPO", save_all=True, append_images=[rgb.rotate(180)]),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the EXIF parser sees mutated data too
    files["jpeg-exif"] = _save(rgb, "JPEG", exif=exif)
    return files


SEEDS = seed_files()
HOSTILE_SEEDS = [*HOSTILE_FILES.values(), png_header_only(64, 64)]
# Edge values for size, offset and count fields, and small ones for type and kind fields
# (TIFF field types 1-18: a strip offset of type RATIONAL is one of the bugs found).
SPECIAL_VALUES = [
    *range(19),
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0x8000,
    0xFFFF,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**64 - 1,
]


def tiff_entries(data: bytes) -> list[int]:
    """Where the first IFD's 12-byte entries start, in a little-endian classic TIFF."""
    if not data.startswith(b"II*\0") or len(data) < 8:
        return []
    (ifd,) = struct.unpack_from("<I", data, 4)
    if ifd + 2 > len(data):
        return []
    (count,) = struct.unpack_from("<H", data, ifd)
    return [ifd + 2 + 12 * i for i in range(count) if ifd + 14 + 12 * i <= len(data)]


def png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, data length) of each whole chunk of a PNG."""
    chunks, at = [], 8
    while data.startswith(b"\x89PNG") and at + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, at)
        if at + 12 + length > len(data):
            break
        chunks.append((at, length))
        at += 12 + length
    return chunks


def edge_value(draw: st.DrawFn, size: int) -> int:
    return int(draw(st.sampled_from(SPECIAL_VALUES))) % (1 << (8 * size))


def mutate_structure(draw: st.DrawFn, data: bytearray) -> None:
    """Edits that keep a file parseable for longer: a TIFF IFD entry's type, count or
    value; a PNG chunk's contents with its CRC made right again."""
    if entries := tiff_entries(bytes(data)):
        entry = draw(st.sampled_from(entries))
        field = draw(st.sampled_from([(2, 2), (4, 4), (8, 4)]))  # type, count, value
        value = draw(st.integers(1, 18)) if field[0] == 2 else edge_value(draw, field[1])
        data[entry + field[0] : entry + field[0] + field[1]] = value.to_bytes(field[1], "little")
    elif chunks := png_chunks(bytes(data)):
        at, length = draw(st.sampled_from(chunks))
        if length:
            size = draw(st.sampled_from([1, 2, 4]))
            where = at + 8 + draw(st.integers(0, max(0, length - size)))
            data[where : where + size] = edge_value(draw, size).to_bytes(size, "big")[
                : at + 8 + length - where
            ]
        crc = zlib.crc32(bytes(data[at + 4 : at + 8 + length]))
        data[at + 8 + length : at + 12 + length] = struct.pack(">I", crc)


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A seed file with a few mutations: structure-aware edits, bit flips, fields
    overwritten with edge values, truncations, splices with another file, insertions and
    deletions."""
    data = bytearray(draw(st.sampled_from([*SEEDS.values(), *HOSTILE_SEEDS])))
    kinds = ["structure", "flip", "field", "truncate", "splice", "insert", "delete"]
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        # Headers are where parsers go wrong: bias positions to the first 128 bytes.
        limit = len(data) - 1 if draw(st.booleans()) else min(len(data) - 1, 127)
        at = draw(st.integers(0, limit))
        kind = draw(st.sampled_from(kinds))
        if kind == "structure":
            mutate_structure(draw, data)
        elif kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "field":
            size = draw(st.sampled_from([1, 2, 4, 8]))
            order = draw(st.sampled_from(["little", "big"]))
            data[at : at + size] = edge_value(draw, size).to_bytes(size, order)
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            other = draw(st.sampled_from(list(SEEDS.values())))
            data[at:] = other[draw(st.integers(0, len(other) - 1)) :]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


def check_decode(data: bytes | BinaryIO) -> None:
    try:
        decoded = decode_image(data, MAX_PIXELS)
    except ProblemError as exc:
        assert 400 <= exc.status < 500, exc
        exc.detail.encode("utf-8")  # printable in an answer
        return
    assert decoded.format in SUPPORTED_FORMATS
    assert decoded.pixels.dtype == np.uint8 and decoded.width * decoded.height <= MAX_PIXELS
    assert decoded.pixels.ndim == 2 or decoded.pixels.shape[2] == 3


@pytest.mark.parametrize("name", SEEDS)
def test_every_seed_decodes(name: str) -> None:
    decoded = decode_image(SEEDS[name], MAX_PIXELS)
    sizes = {"tiff-I;16": (4, 4), "jpeg-exif": (21, 13)}  # EXIF orientation 6 turns it
    assert decoded.pixels.shape[:2] == sizes.get(name, (13, 21))


def test_every_truncation_of_a_few_seeds() -> None:
    for name in ["png-RGB", "tiff-RGB-deflate", "gif-animated", "webp-lossless", "jpeg-exif"]:
        data = SEEDS[name]
        for end in range(0, len(data), max(1, len(data) // 97)):
            check_decode(data[:end])


@settings(FUZZ, max_examples=1500)
@given(mutated_files())
def test_mutated_files_decode_or_are_4xx(data: bytes) -> None:
    check_decode(data)


@settings(FUZZ, max_examples=150)
@given(st.sampled_from(HOSTILE_SEEDS), st.integers(0, 200), st.binary(max_size=64))
def test_hostile_headers_with_any_tail(data: bytes, cut: int, tail: bytes) -> None:
    check_decode(data[: len(data) - cut] + tail)
    check_decode(io.BytesIO(data + tail))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder: Path = tmp_path_factory.mktemp("fuzz-image-models")
    write_model(folder, "threshold", "tiny-grey", size_multiple=8)
    settings_ = Settings(model_dir=folder, intra_op_threads=1, max_pixels=MAX_PIXELS)
    with TestClient(create_app(settings_), raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


@settings(FUZZ, max_examples=300)
@given(data=mutated_files(), content_type=st.sampled_from(["image/png", "image/tiff"]))
def test_mutated_uploads_never_500(client: TestClient, data: bytes, content_type: str) -> None:
    response = client.post(
        "/v1/models/tiny-grey/segment", content=data, headers={"content-type": content_type}
    )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == response.status_code
    else:
        assert response.headers["content-type"].startswith("image/png")


def test_regression_files_over_http(client: TestClient) -> None:
    for name, data in HOSTILE_FILES.items():
        response = client.post(
            "/v1/models/tiny-grey/segment", content=data, headers={"content-type": "image/tiff"}
        )
        assert response.status_code == 400, (name, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert client.get("/health/live").status_code == 200
