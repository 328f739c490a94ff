"""bench/profile_stages.py measures the route's own stages: one request through them gives
the answer the service gives, and every stage is timed, raw and multipart."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.config import Settings
from bench.common import loaded_registry
from bench.profile_stages import STAGES, Clock, multipart, one_request
from tests.app.tiny_models import write_model


@pytest.mark.parametrize("transport", ["raw", "multipart"])
def test_one_request_times_every_stage_and_answers_the_class_map(
    tmp_path: Path, transport: str
) -> None:
    write_model(tmp_path, "threshold", "tiny", size_multiple=8)
    settings = Settings(model_dir=tmp_path, device="cpu")
    registry = loaded_registry(settings)
    pixels = np.zeros((13, 21), np.uint8)
    pixels[:, 10:] = 255  # threshold model: bright -> class 0, dark -> class 1
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    body, content_type = (
        (buffer.getvalue(), "image/png") if transport == "raw" else multipart(buffer.getvalue())
    )
    loop = asyncio.new_event_loop()
    clock = Clock()
    try:
        answer = one_request(registry.get("tiny"), body, content_type, settings, loop, clock)
    finally:
        loop.close()
        registry.close()
    labels = np.asarray(Image.open(io.BytesIO(answer)))
    assert labels.shape == (13, 21)
    assert (labels[:, :10] == 1).all() and (labels[:, 10:] == 0).all()
    medians = clock.medians()
    assert set(medians) == set(STAGES)
    assert all(row["wall"] >= 0 and row["thread"] >= 0 for row in medians.values())
