from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from tests.app.tiny_models import write_model


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    write_model(tmp_path, "threshold", "tiny-grey", size_multiple=8)
    write_model(tmp_path, "brightest", "tiny-rgb")
    return tmp_path


def wait_ready(client: TestClient, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/health/ready').json()}")


@pytest.fixture
def client(model_dir: Path) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=model_dir, intra_op_threads=1, max_upload_bytes=2_000_000, max_pixels=4_000_000
    )
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


def png_bytes(pixels: np.ndarray, mode: str | None = None, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG", **save)
    return buffer.getvalue()
