"""Request bodies against a real server: a deadline for the whole body, and stalled
uploads that hold no memory beyond the spool threshold."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from tests.app.conftest import png_bytes, running_server
from tests.app.test_api import grey_pattern
from tests.app.tiny_models import write_model


def raw_request(base: str, head: bytes, body: bytes) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=10)
    connection.sendall(head + body)
    return connection


def read_status(connection: socket.socket, timeout: float) -> int:
    connection.settimeout(timeout)
    data = b""
    while b"\r\n" not in data:
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_a_body_that_stalls_gets_408_and_the_server_goes_on(tmp_path: Path) -> None:
    write_model(tmp_path, "threshold", "tiny-grey", size_multiple=8)
    with running_server(tmp_path, SEG_BODY_TIMEOUT_S="1") as (base, _):
        head = (
            b"POST /v1/models/tiny-grey/segment HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
        )
        started = time.monotonic()
        stalled = raw_request(base, head, b"\x89PNG" + bytes(1000))
        try:
            assert read_status(stalled, timeout=10) == 408
            assert time.monotonic() - started < 5
        finally:
            stalled.close()
        data = png_bytes(grey_pattern(20, 30))
        response = httpx.post(f"{base}/v1/models/tiny-grey/segment", content=data,
                              headers={"content-type": "image/png"})  # fmt: skip
        assert response.status_code == 200
