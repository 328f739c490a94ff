"""HTTP rules at their exact edges: Accept with q=0, /v2 versions, the pixel limit at
exactly SEG_MAX_PIXELS, and the upload limit while a body without Content-Length streams."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready
from tests.app.tiny_models import write_model

PNG = {"content-type": "image/png"}
MAX_PIXELS = 40 * 50
UPLOAD_LIMIT = 300_000


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    directory: Path = tmp_path_factory.mktemp("strict")
    write_model(directory, "threshold", "tiny-grey")
    write_model(directory, "threshold", "tiny-grey8", size_multiple=8)
    settings = Settings(
        model_dir=directory,
        intra_op_threads=1,
        max_pixels=MAX_PIXELS,
        max_upload_bytes=UPLOAD_LIMIT,
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def segment(client: TestClient, data: bytes, **headers: str) -> tuple[int, str]:
    response = client.post("/v1/models/tiny-grey/segment", content=data, headers={**PNG, **headers})
    return response.status_code, response.headers["content-type"]


@pytest.mark.parametrize(
    ("accept", "status", "media"),
    [
        ("image/png;q=0", 406, "application/problem+json"),
        ("application/json;q=0", 406, "application/problem+json"),
        ("*/*;q=0", 406, "application/problem+json"),
        ("image/png;q=0, application/json;q=0.1", 200, "application/json"),
        ("application/json;q=0, */*;q=0.2", 200, "image/png"),
        ("application/json;q=0.0, image/*;q=0.001", 200, "image/png"),
    ],
)
def test_accept_q_zero_excludes_a_type(
    strict: TestClient, accept: str, status: int, media: str
) -> None:
    assert segment(strict, png_bytes(np.zeros((4, 4), np.uint8)), accept=accept) == (status, media)


def infer_body() -> bytes:
    tensor = {"name": "image", "datatype": "UINT8", "shape": [1, 2, 2, 1], "data": [0, 9, 200, 255]}
    return json.dumps({"inputs": [tensor]}).encode()


def test_v2_routes_with_a_version_answer_only_for_the_served_version(strict: TestClient) -> None:
    base = "/v2/models/tiny-grey/versions"
    assert strict.get(f"{base}/0.0.1").status_code == 200
    assert strict.get(f"{base}/0.0.1/ready").status_code == 200
    served = strict.post(f"{base}/0.0.1/infer", content=infer_body())
    assert served.status_code == 200
    assert served.json()["model_version"] == "0.0.1"
    assert served.json()["outputs"][0]["data"] == [1, 1, 0, 0]
    assert served.json()["outputs"][0]["datatype"] == "UINT8"
    for wrong in ("0.0.2", "1", "0.0.1x"):
        for response in (
            strict.get(f"{base}/{wrong}"),
            strict.get(f"{base}/{wrong}/ready"),
            strict.post(f"{base}/{wrong}/infer", content=infer_body()),
        ):
            assert response.status_code == 404, (wrong, response.request.url)
            assert wrong in response.json()["error"]


@pytest.mark.parametrize(("height", "width"), [(40, 50), (1, MAX_PIXELS), (MAX_PIXELS, 1)])
def test_an_image_of_exactly_max_pixels_is_served(
    strict: TestClient, height: int, width: int
) -> None:
    grey = np.zeros((height, width), np.uint8)
    assert segment(strict, png_bytes(grey))[0] == 200
    tensor = {"name": "image", "datatype": "UINT8", "shape": [1, height, width, 1]}
    tensor["data"] = [0] * (height * width)
    v2 = strict.post("/v2/models/tiny-grey/infer", content=json.dumps({"inputs": [tensor]}))
    assert v2.status_code == 200, v2.text


@pytest.mark.parametrize(("height", "width"), [(23, 87), (1, MAX_PIXELS + 1)])
def test_one_pixel_more_is_413(strict: TestClient, height: int, width: int) -> None:
    assert height * width == MAX_PIXELS + 1
    grey = np.zeros((height, width), np.uint8)
    assert segment(strict, png_bytes(grey)) == (413, "application/problem+json")
    tensor = {"name": "image", "datatype": "UINT8", "shape": [1, height, width, 1]}
    tensor["data"] = [0] * (height * width)
    v2 = strict.post("/v2/models/tiny-grey/infer", content=json.dumps({"inputs": [tensor]}))
    assert v2.status_code == 413 and "SEG_MAX_PIXELS" in v2.json()["error"]


def chunks(total: int, size: int = 16_384) -> Iterator[bytes]:
    """A body without Content-Length (httpx sends a generator chunked)."""
    for start in range(0, total, size):
        yield b"\0" * min(size, total - start)


@pytest.mark.timeout(60, method="signal")  # a streamed body that never ends must not hang
@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/models/tiny-grey/segment", "image/png"),
        ("/v1/models/tiny-grey/segment", "multipart/form-data; boundary=x"),
        ("/v2/models/tiny-grey/infer", "application/json"),
    ],
)
def test_the_upload_limit_holds_for_a_streamed_body(
    strict: TestClient, path: str, content_type: str
) -> None:
    over = strict.post(
        path, content=chunks(UPLOAD_LIMIT + 1), headers={"content-type": content_type}
    )
    assert over.status_code == 413, over.text
    assert str(UPLOAD_LIMIT) in over.text
    # At the limit the body is read (and then refused as no image, not as too large).
    at = strict.post(path, content=chunks(UPLOAD_LIMIT), headers={"content-type": content_type})
    assert at.status_code == 400, at.text


def test_a_truncated_image_is_a_400_carrying_the_decoders_reason(strict: TestClient) -> None:
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8))
    response = strict.post(
        "/v1/models/tiny-grey/segment", content=data[: len(data) // 2], headers=PNG
    )
    assert response.status_code == 400
    assert response.json()["detail"] == (
        "the image data is truncated or corrupt: image file is truncated"
    )


def test_the_padded_size_counts_against_max_pixels(strict: TestClient) -> None:
    grey = np.zeros((40, 49), np.uint8)  # 1960 pixels, 40 x 56 = 2240 padded to 8
    assert segment(strict, png_bytes(grey))[0] == 200
    response = strict.post("/v1/models/tiny-grey8/segment", content=png_bytes(grey), headers=PNG)
    assert response.status_code == 413
    assert response.json()["detail"] == (
        "the image is 49x40 pixels, 56x40 padded to the model's size multiple 8; "
        "the limit is 2000 pixels (SEG_MAX_PIXELS)"
    )
    fits = strict.post(
        "/v1/models/tiny-grey8/segment", content=png_bytes(grey[:, :48]), headers=PNG
    )
    assert fits.status_code == 200


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    directory: Path = tmp_path_factory.mktemp("budgeted")
    write_model(directory, "threshold", "tiny-grey")
    settings = Settings(model_dir=directory, intra_op_threads=1, max_answer_bytes=1200)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


@pytest.mark.parametrize(
    ("query", "fits", "too_big", "detail"),
    [
        ("format=png", (30, 40), (1, 1201), "a PNG of 1201x1 would be about 1201 bytes; the "
         "limit is 1200 (SEG_MAX_ANSWER_BYTES)"),
        ("format=confidence", (30, 40), (1, 1201), "(SEG_MAX_ANSWER_BYTES)"),
        ("format=overlay", (20, 20), (1, 401), "an overlay of 401x1 would be about 1203 bytes; "
         "the limit is 1200 (SEG_MAX_ANSWER_BYTES); use format=png"),
    ],
)  # fmt: skip
def test_the_answer_budget_is_exact(
    budgeted: TestClient,
    query: str,
    fits: tuple[int, int],
    too_big: tuple[int, int],
    detail: str,
) -> None:
    url = f"/v1/models/tiny-grey/segment?{query}"
    ok = budgeted.post(url, content=png_bytes(np.zeros(fits, np.uint8)), headers=PNG)
    assert ok.status_code == 200, ok.text
    refused = budgeted.post(url, content=png_bytes(np.zeros(too_big, np.uint8)), headers=PNG)
    assert refused.status_code == 413
    assert refused.json()["detail"].endswith(detail)


def test_list_encoding_up_to_its_pixel_cap(budgeted: TestClient) -> None:
    url = "/v1/models/tiny-grey/segment?format=json&encoding=list"
    ok = budgeted.post(url, content=png_bytes(np.zeros((256, 256), np.uint8)), headers=PNG)
    assert ok.status_code == 200 and len(ok.json()["class_map"]["rows"]) == 256
    over = budgeted.post(url, content=png_bytes(np.zeros((1, 65537), np.uint8)), headers=PNG)
    assert over.status_code == 422
    assert "encoding=list is limited to 65536 pixels" in over.json()["detail"]
