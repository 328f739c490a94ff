"""A client that hangs up while its image waits or is being segmented: the segment route
notices (app/api/body.py DisconnectWatch: one pending ASGI receive per request, looked at
by admission's polling), answers 499 in the access log and stops the work."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from starlette.requests import Request

from app.api.body import DisconnectWatch
from tests.app.conftest import png_bytes, server_output
from tests.app.slow_server import slow_server
from tests.app.tiny_models import write_model


def watch_over(messages: asyncio.Queue[dict[str, Any]]) -> DisconnectWatch:
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    return DisconnectWatch(Request(scope, messages.get))


def test_the_watch_says_gone_only_once_the_server_reports_a_disconnect() -> None:
    async def scenario() -> None:
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        watch = watch_over(messages)
        assert not await watch()
        await asyncio.sleep(0.01)
        assert not await watch()  # still waiting: polling again starts no second receive
        messages.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        await asyncio.sleep(0.01)
        assert not await watch()  # another message is not a hang-up: it waits again
        messages.put_nowait({"type": "http.disconnect"})
        await asyncio.sleep(0.01)
        assert await watch()
        assert await watch()  # and stays gone
        watch.close()

    asyncio.run(scenario())


def test_close_cancels_the_pending_receive() -> None:
    async def scenario() -> None:
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        watch = watch_over(messages)
        assert not await watch()
        waiter = watch.waiter
        assert waiter is not None
        watch.close()
        await asyncio.sleep(0)
        assert waiter.cancelled() and watch.waiter is None
        messages.put_nowait({"type": "http.disconnect"})  # nobody takes it any more
        await asyncio.sleep(0.01)
        assert messages.qsize() == 1

    asyncio.run(scenario())


def test_a_failed_receive_counts_as_gone() -> None:
    async def scenario() -> None:
        async def broken() -> dict[str, Any]:
            raise OSError("connection reset")

        scope = {"type": "http", "method": "POST", "path": "/", "headers": [],
                 "query_string": b""}  # fmt: skip
        watch = DisconnectWatch(Request(scope, broken))
        assert not await watch()
        await asyncio.sleep(0.01)
        assert await watch()
        watch.close()

    asyncio.run(scenario())


def test_a_client_hanging_up_mid_inference_stops_its_tiles_and_is_logged_499(
    tmp_path: Path,
) -> None:
    write_model(tmp_path, "threshold", "tiny-grey", size_multiple=8)
    pixels = np.random.default_rng(0).integers(0, 256, (256, 256), np.uint8)
    tiled = png_bytes(pixels)  # 16 tiles of 64: about 3.2 s at 0.2 s a run
    small = png_bytes(pixels[:32, :32])
    with slow_server(tmp_path, 0.2, SEG_WORKERS="1") as (base, process):
        host, port = base.removeprefix("http://").split(":")
        head = (
            b"POST /v1/models/tiny-grey/segment?tiling=on&tile_size=64&tile_overlap=0 "
            b"HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {len(tiled)}\r\n\r\n".encode()
        )
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(head + tiled)
            time.sleep(0.8)  # its tiles are running on the only worker
        started = time.monotonic()
        answer = httpx.post(f"{base}/v1/models/tiny-grey/segment", content=small,
                            headers={"content-type": "image/png"}, timeout=30)  # fmt: skip
        waited = time.monotonic() - started
        output = server_output(process)
    assert answer.status_code == 200, answer.text
    # Had the tiles gone on, the next image would wait about 2.4 s more for the worker.
    assert waited < 1.8, (waited, output[-3000:])
    statuses = [
        json.loads(line).get("status")
        for line in output.splitlines()
        if line.startswith("{") and '"msg": "request"' in line and "/segment" in line
    ]
    assert statuses == [499, 200], output[-3000:]
