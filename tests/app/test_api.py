import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.imaging.encode import decode_run_length
from app.imaging.media_types import IMAGE_MEDIA_TYPES
from tests.app.conftest import png_bytes

PNG = {"content-type": "image/png"}
PROBLEM = "application/problem+json"


def grey_pattern(h: int, w: int) -> np.ndarray:
    """Bright left half, dark right half: class 0 left, class 1 right for `tiny-grey`."""
    pixels = np.full((h, w), 30, np.uint8)
    pixels[:, : w // 2] = 220
    return pixels


def expected_grey(pixels: np.ndarray) -> np.ndarray:
    return np.where(pixels > 127, 0, 1).astype(np.uint8)


def read_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_health_models_and_metadata(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    ready = client.get("/health/ready").json()
    assert ready["ready"] and {m["name"] for m in ready["models"]} == {"tiny-grey", "tiny-rgb"}
    assert all(m["providers"] == ["CPUExecutionProvider"] for m in ready["models"])
    listed = client.get("/v1/models").json()["models"]
    assert {m["spec"]["name"] for m in listed} == {"tiny-grey", "tiny-rgb"}
    one = client.get("/v1/models/tiny-grey").json()
    assert one["spec"]["classes"] == ["bright", "dark"] and one["spec"]["size_multiple"] == 8
    assert one["state"] == "ready" and one["providers"] == ["CPUExecutionProvider"]


@pytest.mark.parametrize(("h", "w"), [(37, 53), (1, 1), (8, 16), (2, 300)])
def test_png_output_has_full_resolution_and_exact_classes(
    client: TestClient, h: int, w: int
) -> None:
    pixels = grey_pattern(h, w)
    response = client.post("/v1/models/tiny-grey/segment", content=png_bytes(pixels), headers=PNG)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-model-name"] == "tiny-grey"
    assert response.headers["x-model-version"] == "0.0.1"
    assert float(response.headers["x-inference-time-ms"]) >= 0
    image = Image.open(io.BytesIO(response.content))
    assert image.mode == "P" and image.size == (w, h)
    assert np.array_equal(np.asarray(image), expected_grey(pixels))


def test_rgb_model_gets_converted_grey_and_rgb_inputs(client: TestClient) -> None:
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 2] = 200  # blue brightest everywhere
    rgb[0, 0] = (255, 0, 0)
    labels = read_png(
        client.post("/v1/models/tiny-rgb/segment", content=png_bytes(rgb), headers=PNG).content
    )
    assert labels[0, 0] == 0 and (labels.ravel()[1:] == 2).all()
    # A grey image sent to the RGB model is replicated to three equal channels.
    grey = client.post(
        "/v1/models/tiny-rgb/segment", content=png_bytes(grey_pattern(4, 4)), headers=PNG
    )
    assert grey.status_code == 200


def test_multipart_and_json_output(client: TestClient) -> None:
    pixels = grey_pattern(10, 12)
    response = client.post(
        "/v1/models/tiny-grey/segment?format=json",
        files={"image": ("x.png", png_bytes(pixels), "image/png")},
    )
    body = response.json()
    assert response.status_code == 200 and body["width"] == 12 and body["height"] == 10
    assert body["model"] == {"name": "tiny-grey", "version": "0.0.1"}
    assert body["class_map"]["encoding"] == "rle"
    labels = decode_run_length(body["class_map"]["counts"], 10, 12)
    assert np.array_equal(labels, expected_grey(pixels))
    assert [s["pixels"] for s in body["stats"]] == [60, 60]
    assert {"decode", "inference", "encode"} <= set(body["timings_ms"])
    listed = client.post(
        "/v1/models/tiny-grey/segment?format=json&encoding=list",
        content=png_bytes(pixels),
        headers=PNG,
    ).json()
    assert listed["class_map"]["rows"] == expected_grey(pixels).tolist()


@pytest.mark.parametrize("suffix", sorted(IMAGE_MEDIA_TYPES))
def test_every_file_type_the_client_sends_is_accepted(client: TestClient, suffix: str) -> None:
    # The client labels files by suffix from the same table the body reader accepts.
    pixels = grey_pattern(16, 16)
    buffer = io.BytesIO()
    fmt = Image.registered_extensions()[suffix]
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    response = client.post(
        "/v1/models/tiny-grey/segment",
        content=buffer.getvalue(),
        headers={"content-type": IMAGE_MEDIA_TYPES[suffix]},
    )
    assert response.status_code == 200, response.text
    assert np.array_equal(read_png(response.content), expected_grey(pixels))


def test_accept_header_chooses_the_format(client: TestClient) -> None:
    data = png_bytes(grey_pattern(4, 4))
    as_json = client.post(
        "/v1/models/tiny-grey/segment", content=data, headers={**PNG, "accept": "application/json"}
    )
    assert as_json.headers["content-type"] == "application/json"
    ranked = {**PNG, "accept": "image/png;q=0.5, application/json;q=0.9"}
    assert (
        client.post("/v1/models/tiny-grey/segment", content=data, headers=ranked).headers[
            "content-type"
        ]
        == "application/json"
    )
    browser = {**PNG, "accept": "text/html,*/*;q=0.8"}
    assert (
        client.post("/v1/models/tiny-grey/segment", content=data, headers=browser).headers[
            "content-type"
        ]
        == "image/png"
    )
    query_wins = client.post(
        "/v1/models/tiny-grey/segment?format=png",
        content=data,
        headers={**PNG, "accept": "application/json"},
    )
    assert query_wins.headers["content-type"] == "image/png"
    refused = client.post(
        "/v1/models/tiny-grey/segment", content=data, headers={**PNG, "accept": "text/html"}
    )
    assert refused.status_code == 406 and refused.headers["content-type"] == PROBLEM


def test_overlay(client: TestClient) -> None:
    pixels = grey_pattern(6, 8)
    response = client.post(
        "/v1/models/tiny-grey/segment?format=overlay&alpha=1",
        content=png_bytes(pixels),
        headers=PNG,
    )
    overlay = read_png(response.content)
    assert overlay.shape == (6, 8, 3)
    assert overlay[0, 0].tolist() == [255, 255, 0] and overlay[0, -1].tolist() == [0, 0, 255]


def problem_of(response: object, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == PROBLEM  # type: ignore[attr-defined]
    body: dict[str, object] = response.json()  # type: ignore[attr-defined]
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    assert "Traceback" not in str(body) and "/work/" not in str(body)
    return body


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"", PNG, 400),
        (b"definitely not an image", PNG, 400),
        (png_bytes(grey_pattern(40, 40))[:70], PNG, 400),
        (b"hello", {"content-type": "text/plain"}, 415),
        (b"{}", {"content-type": "application/json"}, 415),
        (b"x" * 2_000_001, PNG, 413),
    ],
    ids=["empty", "garbage", "truncated", "text", "json", "oversize"],
)
def test_bad_requests_get_problem_json(
    client: TestClient, content: bytes, headers: dict[str, str], status: int
) -> None:
    problem_of(
        client.post("/v1/models/tiny-grey/segment", content=content, headers=headers), status
    )
    assert client.get("/health/live").status_code == 200  # still serving


def test_declared_size_above_max_pixels_is_413(client: TestClient) -> None:
    from tests.app.test_imaging import png_header_only

    response = client.post(
        "/v1/models/tiny-grey/segment", content=png_header_only(3000, 3000), headers=PNG
    )
    assert "SEG_MAX_PIXELS" in str(problem_of(response, 413)["detail"])


def test_unknown_models_bad_params_and_routes(client: TestClient) -> None:
    data = png_bytes(grey_pattern(4, 4))
    problem_of(client.post("/v1/models/nope/segment", content=data, headers=PNG), 404)
    problem_of(client.post("/v1/models/..%2F..%2Fetc/segment", content=data, headers=PNG), 404)
    problem_of(client.get("/v1/models/nope"), 404)
    problem_of(
        client.post("/v1/models/tiny-grey/segment?format=gif", content=data, headers=PNG), 422
    )
    problem_of(client.post("/v1/models/tiny-grey/segment?alpha=-1", content=data, headers=PNG), 422)
    big = png_bytes(grey_pattern(300, 300))
    problem_of(
        client.post(
            "/v1/models/tiny-grey/segment?format=json&encoding=list", content=big, headers=PNG
        ),
        422,
    )
    problem_of(client.get("/no/such/route"), 404)
    problem_of(client.delete("/v1/models"), 405)
    multipart_without_image = client.post(
        "/v1/models/tiny-grey/segment", files={"other": ("a.png", data)}
    )
    assert "'image'" in str(problem_of(multipart_without_image, 400)["detail"])


def test_concurrent_requests_all_answer_correctly(client: TestClient) -> None:
    images = [grey_pattern(20 + i, 30 + 2 * i) for i in range(12)]

    def call(pixels: np.ndarray) -> bool:
        response = client.post(
            "/v1/models/tiny-grey/segment", content=png_bytes(pixels), headers=PNG
        )
        return response.status_code == 200 and np.array_equal(
            read_png(response.content), expected_grey(pixels)
        )

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(call, images))


def test_request_id_metrics_and_docs(client: TestClient) -> None:
    response = client.get("/health/live", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    generated = client.get("/health/live", headers={"x-request-id": "bad id with spaces"})
    assert len(generated.headers["x-request-id"]) == 32
    client.post("/v1/models/tiny-grey/segment", content=png_bytes(grey_pattern(4, 4)), headers=PNG)
    client.post("/v1/models/whatever/segment", content=b"", headers=PNG)
    text = client.get("/metrics").text
    segment_ok = 'model="tiny-grey",route="/v1/models/{name}/segment",status="200"} 1.0'
    assert f"segserve_requests_total{{{segment_ok}" in text
    assert 'model="unknown",route="/v1/models/{name}/segment",status="404"' in text
    assert 'segserve_inference_seconds_count{model="tiny-grey"} 1.0' in text
    assert "segserve_in_flight_requests" in text
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/models/{name}/segment"]["post"]["requestBody"]["content"]
    assert {"image/png", "multipart/form-data"} <= set(body)
    assert client.get("/docs").status_code == 200


def test_readiness_is_503_while_a_model_failed(tmp_path: object) -> None:
    from pathlib import Path

    from app.config import Settings
    from app.main import create_app
    from tests.app.conftest import wait_ready
    from tests.app.tiny_models import write_model

    directory = Path(str(tmp_path))
    write_model(directory, "threshold", "ok")
    (directory / "broken.onnx").write_bytes(b"garbage")
    with TestClient(create_app(Settings(model_dir=directory, intra_op_threads=1))) as c:
        with pytest.raises(AssertionError):
            wait_ready(c, timeout=1.0)
        report = c.get("/health/ready")
        assert report.status_code == 503
        failed = [m for m in report.json()["models"] if m["state"] == "failed"]
        assert [m["file"] for m in failed] == ["broken.onnx"] and failed[0]["reason"]
        # The Open Inference Protocol's readiness means the same thing.
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/v2/models/ok/ready").status_code == 200
        assert (
            c.post(
                "/v1/models/ok/segment", content=png_bytes(grey_pattern(4, 4)), headers=PNG
            ).status_code
            == 200
        )
