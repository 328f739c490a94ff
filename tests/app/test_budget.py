"""One memory budget on every path (issue 20): padded pixels, one-pass size, answer size,
/v2 tiled like /v1, uploads spooled, admission before the body."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Device, Settings
from app.imaging.encode import overlay_png, rle_json_text, rle_text_bytes, run_length
from app.inference.pipeline import Stopped, preprocess, run_probabilities
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready
from tests.app.test_api import expected_grey
from tests.app.tiny_models import spec_for, write_model

PNG = {"content-type": "image/png"}


def make_client(directory: Path, **overrides: Any) -> TestClient:
    write_model(directory, "threshold", "tiny-grey", size_multiple=8)
    write_model(directory, "brightest", "tiny-rgb")
    settings = Settings(model_dir=directory, device=Device.cpu, intra_op_threads=1, **overrides)
    return TestClient(create_app(settings))


LIMITS: dict[str, Any] = {
    "whole_image_max_pixels": 64 * 64, "max_pixels": 500_000, "max_answer_bytes": 2_000_000,
    "v2_max_batch": 4, "v2_max_json_bytes": 64 * 1024, "spool_bytes": 1024,
}  # fmt: skip


@pytest.fixture
def budget_client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, **LIMITS) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def answer_client(tmp_path: Path) -> Iterator[TestClient]:
    """The same limits with a small answer budget: 60,000 bytes."""
    with make_client(tmp_path, **{**LIMITS, "max_answer_bytes": 60_000}) as client:
        wait_ready(client)
        yield client


def record_runs(client: TestClient, name: str) -> list[tuple[int, ...]]:
    """Every session input shape the model is run on from now on."""
    entry = client.app.state.registry.get(name)  # type: ignore[attr-defined]
    runner, shapes = entry.runner, []

    def recording(output: str, x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape)
        return runner(output, x)  # type: ignore[no-any-return]

    entry.runner = recording
    return shapes


def test_thin_strip_is_tiled_by_its_padded_size(budget_client: TestClient) -> None:
    # 1 x 60,000 is 60,000 pixels as given but 8 x 60,000 = 480,000 padded: above the
    # one-pass limit of 64 x 64, so it goes through tiles of at most a 512 x 512 tile's area
    # (8 x 32,768), not through one 8 x 60,000 pass.
    pixels = (np.arange(60_000) % 256).astype(np.uint8)[None, :]
    shapes = record_runs(budget_client, "tiny-grey")
    response = budget_client.post("/v1/models/tiny-grey/segment", content=png_bytes(pixels),
                                  headers=PNG)  # fmt: skip
    assert response.status_code == 200
    assert int(response.headers["X-Tiles"]) == 2
    assert shapes and all(shape[2] * shape[3] <= 512 * 512 for shape in shapes)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.content))),
                          expected_grey(pixels))  # fmt: skip


def test_padded_size_counts_against_max_pixels(budget_client: TestClient) -> None:
    # 1 x 70,000 = 70,000 pixels as given, 8 x 70,000 = 560,000 padded > 500,000.
    pixels = np.zeros((1, 70_000), np.uint8)
    response = budget_client.post("/v1/models/tiny-grey/segment", content=png_bytes(pixels),
                                  headers=PNG)  # fmt: skip
    assert response.status_code == 413
    assert "padded" in response.json()["detail"]
    # The same strip to a model without padding (size multiple 1) fits.
    rgb = np.zeros((1, 70_000, 3), np.uint8)
    assert budget_client.post("/v1/models/tiny-rgb/segment", content=png_bytes(rgb),
                              headers=PNG).status_code == 200  # fmt: skip


def test_answers_above_the_budget_are_refused(answer_client: TestClient) -> None:
    budget_client = answer_client
    noise = np.random.default_rng(1).integers(0, 256, (200, 200), dtype=np.uint8)
    data = png_bytes(noise)
    # 200 x 200 x 3 = 120,000 bytes of overlay > 60,000: refused before inference.
    overlay = budget_client.post("/v1/models/tiny-grey/segment?format=overlay", content=data,
                                 headers=PNG)  # fmt: skip
    assert overlay.status_code == 413
    assert overlay.json()["type"].endswith("/answer-too-large")
    # The palette PNG of the same image fits.
    assert budget_client.post("/v1/models/tiny-grey/segment", content=data,
                              headers=PNG).status_code == 200  # fmt: skip
    # Run-length JSON of a map that changes at every other pixel: ~80 KB of text.
    rle = budget_client.post("/v1/models/tiny-grey/segment?format=json", content=data,
                             headers=PNG)  # fmt: skip
    assert rle.status_code == 413
    # A smooth map's runs are short text and fit.
    smooth = np.tile(np.arange(150, dtype=np.uint8), (150, 1))
    ok = budget_client.post("/v1/models/tiny-grey/segment?format=json",
                            content=png_bytes(smooth), headers=PNG)  # fmt: skip
    assert ok.status_code == 200
    assert json.loads(ok.content)["class_map"]["counts"] == run_length(expected_grey(smooth))


def test_v2_images_are_tiled_like_v1(budget_client: TestClient) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (600, 700), dtype=np.uint8)
    shapes = record_runs(budget_client, "tiny-grey")
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": [1, 600, 700, 1],
                    "parameters": {"binary_data_size": pixels.size},
                }
            ],
            "outputs": [{"name": "labels", "parameters": {"binary_data": True}}],
        }
    )
    response = budget_client.post(
        "/v2/models/tiny-grey/infer", content=head.encode() + pixels.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head))},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    start = int(response.headers["Inference-Header-Content-Length"])
    labels = np.frombuffer(response.content[start:], np.uint8).reshape(600, 700)
    assert np.array_equal(labels, expected_grey(pixels))
    # Tiles of at most 512 x 512 (the default), not one 600 x 704 pass.
    assert len(shapes) > 1 and all(s[2] <= 512 and s[3] <= 512 for s in shapes)


def test_v2_batch_and_answer_limits(answer_client: TestClient) -> None:
    budget_client = answer_client

    def infer(shape: list[int], outputs: list[dict[str, Any]] | None = None) -> Any:
        count = int(np.prod(shape))
        tensor = {"name": "image", "datatype": "UINT8", "shape": shape,
                  "parameters": {"binary_data_size": count}}  # fmt: skip
        head: dict[str, Any] = {"inputs": [tensor]}
        if outputs is not None:
            head["outputs"] = outputs
        text = json.dumps(head).encode()
        return budget_client.post(
            "/v2/models/tiny-grey/infer", content=text + bytes(count),
            headers={"Inference-Header-Content-Length": str(len(text))},
        )  # fmt: skip

    assert infer([4, 8, 8, 1]).status_code == 200
    too_many = infer([5, 8, 8, 1])  # SEG_V2_MAX_BATCH=4
    assert too_many.status_code == 413 and "SEG_V2_MAX_BATCH" in too_many.json()["error"]
    assert infer([4, 360, 360, 1]).status_code == 413  # 518,400 pixels in all > 500,000
    # Probabilities as JSON text: 100 x 100 x 2 classes x ~16 bytes > 60,000.
    probs = [{"name": "probabilities", "parameters": {"binary_data": False}}]
    refused = infer([1, 100, 100, 1], probs)
    assert refused.status_code == 413 and "SEG_MAX_ANSWER_BYTES" in refused.json()["error"]
    # As binary: 100 x 100 x 2 x 4 = 80,000 bytes > 60,000 too; 80 x 80 fits.
    binary = [{"name": "probabilities", "parameters": {"binary_data": True}}]
    assert infer([1, 100, 100, 1], binary).status_code == 413
    assert infer([1, 80, 80, 1], binary).status_code == 200


def test_v2_json_part_is_bounded(budget_client: TestClient) -> None:
    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 100, 100, 1],
                        "data": [200] * 10_000}], "pad": "x" * 70_000}  # fmt: skip
    response = budget_client.post("/v2/models/tiny-grey/infer", json=body)
    assert response.status_code == 413
    assert "SEG_V2_MAX_JSON_BYTES" in response.json()["error"]


def test_full_queue_refuses_before_reading_the_body(budget_client: TestClient) -> None:
    admission = budget_client.app.state.admission  # type: ignore[attr-defined]
    admission.pending = admission.limit
    try:
        # The body is far above SEG_MAX_UPLOAD_BYTES: read first, it would be a 413.
        response = budget_client.post(
            "/v1/models/tiny-grey/segment", content=b"x" * 100,
            headers={**PNG, "content-length": str(10**9)},
        )  # fmt: skip
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    finally:
        admission.pending = 0


@pytest.mark.parametrize("multipart", [False, True])
def test_uploads_past_the_spool_threshold_decode_from_disk(
    budget_client: TestClient, multipart: bool
) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (120, 130), dtype=np.uint8)
    data = png_bytes(pixels)  # ~16 KB, above SEG_SPOOL_BYTES=1024
    if multipart:
        response = budget_client.post("/v1/models/tiny-grey/segment",
                                      files={"image": ("x.png", data, "image/png")})  # fmt: skip
    else:
        response = budget_client.post("/v1/models/tiny-grey/segment", content=data, headers=PNG)
    assert response.status_code == 200
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(response.content))), expected_grey(pixels)
    )


def test_run_length_text_matches_the_list_and_its_size() -> None:
    rng = np.random.default_rng(4)
    for labels in (rng.integers(0, 3, (37, 41)), np.zeros((1, 1)), rng.integers(0, 12, (9, 2000))):
        labels = labels.astype(np.uint8)
        text = rle_json_text(labels, chunk=64)
        assert json.loads(b"[" + text + b"]") == run_length(labels)
        assert rle_text_bytes(labels) == len(text)
    long_run = np.zeros((1000, 1000), np.uint8)  # one run of 1,000,000: 7 digits
    assert rle_json_text(long_run) == b"0,1000000" and rle_text_bytes(long_run) == 9


def test_overlay_in_bands_equals_the_whole_image_blend() -> None:
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (70, 33, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (70, 33), dtype=np.uint8)
    palette = [(255, 0, 0), (0, 255, 0), (10, 20, 30)]
    colours = np.asarray(palette, np.float32)[labels]
    blended = 0.7 * pixels.astype(np.float32) + 0.3 * colours
    expected = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    for rows in (1, 8, 1000):
        png = overlay_png(pixels, labels, palette, 0.3, rows_per_chunk=rows)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)


def test_tta_stops_between_views(budget_client: TestClient) -> None:
    entry = budget_client.app.state.registry.get("tiny-grey")  # type: ignore[attr-defined]
    x = preprocess(np.zeros((16, 16), np.uint8), spec_for("threshold", "t", 8))
    asked = []

    def stop_after_three() -> bool:
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(Stopped, match="3 of 8"):
        run_probabilities(entry, x, tta=True, should_stop=stop_after_three)


def test_v2_work_stops_between_images_once_abandoned(budget_client: TestClient) -> None:
    from app.api.routes.v2 import _infer  # the route's worker function, run directly
    from app.inference.v2_codec import parse_request

    settings = budget_client.app.state.settings  # type: ignore[attr-defined]
    entry = budget_client.app.state.registry.get("tiny-grey")  # type: ignore[attr-defined]
    body = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [3, 8, 8, 1],
                                   "data": [0] * 192}]}).encode()  # fmt: skip
    request, tensors = parse_request(body, None)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped, match="0 of 3"):
        _infer(entry, request, tensors, settings, stop)


def test_an_unknown_output_name_is_not_echoed_whole(budget_client: TestClient) -> None:
    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 1],
                        "data": [0] * 64}], "outputs": [{"name": "x" * 60_000}]}  # fmt: skip
    response = budget_client.post("/v2/models/tiny-grey/infer", json=body)
    assert response.status_code == 400
    assert len(response.content) < 500 and "unknown output" in response.json()["error"]


def test_an_answer_too_large_is_refused_from_the_header_before_decoding(
    answer_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import ImageFile

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded although the header already ruled the answer out")

    # Pillow decodes an image's pixels in ImageFile.load: the header alone must decide.
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    smooth = png_bytes(np.zeros((300, 300), np.uint8))  # an overlay of 270,000 > 60,000 bytes
    response = answer_client.post("/v1/models/tiny-grey/segment?format=overlay",
                                  content=smooth, headers=PNG)  # fmt: skip
    assert response.status_code == 413
    assert response.json()["type"].endswith("/answer-too-large")
