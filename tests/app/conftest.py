from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from tests.app.probes import write_probes
from tests.app.tiny_models import write_model

# anyio imports its file API (used by static files) lazily, on first use. Under pytest that
# import goes through the assertion rewriter (anyio is a pytest plugin), so ast.parse runs
# in a server thread, and CPython 3.11 fails parses that overlap in two threads
# ("SystemError: AST constructor recursion depth mismatch", seen once in CI rehearsal).
# Importing it here does it once, in the main thread.
anyio.open_file  # noqa: B018


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


@pytest.fixture(scope="module")
def probe_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app serving the probe models of tests/app/probes.py (and tiny-grey)."""
    directory = tmp_path_factory.mktemp("probes")
    write_probes(directory)
    write_model(directory, "threshold", "tiny-grey", size_multiple=8)
    settings = Settings(
        model_dir=directory, intra_op_threads=1, max_upload_bytes=2_000_000, max_pixels=4_000_000
    )
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


def png_bytes(pixels: np.ndarray, mode: str | None = None, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(model_dir: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`python -m app.cli serve` on a free port; yields (base URL, process) once ready."""
    serve = ["-m", "app.cli", "serve", "--model-dir", str(model_dir), "--port"]
    with server_process(lambda port: [*serve, str(port)], env) as started:
        yield started


@contextlib.contextmanager
def server_process(
    arguments: Callable[[int], list[str]], env: dict[str, str], kill: bool = False
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`python <arguments(port)>` on a free port (one CPU thread, unless `env` says else);
    yields (base URL, process) once /health/ready answers 200. Stopped with SIGTERM (or
    killed, with `kill`) at the end."""
    port = free_port()
    environment = {**os.environ, "SEG_INTRA_OP_THREADS": "1", "SEG_DEVICE": "cpu", **env}
    # The log goes to a file, not a pipe: a pipe nobody reads fills up after a few hundred
    # request lines and then blocks the server.
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            [sys.executable, *arguments(port)],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        process.log = log  # type: ignore[attr-defined]
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, server_output(process)
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                        break
                assert time.monotonic() < deadline, "server never became ready"
                time.sleep(0.2)
            yield base, process
        finally:
            if process.poll() is None:
                if kill:
                    process.kill()
                else:
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


def server_output(process: subprocess.Popen[str]) -> str:
    """Everything a `running_server` process has logged so far."""
    log = process.log  # type: ignore[attr-defined]
    log.flush()
    log.seek(0)
    return str(log.read())
