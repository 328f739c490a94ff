"""A corpus of bad (and awkward but valid) inputs, each with the status it must get:
problem+json for every error, no 5xx, and the service goes on serving."""

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int, bit_depth: int = 8, colour: int = 0) -> bytes:
    """A PNG that declares a size and has no pixel data: what an image bomb looks like."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


GREY = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60), np.uint8))
VALID_PNG = encoded(GREY, "PNG")
VALID_JPEG = encoded(GREY.convert("RGB"), "JPEG")
ANIMATED_GIF = encoded(GREY.convert("P"), "GIF", save_all=True,
                       append_images=[GREY.rotate(90).convert("P")], duration=100)  # fmt: skip
SIXTEEN_BIT = encoded(Image.fromarray((np.arange(2400).reshape(40, 60) * 27).astype(np.uint16)),
                      "PNG")  # fmt: skip
CMYK_JPEG = encoded(GREY.convert("RGB").convert("CMYK"), "JPEG")
SEGMENT = "/v1/models/tiny-grey/segment"

# (id, path, body, content type, expected status)
CORPUS = [
    ("empty body", SEGMENT, b"", "image/png", 400),
    ("truncated png", SEGMENT, VALID_PNG[: len(VALID_PNG) // 2], "image/png", 400),
    ("truncated jpeg", SEGMENT, VALID_JPEG[: len(VALID_JPEG) // 2], "image/jpeg", 400),
    ("text posing as png", SEGMENT, b"hello, I am an image", "image/png", 400),
    ("wrong content type", SEGMENT, VALID_PNG, "text/plain", 415),
    ("json content type", SEGMENT, b'{"image": 1}', "application/json", 415),
    ("zero-size header", SEGMENT, png_header_only(0, 0), "image/png", 400),
    ("zero-width header", SEGMENT, png_header_only(0, 10), "image/png", 400),
    ("100000 x 100000 declared", SEGMENT, png_header_only(100_000, 100_000), "image/png", 413),
    ("signature only", SEGMENT, PNG_SIGNATURE, "image/png", 400),
    ("unknown model", "/v1/models/nope/segment", VALID_PNG, "image/png", 404),
    (
        "dot-dot model name",
        "/v1/models/..%2F..%2Fetc%2Fpasswd/segment",
        VALID_PNG,
        "image/png",
        404,
    ),
    ("invalid format", SEGMENT + "?format=bmp", VALID_PNG, "image/png", 422),
    ("alpha out of range", SEGMENT + "?format=overlay&alpha=2", VALID_PNG, "image/png", 422),
    ("tile size too small", SEGMENT + "?tiling=on&tile_size=7", VALID_PNG, "image/png", 422),
    ("tiling value", SEGMENT + "?tiling=maybe", VALID_PNG, "image/png", 422),
    ("1x1 png", SEGMENT, png_bytes(np.zeros((1, 1), np.uint8)), "image/png", 200),
    ("16-bit png", SEGMENT, SIXTEEN_BIT, "image/png", 200),
    ("cmyk jpeg", SEGMENT, CMYK_JPEG, "image/jpeg", 200),
    ("animated gif", SEGMENT, ANIMATED_GIF, "image/gif", 200),
    ("octet-stream png", SEGMENT, VALID_PNG, "application/octet-stream", 200),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from tests.app.tiny_models import write_model

    folder: Path = tmp_path_factory.mktemp("corpus-models")
    write_model(folder, "threshold", "tiny-grey", size_multiple=8)
    settings = Settings(model_dir=folder, intra_op_threads=1, max_upload_bytes=200_000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status"),
    [case[1:] for case in CORPUS],
    ids=[case[0] for case in CORPUS],
)
def test_corpus(client: TestClient, path: str, body: bytes, content_type: str, status: int) -> None:
    response = client.post(path, content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    if status >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == status and problem["detail"]
        assert "Traceback" not in response.text and "/work/" not in response.text
    else:
        assert Image.open(io.BytesIO(response.content)).size == Image.open(io.BytesIO(body)).size
    assert client.get("/health/live").status_code == 200


def test_multipart_without_the_image_field(client: TestClient) -> None:
    response = client.post(SEGMENT, files={"picture": ("a.png", VALID_PNG, "image/png")})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert "image" in response.json()["detail"]


def test_oversize_body_is_413_problem(client: TestClient) -> None:
    response = client.post(SEGMENT, content=b"\0" * 300_000, headers={"content-type": "image/png"})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
