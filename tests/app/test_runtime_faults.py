"""An error inside onnxruntime during one request: a 500 problem+json for that request only,
counted in the metrics, and the service keeps serving."""

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready
from tests.app.test_api import grey_pattern

POISON_HEIGHT = 13  # images of this height make the session fail


class FailingSession:
    """A real session that raises like onnxruntime does for one kind of input."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session

    def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> Any:
        if next(iter(feeds.values())).shape[2] == POISON_HEIGHT:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : /onnxruntime/x.cc")
        return self.session.run(outputs, feeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def failing_factory(path: str, options: ort.SessionOptions, providers: list[str]) -> Any:
    return FailingSession(ort.InferenceSession(path, options, providers=providers))


def test_runtime_error_is_a_500_for_that_request_only(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, intra_op_threads=1, device="cpu")
    app = create_app(settings, session_factory=failing_factory)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        headers = {"content-type": "image/png"}
        bad = client.post(
            "/v1/models/tiny-rgb/segment",
            content=png_bytes(grey_pattern(POISON_HEIGHT, 20)),
            headers=headers,
        )
        assert bad.status_code == 500
        assert bad.headers["content-type"] == "application/problem+json"
        assert "ONNXRuntime" not in bad.text and "/onnxruntime/" not in bad.text  # no internals
        assert bad.json()["request_id"]
        good = client.post(
            "/v1/models/tiny-rgb/segment", content=png_bytes(grey_pattern(14, 20)), headers=headers
        )
        assert good.status_code == 200
        metrics = client.get("/metrics").text
        assert 'route="/v1/models/{name}/segment",status="500"' in metrics
        assert client.get("/health/ready").status_code == 200
