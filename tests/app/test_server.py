"""The real server process: `segserve serve` on a free port, spoken to over HTTP."""

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from tests.app.conftest import png_bytes, running_server
from tests.app.test_api import expected_grey, grey_pattern, read_png


def test_real_server_process_serves_and_stops_on_sigterm(model_dir: Path) -> None:
    with running_server(model_dir) as (base, process):
        pixels = grey_pattern(33, 47)
        response = httpx.post(
            f"{base}/v1/models/tiny-grey/segment",
            content=png_bytes(pixels),
            headers={"content-type": "image/png"},
        )
        assert response.status_code == 200
        assert np.array_equal(read_png(response.content), expected_grey(pixels))
        assert httpx.get(f"{base}/v1/models/tiny-rgb").json()["providers"] == [
            "CPUExecutionProvider"
        ]
        port = base.rsplit(":", 1)[1]
        assert healthcheck(port).returncode == 0
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        stopped = healthcheck(port)
        assert stopped.returncode == 1 and "/health/ready" in stopped.stderr
    # uvicorn re-raises SIGTERM after draining, so the exit status is the signal's.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert '"route": "/v1/models/{name}/segment"' in output  # one structured line per request


def healthcheck(port: str) -> subprocess.CompletedProcess[str]:
    """The container's HEALTHCHECK command against a local port."""
    command = [sys.executable, "-m", "app.cli", "healthcheck", "--port", port, "--timeout", "2"]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)
