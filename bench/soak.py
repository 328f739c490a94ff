"""Soak: hostile and normal traffic together against a real server (issue 20's "done").

    .venv/bin/python -m bench.soak [--duration 60] [--concurrency 8] [--out FILE]

A `segserve serve` process with the shipped models on CPU and default settings gets, for
`duration` seconds: normal segmentations (ISBI slices, CamVid frames) from `concurrency`
clients; small hostile requests that used to take the pod down (1-row PNG strips, /v2
shapes that overflow, deep JSON, batches of 400,000 images, huge overlays, lone
surrogates); uploads that stall after 40 MiB; connections that send half their headers;
clients that hang up mid-upload. A prober asks /health/live twice a second. Reported: the
server's peak RSS (the Kubernetes Deployment caps the pod at 2 GiB), every normal request's
answer, 5xx other than 503 (must be 0), requests lost, and the slowest liveness answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.config import SHIPPED_MODEL_DIR
from bench.common import (
    CAMVID_FRAME,
    ISBI_SLICE,
    em_mosaic,
    free_port,
    peak_rss_mib,
    png,
    serve_command,
    server,
)
from bench.memory_paths import smooth_png, strip_png, v2_bytes_body

POD_LIMIT_MIB = 2048


@dataclass
class Request:
    kind: str
    path: str
    body: bytes
    headers: Mapping[str, str | bytes]


def hostile() -> list[Request]:
    png_type = {"content-type": "image/png"}
    unet = "/v1/models/unet-isbi/segment"
    infer = "/v2/models/unet-isbi/infer"
    head400k = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": [400000, 1, 1, 1],
                    "parameters": {"binary_data_size": 400000},
                }
            ]
        }
    )
    em2048, length = v2_bytes_body(png(em_mosaic(2048)))
    deep = '{"inputs": ' + "[" * 2000 + "]" * 2000 + "}"
    json_type = {"content-type": "application/json"}
    shape = '{{"inputs": [{{"name": "image", "datatype": "UINT8", "shape": {}, "data": [1]}}]}}'
    surrogate = (
        '{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], '
        '"data": ["\\ud800"]}]}'
    )
    return [
        Request("strip 262,144 px", unet, strip_png(262_144), png_type),
        Request("strip 1,048,576 px", unet, strip_png(1_048_576), png_type),
        Request("overlay 8192^2", unet + "?format=overlay", smooth_png(8192), png_type),
        Request("v2 BYTES 2048^2", infer, em2048, {"Inference-Header-Content-Length": length}),
        Request(
            "v2 [400000,1,1,1]",
            infer,
            head400k.encode() + bytes(400000),
            {"Inference-Header-Content-Length": str(len(head400k))},
        ),
        Request("v2 shape 2**70", infer, shape.format([2**70, 1, 1, 1]).encode(), json_type),
        Request("v2 shape overflow", infer, shape.format([2**32, 2**32, 1, 1]).encode(), json_type),
        Request("v2 deep JSON", infer, deep.encode(), json_type),
        Request("v2 lone surrogate", infer, surrogate.encode(), json_type),
        Request(
            "v2 header length '²'",
            infer,
            b'{"inputs": []}',
            {"Inference-Header-Content-Length": "\u00b2".encode()},
        ),
    ]


@dataclass
class Tally:
    normal: Counter[int] = field(default_factory=Counter)
    hostile: dict[str, Counter[int]] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    live_max_ms: float = 0.0
    live_failures: int = 0
    stalled: int = 0
    half_headers: int = 0
    hangups: int = 0


def raw(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


async def drive(base: str, duration: float, concurrency: int) -> Tally:
    tally = Tally()
    started = time.monotonic()
    normal = [
        Request("isbi", "/v1/models/unet-isbi/segment", ISBI_SLICE.read_bytes(), {}),
        Request("camvid", "/v1/models/dilated-camvid/segment", CAMVID_FRAME.read_bytes(), {}),
    ]
    bad = hostile()
    rng = random.Random(0)

    def running() -> bool:
        return time.monotonic() - started < duration

    async with httpx.AsyncClient(base_url=base, timeout=300) as client:

        async def send(item: Request, counter: Counter[int]) -> None:
            given: dict[str, str | bytes] = {"content-type": "image/png", **item.headers}
            headers = [(k.encode(), v if isinstance(v, bytes) else v.encode())
                       for k, v in given.items()]  # fmt: skip
            try:
                response = await client.post(item.path, content=item.body, headers=headers)
                counter[response.status_code] += 1
            except httpx.TransportError as exc:
                tally.lost.append(f"{item.kind}: {type(exc).__name__}")

        async def normal_client() -> None:
            while running():
                await send(rng.choice(normal), tally.normal)

        async def hostile_client() -> None:
            while running():
                item = rng.choice(bad)
                await send(item, tally.hostile.setdefault(item.kind, Counter()))
                await asyncio.sleep(0.2)

        async def prober() -> None:
            while running():
                tick = time.perf_counter()
                try:
                    ok = (await client.get("/health/live", timeout=10)).status_code == 200
                except httpx.TransportError:
                    ok = False
                tally.live_max_ms = max(tally.live_max_ms, (time.perf_counter() - tick) * 1000)
                tally.live_failures += not ok
                await asyncio.sleep(0.5)

        def stall_upload() -> None:
            connection = raw(base)
            connection.sendall(
                b"POST /v1/models/unet-isbi/segment HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: image/png\r\nContent-Length: 52000000\r\n\r\n"
            )
            connection.sendall(b"\x89PNG\r\n\x1a\n" + bytes(40 * 1024 * 1024))
            time.sleep(5)
            connection.close()
            tally.stalled += 1

        def half_headers() -> None:
            sockets = [raw(base) for _ in range(50)]
            for s in sockets:
                s.sendall(b"POST /v1/models/unet-isbi/segment HTTP/1.1\r\nHost: x\r\n")
            time.sleep(5)
            for s in sockets:
                s.close()
            tally.half_headers += 50

        def hang_up() -> None:
            connection = raw(base)
            connection.sendall(
                b"POST /v1/models/unet-isbi/segment HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: image/png\r\nContent-Length: 2000000\r\n\r\n" + bytes(500_000)
            )
            connection.close()
            tally.hangups += 1

        async def raw_attacks() -> None:
            while running():
                await asyncio.gather(
                    *(asyncio.to_thread(stall_upload) for _ in range(4)),
                    asyncio.to_thread(half_headers),
                    asyncio.to_thread(hang_up),
                )
                await asyncio.sleep(1)

        await asyncio.gather(
            prober(),
            raw_attacks(),
            hostile_client(),
            hostile_client(),
            *(normal_client() for _ in range(concurrency)),
        )
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = serve_command(port, SHIPPED_MODEL_DIR)
    env = {"SEG_DEVICE": "cpu", "SEG_LOG_LEVEL": "warning"}
    with server(command, port, env, "/health/ready") as process:
        tally = asyncio.run(drive(base, args.duration, args.concurrency))
        peak = peak_rss_mib(process.pid)
        alive = httpx.get(f"{base}/health/live").status_code
    other_5xx = sum(
        n
        for counter in [tally.normal, *tally.hostile.values()]
        for status, n in counter.items()
        if status >= 500 and status != 503
    )
    report: dict[str, Any] = {
        "seconds": args.duration,
        "concurrency": args.concurrency,
        "peak_rss_mib": round(peak, 1),
        "pod_limit_mib": POD_LIMIT_MIB,
        "normal": dict(sorted(tally.normal.items())),
        "hostile": {kind: dict(sorted(c.items())) for kind, c in sorted(tally.hostile.items())},
        "other_5xx": other_5xx,
        "lost": len(tally.lost),
        "lost_detail": tally.lost[:10],
        "stalled_uploads": tally.stalled,
        "half_header_connections": tally.half_headers,
        "mid_upload_hangups": tally.hangups,
        "live_max_ms": round(tally.live_max_ms, 1),
        "live_failures": tally.live_failures,
        "live_after": alive,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    ok = peak < POD_LIMIT_MIB and other_5xx == 0 and not tally.lost and alive == 200
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
