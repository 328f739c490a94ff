"""Client behaviour against a scripted service: retries, deadline, errors, bodies, answers."""

import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from segserve import (
    BadRequest,
    InputError,
    NotFound,
    TransportError,
    Unauthorized,
    Unavailable,
    UnexpectedAnswer,
)
from tests.client.mock_service import Script, palette_png, problem

LABELS = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)


def ok_png() -> httpx.Response:
    return httpx.Response(200, content=palette_png(LABELS), headers={"content-type": "image/png"})


def test_503_waits_for_retry_after_then_succeeds_with_one_request_id() -> None:
    script = Script(problem(503, "Service Unavailable", "overloaded", **{"retry-after": "1"}),
                    ok_png())  # fmt: skip
    started = time.monotonic()
    with script.client() as client:
        labels = client.segment(b"image", "m")
    assert 1.0 <= time.monotonic() - started < 3.0  # waited the Retry-After, not the backoff
    assert np.array_equal(labels, LABELS)
    assert len(script.requests) == 2
    ids = {r.headers["x-request-id"] for r in script.requests}
    assert len(ids) == 1  # one call, one id in the server's logs


def test_deadline_gives_up_at_once_when_retry_after_reaches_past_it() -> None:
    script = Script(problem(503, "Service Unavailable", "models loading", **{"retry-after": "30"}))
    started = time.monotonic()
    with script.client(deadline_s=2) as client, pytest.raises(Unavailable) as caught:
        client.segment(b"image", "m")
    assert time.monotonic() - started < 1.0  # no 30 s sleep that the deadline would cut
    assert len(script.requests) == 1
    error = caught.value
    assert (error.status, error.title) == (503, "Service Unavailable")
    assert error.detail == "models loading"
    assert error.request_id == "rid-from-problem" and error.retry_after == 30


def test_deadline_bounds_the_whole_call_across_retries() -> None:
    script = Script(problem(503, "Service Unavailable", "busy", **{"retry-after": "1"}))
    started = time.monotonic()
    with script.client(retries=100, deadline_s=2.5) as client, pytest.raises(Unavailable):
        client.segment(b"image", "m")
    assert time.monotonic() - started < 2.5
    assert 2 <= len(script.requests) <= 3


def test_retries_are_counted() -> None:
    script = Script(httpx.Response(502, content=b"bad gateway"))
    with script.client(retries=2) as client, pytest.raises(Exception) as caught:
        client.segment(b"image", "m")
    assert len(script.requests) == 3
    assert getattr(caught.value, "status", None) == 502
    assert "bad gateway" in str(caught.value)  # a body that is not problem+json still shows


def test_client_errors_are_typed_and_not_retried() -> None:
    cases = [(400, "Bad Request", BadRequest), (401, "Unauthorized", Unauthorized),
             (404, "Not Found", NotFound)]  # fmt: skip
    for status, title, kind in cases:
        script = Script(problem(status, title, "why"), ok_png())
        with script.client() as client, pytest.raises(kind) as caught:
            client.segment(b"image", "m")
        assert len(script.requests) == 1
        assert caught.value.status == status and caught.value.detail == "why"
        assert caught.value.problem["type"] == "https://segserve.dev/problems/x"


def test_refused_connections_are_retried_then_reported() -> None:
    refused = httpx.ConnectError("connection refused")
    script = Script(refused, refused, ok_png())
    with script.client() as client:
        assert np.array_equal(client.segment(b"image", "m"), LABELS)
    assert len(script.requests) == 3
    with Script(refused).client(retries=1) as client, pytest.raises(TransportError) as caught:
        client.models()
    assert "connection refused" in str(caught.value)


def test_a_read_timeout_is_not_retried() -> None:
    script = Script(httpx.ReadTimeout("slow"), ok_png())
    with script.client() as client, pytest.raises(TransportError):
        client.segment(b"image", "m")
    assert len(script.requests) == 1


def test_request_carries_key_model_format_and_query_parameters() -> None:
    script = Script(ok_png())
    with script.client(api_key="s3cret") as client:
        client.segment(b"image", "my model/x", tta=True, tiling="off", tile_size=256, alpha=None)
    request = script.requests[0]
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.url.raw_path.startswith(b"/v1/models/my%20model%2Fx/segment?")
    assert dict(request.url.params) == {"format": "png", "tta": "true", "tiling": "off",
                                        "tile_size": "256"}  # fmt: skip
    assert request.headers["content-type"] == "application/octet-stream"
    assert request.content == b"image"


def test_inputs_path_bytes_and_arrays(tmp_path: Path) -> None:
    script = Script(ok_png())
    image = tmp_path / "slice.TIF"
    image.write_bytes(b"tiff bytes")
    grey16 = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    rgb = np.random.default_rng(0).integers(0, 255, (5, 6, 3), dtype=np.uint8)
    with script.client() as client:
        client.segment(image, "m")
        client.segment(str(image), "m")
        client.segment(grey16, "m")
        client.segment(rgb, "m")
        client.segment(rgb[:, :, :1], "m")  # (H, W, 1) is grey
        client.segment(grey16.astype(">u2"), "m")  # big-endian, sent as the same values
        for bad in (np.zeros((4, 4), np.float32), np.zeros((0, 4), np.uint8), np.zeros(3)):
            with pytest.raises(InputError):
                client.segment(bad, "m")
        with pytest.raises(InputError, match="cannot read"):
            client.segment(tmp_path / "missing.png", "m")
    sent = script.requests
    assert len(sent) == 6  # the bad inputs never reach the service
    assert [r.headers["content-type"] for r in sent] == ["image/tiff"] * 2 + ["image/png"] * 4
    assert sent[0].content == b"tiff bytes"
    for request, pixels in zip(sent[2:], [grey16, rgb, rgb[:, :, 0], grey16], strict=True):
        with Image.open(io.BytesIO(request.content)) as decoded:
            assert np.array_equal(np.asarray(decoded), pixels)  # lossless, 16-bit kept


def test_answers_are_decoded_per_format() -> None:
    payload = {"annotations": [{"category_id": 1}]}
    overlay = httpx.Response(200, content=b"\x89PNG overlay", headers={"content-type": "image/png"})
    script = Script(httpx.Response(200, json=payload), httpx.Response(200, json=payload),
                    httpx.Response(200, json=payload), overlay,
                    httpx.Response(200, content=b"not json"),
                    httpx.Response(200, content=b"not a png"))  # fmt: skip
    with script.client() as client:
        assert client.segment(b"i", "m", "json") == payload
        assert client.segment(b"i", "m", "coco") == payload
        assert client.segment(b"i", "m", "geojson") == payload
        assert client.segment(b"i", "m", "overlay") == b"\x89PNG overlay"
        with pytest.raises(UnexpectedAnswer):
            client.segment(b"i", "m", "json")
        with pytest.raises(UnexpectedAnswer):
            client.segment(b"i", "m")
    assert [r.url.params["format"] for r in script.requests] == [
        "json", "coco", "geojson", "overlay", "json", "png"
    ]  # fmt: skip


def test_health_reports_not_ready_without_retrying() -> None:
    report = {"ready": False, "problem": None, "models": []}
    script = Script(httpx.Response(503, json=report, headers={"retry-after": "1"}))
    with script.client() as client:
        assert client.health() == report
    assert len(script.requests) == 1
    raw_503 = Script(httpx.Response(503, content=b"overloaded", headers={"retry-after": "1"}))
    with raw_503.client() as client, pytest.raises(Unavailable):
        client.health()


def test_models_lists_the_models() -> None:
    listing = {"models": [{"spec": {"name": "a"}}]}
    script = Script(httpx.Response(200, json=listing), httpx.Response(200, content=b"[]"))
    with script.client() as client:
        assert client.models() == listing["models"]
        with pytest.raises(UnexpectedAnswer):
            client.models()
