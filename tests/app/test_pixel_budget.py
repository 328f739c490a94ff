"""One admission budget in pixels (SEG_MAX_PENDING_PIXELS) for synchronous requests and
jobs' tile batches."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Device, Settings
from app.errors import Overloaded
from app.inference.admission import Admission
from app.inference.pipeline import Stopped
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready
from tests.app.tiny_models import write_model

PNG = {"content-type": "image/png"}


def test_requests_past_the_budget_are_refused_and_jobs_wait() -> None:
    admission = Admission(16, 10, pixel_limit=1000)
    admission.hold_pixels(800)
    with pytest.raises(Overloaded, match="SEG_MAX_PENDING_PIXELS=1000"):
        admission.hold_pixels(201)
    admission.hold_pixels(200)  # exactly at the limit
    admission.release_pixels(1000)
    admission.hold_pixels(5000)  # alone, an image larger than the budget is admitted
    entered = threading.Event()

    def background() -> None:
        with admission.pixels_for_background(10, lambda: False):
            entered.set()

    worker = threading.Thread(target=background)
    worker.start()
    time.sleep(0.3)
    assert not entered.is_set()  # waits while the budget is full
    admission.release_pixels(5000)
    worker.join(5)
    assert entered.is_set() and admission.pixels_held == 0
    admission.hold_pixels(1000)
    with pytest.raises(Stopped), admission.pixels_for_background(10, lambda: True):
        pass
    assert admission.pixels_held == 1000


def make_app(tmp_path: Path, **overrides: Any) -> Any:
    models = tmp_path / "models"
    models.mkdir()
    write_model(models, "threshold", "tiny-grey", size_multiple=8)
    settings = Settings(
        model_dir=models,
        device=Device.cpu,
        intra_op_threads=1,
        job_dir=tmp_path / "jobs",
        **overrides,
    )
    return create_app(settings)


def test_a_request_past_the_pixel_budget_gets_503_and_the_budget_is_given_back(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path, max_pending_pixels=50_000)
    with TestClient(app) as client:
        wait_ready(client)
        admission: Admission = app.state.admission
        image = png_bytes(np.zeros((100, 100), np.uint8))  # 10,000 pixels
        assert (
            client.post("/v1/models/tiny-grey/segment", content=image, headers=PNG).status_code
            == 200
        )
        assert admission.pixels_held == 0  # given back when the work ended
        admission.hold_pixels(45_000)  # as if other work held most of the budget
        refused = client.post("/v1/models/tiny-grey/segment", content=image, headers=PNG)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "SEG_MAX_PENDING_PIXELS" in refused.json()["detail"]
        tensor = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": [1, 100, 100, 1],
                    "data": [0] * 10_000,
                }
            ]
        }
        assert client.post("/v2/models/tiny-grey/infer", json=tensor).status_code == 503
        admission.release_pixels(45_000)
        assert client.post("/v2/models/tiny-grey/infer", json=tensor).status_code == 200


def test_jobs_run_on_the_shared_workers_within_the_budget(tmp_path: Path) -> None:
    app = make_app(tmp_path, whole_image_max_pixels=64 * 64)
    with TestClient(app) as client:
        wait_ready(client)
        admission: Admission = app.state.admission
        held: list[int] = []
        original = admission.pixels_for_background

        def recording(pixels: int, should_stop: Any) -> Any:
            held.append(pixels)
            return original(pixels, should_stop)

        admission.pixels_for_background = recording  # type: ignore[method-assign]
        submitted = client.post(
            "/v1/models/tiny-grey/jobs?tile_size=64&tile_overlap=8",
            content=png_bytes(np.zeros((200, 200), np.uint8)),
            headers=PNG,
        )
        location = submitted.headers["Location"]
        deadline = time.monotonic() + 20
        while client.get(location).json()["state"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        tiles = client.get(location).json()["tiles_total"]
        assert held == [64 * 64] * tiles  # one tile per batch on CPU, each held its pixels
        assert admission.pixels_held == 0
