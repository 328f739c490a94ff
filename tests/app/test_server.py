"""The real server process: `segserve serve` on a free port, spoken to over HTTP."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from tests.app.conftest import png_bytes
from tests.app.test_api import expected_grey, grey_pattern, read_png


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_server_process_serves_and_stops_on_sigterm(model_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "SEG_INTRA_OP_THREADS": "1", "SEG_DEVICE": "cpu"}
    command = [
        sys.executable,
        "-m",
        "app.cli",
        "serve",
        "--port",
        str(port),
        "--model-dir",
        str(model_dir),
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.2)
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
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    # uvicorn re-raises SIGTERM after draining, so the exit status is the signal's.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert '"route": "/v1/models/{name}/segment"' in output  # one structured line per request
