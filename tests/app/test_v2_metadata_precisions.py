"""The v2 model metadata's `parameters` (README: `precision`, `precisions`, `version` say
what serves) over the REST route, in process, for a model with two precision variants;
and the order of the v2 refusals for a model that answers class labels only: asking it
for `probabilities` is a 422 scores-unavailable before the answer-size check (a 413 would
tell the client to ask for binary_data or fewer pixels, which cannot help) and before the
stop check, with no session run."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Device, Settings
from app.errors import ScoresUnavailable
from app.main import create_app
from app.service import v2_infer
from tests.app.conftest import wait_ready
from tests.app.test_labels_only_refusals_by_name import labels_only
from tests.app.tiny_models import spec_for, write_model


@pytest.mark.parametrize(("asked", "served"), [("fp32", "fp32"), ("int8", "int8")])
def test_v2_metadata_parameters_name_the_precision_and_every_variant(
    tmp_path: Path, asked: str, served: str
) -> None:
    write_model(tmp_path, "threshold", "tiny")  # fp32
    write_model(
        tmp_path, "box", "tiny", spec=spec_for("box", "tiny", precision="int8"),
        file="tiny.int8.onnx",
    )  # fmt: skip
    settings = Settings(model_dir=tmp_path, intra_op_threads=1, device=Device.cpu, precision=asked)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        parameters = client.get("/v2/models/tiny").json()["parameters"]
        listed = client.get("/v1/models/tiny").json()
    assert parameters == {
        "classes": ["bright", "dark"],
        "providers": ["CPUExecutionProvider"],
        "version": "0.0.1",
        "precision": served,
        "precisions": ["fp32", "int8"],
    }
    assert listed["precisions"] == ["fp32", "int8"]  # /v1 and /v2 agree


# 20 x 20 pixels: binary labels take 400 bytes (under the 1024-byte limit), binary
# probabilities 20 * 20 * 2 classes * 4 bytes = 3200 (over it).
SETTINGS = Settings(model_dir=Path("/nonexistent"), max_answer_bytes=1024)
IMAGES = [np.zeros((20, 20), np.uint8)]


def test_labels_alone_are_served_within_the_answer_limit() -> None:
    entry, runs = labels_only()
    result = v2_infer.infer_images(entry, IMAGES, [("labels", True)], SETTINGS, threading.Event())
    assert list(result.arrays) == ["labels"] and result.arrays["labels"].shape == (1, 20, 20)
    assert runs == ["labels"]


@pytest.mark.parametrize("stopped", [False, True])
def test_probabilities_of_a_labels_only_model_are_refused_first(stopped: bool) -> None:
    entry, runs = labels_only()
    stop = threading.Event()
    if stopped:
        stop.set()
    wanted = [("labels", True), ("probabilities", True)]
    with pytest.raises(ScoresUnavailable) as refused:  # not AnswerTooLarge, not Stopped
        v2_infer.infer_images(entry, IMAGES, wanted, SETTINGS, stop)
    assert refused.value.status == 422
    assert "so probabilities cannot be computed" in refused.value.detail
    assert runs == []
