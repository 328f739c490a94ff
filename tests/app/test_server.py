"""The real server process: `segserve serve` on a free port, spoken to over HTTP."""

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.app.conftest import png_bytes, running_server, server_output
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
        process.wait(timeout=30)
        output = server_output(process)
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


def test_sigterm_turns_readiness_503_first_and_finishes_accepted_requests(
    model_dir: Path,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    rng = np.random.default_rng(1)
    slow_image = png_bytes(rng.integers(0, 256, (1500, 1500, 3), np.uint8))
    with running_server(model_dir, SEG_DRAIN_DELAY_S="2") as (base, process):

        def segment(body: bytes, query: str = "") -> int:
            url = f"{base}/v1/models/tiny-rgb/segment{query}"
            headers = {"content-type": "image/png"}
            return httpx.post(url, content=body, headers=headers, timeout=60).status_code

        with ThreadPoolExecutor(2) as pool:
            in_flight = pool.submit(segment, slow_image, "?tta=true&tiling=on&tile_size=256")
            time.sleep(0.3)  # accepted and running
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            ready = httpx.get(f"{base}/health/ready", timeout=5)
            assert ready.status_code == 503
            assert "shutting down" in ready.json()["problem"]
            assert httpx.get(f"{base}/health/live", timeout=5).status_code == 200
            # Still accepted during the drain delay, and answered.
            assert segment(png_bytes(grey_pattern(20, 20).repeat(3).reshape(20, 20, 3))) == 200
            assert in_flight.result(timeout=60) == 200
        process.wait(timeout=60)
        output = server_output(process)
    assert process.returncode in (0, -signal.SIGTERM), output


@pytest.mark.timeout(60, method="signal")  # without the limit it would hang
def test_body_limit_is_enforced_while_reading_a_chunked_upload(model_dir: Path) -> None:
    """No Content-Length: the server must answer 413 once the limit passes, long before the
    client has sent everything (it never buffers the whole body)."""
    import socket

    with running_server(model_dir, SEG_MAX_UPLOAD_BYTES="100000") as (base, _):
        host, port = base.removeprefix("http://").split(":")
        chunk = b"\0" * 65536
        sent, answer = 0, b""
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(
                b"POST /v1/models/tiny-grey/segment HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            conn.setblocking(False)
            try:
                while sent < 50 * 1024 * 1024 and not answer:
                    conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                    time.sleep(0.005)
                    with contextlib.suppress(BlockingIOError):
                        answer = conn.recv(65536)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server stopped reading: also fine
            conn.setblocking(True)
            answer = answer or conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/problem+json" in answer
    assert sent < 5 * 1024 * 1024, sent  # answered early, not after the whole upload
