"""The transport under hostile clients: half-sent requests, a cap on connections, huge
headers, hang-ups mid-body, and shutdown with work queued. Real servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request

from app.connections import ConnectionGuard, GuardedH11Protocol, guarded_protocol
from app.errors import install_error_handlers
from app.observability import Metrics, RequestContextMiddleware
from tests.app.conftest import free_port, png_bytes, running_server, server_output
from tests.app.slow_server import slow_server
from tests.app.tiny_models import write_model

HALF_REQUEST = b"GET /health/live HTTP/1.1\r\nHost: x\r\n"  # no blank line: never complete


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def read_until_closed(conn: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes; raises TimeoutError if it never does."""
    conn.settimeout(max(timeout, 0.05))
    received = b""
    try:
        while chunk := conn.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc")
def test_half_sent_requests_are_closed_and_the_cap_keeps_health_answering(
    model_dir: Path,
) -> None:
    """20,000 half-sent requests used every file descriptor and /health/live stopped
    answering. Here: 300 raw connections against a cap of 40 and a 1.5 s header timeout."""
    cap, timeout = 40, 1.5
    env = {"SEG_MAX_CONNECTIONS": str(cap), "SEG_HEADER_TIMEOUT_S": str(timeout)}
    with running_server(model_dir, **env) as (base, process):
        before = open_fds(process.pid)
        conns: list[socket.socket] = []
        try:
            started = time.monotonic()
            for i in range(300):
                conn = socket.create_connection(address(base), timeout=5)
                if i % 4:  # and every fourth sends nothing at all
                    conn.sendall(HALF_REQUEST)
                conns.append(conn)
            time.sleep(0.3)
            assert open_fds(process.pid) <= before + cap + 5
            for _ in range(5):  # a probe's new connection gets in while the cap is reached
                assert httpx.get(f"{base}/health/live", timeout=2).status_code == 200
            answers = [
                read_until_closed(c, started + timeout + 3 - time.monotonic()) for c in conns
            ]
        finally:
            for conn in conns:
                conn.close()
        assert time.monotonic() - started < timeout + 3.5
        timed_out = [a for a in answers if a]
        assert timed_out and all(a.startswith(b"HTTP/1.1 408 ") for a in timed_out)
        assert httpx.get(f"{base}/health/live", timeout=2).status_code == 200


def test_a_half_sent_second_request_on_a_kept_alive_connection_times_out(
    model_dir: Path,
) -> None:
    """uvicorn's keep-alive timer stops at the next request's first byte; the header
    timeout covers the rest of that request's headers."""
    with running_server(model_dir, SEG_HEADER_TIMEOUT_S="1") as (base, _):
        conn = socket.create_connection(address(base), timeout=5)
        with conn:
            conn.sendall(HALF_REQUEST + b"\r\n")
            first = b""
            while b'"alive"' not in first:
                first += conn.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 ")
            conn.sendall(b"GET /health/live HTTP/1.1\r\nHo")
            started = time.monotonic()
            answer = read_until_closed(conn, 6)
            assert answer.startswith(b"HTTP/1.1 408 ")
            assert time.monotonic() - started < 3


def test_endless_headers_get_a_431(model_dir: Path) -> None:
    with running_server(model_dir) as (base, _), socket.create_connection(address(base)) as conn:
        conn.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for i in range(200):
                conn.sendall(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000))
        answer = read_until_closed(conn, 5)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]


@contextlib.contextmanager
def thread_server(app: FastAPI, **config: object) -> Iterator[tuple[str, int]]:
    """uvicorn serving `app` in a thread of this process (no signal handling there)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config)  # type: ignore[arg-type]
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_h11_protocol_is_guarded_too() -> None:
    """Without httptools uvicorn uses h11: the same header timeout and cap apply."""
    app = FastAPI()

    @app.get("/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    guard = ConnectionGuard(max_connections=5, header_timeout_s=0.5)
    protocol = guarded_protocol(guard, GuardedH11Protocol)
    with thread_server(app, http=protocol) as where:
        conns = [socket.create_connection(where, timeout=5) for _ in range(12)]
        for conn in conns:
            conn.sendall(HALF_REQUEST)
        time.sleep(0.1)
        assert httpx.get(f"http://{where[0]}:{where[1]}/live", timeout=2).status_code == 200
        answers = [read_until_closed(conn, 3) for conn in conns]
        for conn in conns:
            conn.close()
    assert guard.evicted >= 7 and guard.timed_out >= 1
    assert any(a.startswith(b"HTTP/1.1 408 ") for a in answers)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_client_hanging_up_mid_body_is_logged_as_499_without_a_traceback() -> None:
    """Starlette raises ClientDisconnect into a handler that reads the body; it used to be an
    unhandled 500 with a traceback in the log."""
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=Metrics(), known_models=set)
    read = threading.Event()

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        try:
            return {"bytes": len(await request.body())}
        finally:
            read.set()

    records = Records()
    loggers = [logging.getLogger(n) for n in ("segserve", "uvicorn.error", "uvicorn")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(records)
        logger.setLevel(logging.INFO)
    try:
        with thread_server(app) as where:
            with socket.create_connection(where, timeout=5) as conn:
                conn.sendall(
                    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                    b"Content-Length: 200000\r\n\r\n" + b"\0" * 50000
                )
                time.sleep(0.2)
            assert read.wait(5)
            time.sleep(0.2)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(records)
            logger.setLevel(level)
    access = [r for r in records.records if r.name == "segserve.access"]
    assert [getattr(r, "fields", {}).get("status") for r in access] == [499]
    assert not [r for r in records.records if r.exc_info], [r.getMessage() for r in records.records]


def test_sigterm_with_queued_work_exits_within_the_shutdown_timeout(tmp_path: Path) -> None:
    """SIGTERM with 8 queued requests and SEG_SHUTDOWN_TIMEOUT_S=3 exited after 13-17 s: the
    cancelled requests never set their stop event, and the executor then ran them all. Now
    the requests still waiting answer 503 just before the timeout and their work stops."""
    write_model(tmp_path, "threshold", "tiny-grey", size_multiple=8)
    image = png_bytes(np.random.default_rng(0).integers(0, 256, (512, 512), np.uint8))
    timeout_s = 3
    env = {"SEG_WORKERS": "1", "SEG_SHUTDOWN_TIMEOUT_S": str(timeout_s)}
    with slow_server(tmp_path, 0.2, **env) as (base, process):  # about 20 s a request

        def post() -> int | str:
            url = f"{base}/v1/models/tiny-grey/segment?tiling=on&tile_size=64&tile_overlap=8"
            headers = {"content-type": "image/png"}
            try:
                return httpx.post(url, content=image, headers=headers, timeout=60).status_code
            except httpx.HTTPError as exc:
                return repr(exc)

        with ThreadPoolExecutor(8) as clients:
            answers = [clients.submit(post) for _ in range(8)]
            time.sleep(1.5)  # all admitted: one running, seven queued
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s + 15)
            finally:
                elapsed = time.monotonic() - started
            statuses = [a.result() for a in answers]
        output = server_output(process)
    assert elapsed < timeout_s + 2.5, output[-3000:]
    assert statuses == [503] * 8, (statuses, output[-3000:])
    assert "Traceback" not in output, output[-3000:]
