"""Load test against a real `segserve serve` process on loopback.

    .venv/bin/python -m bench.load_test [--duration 60] [--concurrency 32] [--model-dir DIR]

Mixed valid and invalid requests at a fixed concurrency for `duration` seconds, then a
SIGTERM while the load goes on. The client acts like a load balancer: it polls
/health/ready and stops sending new requests once it turns 503 (SEG_DRAIN_DELAY_S gives
it the time). Reports requests served, p50/p95, 503s, other 5xx (must be 0), the server's
memory growth, and accepted requests lost (a request sent and never answered: must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from app.config import SHIPPED_MODEL_DIR
from bench.common import SAMPLE, free_port, rss_mib, serve_command, server


@dataclass
class Payload:
    path: str
    body: bytes
    content_type: str
    valid: bool


def payloads(models: dict[str, bytes]) -> list[Payload]:
    """Valid images for each model, and the usual garbage."""
    items = [Payload(f"/v1/models/{m}/segment", body, "image/png", True) for m, body in
             models.items()]  # fmt: skip
    first = next(iter(models))
    png = next(iter(models.values()))
    items += [
        Payload(f"/v1/models/{first}/segment", b"", "image/png", False),
        Payload(
            f"/v1/models/{first}/segment", b"plain text posing as an image", "image/png", False
        ),
        Payload(f"/v1/models/{first}/segment", png[: len(png) // 2], "image/png", False),
        Payload(f"/v1/models/{first}/segment", png, "text/plain", False),
        Payload("/v1/models/no-such-model/segment", png, "image/png", False),
        Payload(f"/v1/models/{first}/segment?format=bmp", png, "image/png", False),
        Payload(f"/v1/models/{first}/segment?tile_size=7&tiling=on", png, "image/png", False),
    ]
    return items


@dataclass
class Result:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    refused: int = 0


async def drive(
    base: str,
    items: list[Payload],
    concurrency: int,
    duration: float,
    process: subprocess.Popen[bytes],
    sigterm_at: float,
) -> tuple[Result, float]:
    result = Result()
    stop_sending = asyncio.Event()
    started = time.monotonic()
    valid = [p for p in items if p.valid]
    invalid = [p for p in items if not p.valid]
    rng = random.Random(0)
    # A new connection per request: "accepted" then means connected and sent.
    limits = httpx.Limits(max_keepalive_connections=0, max_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while not stop_sending.is_set() and time.monotonic() - started < duration:
                item = rng.choice(valid) if rng.random() < 0.7 else rng.choice(invalid)
                tick = time.perf_counter()
                try:
                    headers = {"content-type": item.content_type}
                    response = await client.post(item.path, content=item.body, headers=headers)
                except httpx.ConnectError:
                    result.refused += 1
                    continue
                except httpx.TransportError as exc:
                    result.lost.append(f"{item.path}: {type(exc).__name__}")
                    continue
                result.statuses[response.status_code] += 1
                if item.valid and response.status_code == 200:
                    result.latencies.append(time.perf_counter() - tick)

        async def balancer() -> None:
            """Send SIGTERM at `sigterm_at`, then stop new requests once readiness is 503."""
            while time.monotonic() - started < duration:
                if (
                    sigterm_at
                    and time.monotonic() - started >= sigterm_at
                    and process.poll() is None
                ):
                    process.send_signal(signal.SIGTERM)
                    sigterm_at_sent = time.monotonic()
                    while time.monotonic() - sigterm_at_sent < 30:
                        try:
                            ready = await client.get("/health/ready")
                            if ready.status_code == 503:
                                break
                        except httpx.TransportError:
                            break
                        await asyncio.sleep(0.1)
                    stop_sending.set()
                    return
                await asyncio.sleep(0.1)

        await asyncio.gather(balancer(), *(worker() for _ in range(concurrency)))
    return result, time.monotonic() - started


def run(
    model_dir: Path,
    duration: float,
    concurrency: int,
    sigterm_at: float,
    env: dict[str, str] | None = None,
    models: dict[str, bytes] | None = None,
) -> dict[str, object]:
    port = free_port()
    environment = {"SEG_LOG_LEVEL": "warning", "SEG_DRAIN_DELAY_S": "3", "SEG_DEVICE": "cpu",
                   **(env or {})}  # fmt: skip
    command = serve_command(port, model_dir)
    base = f"http://127.0.0.1:{port}"
    with server(command, port, environment, "/health/ready") as process:
        rss_start = rss_mib(process.pid)
        if models is None:
            models = {name: path.read_bytes() for name, path in SAMPLE.items()}
        result, elapsed = asyncio.run(drive(base, payloads(models), concurrency, duration,
                                            process, sigterm_at))  # fmt: skip
        rss_end = rss_mib(process.pid) if process.poll() is None else float("nan")
        exit_code = process.wait(timeout=120)
    ms = np.asarray(result.latencies) * 1000
    server_errors = {s: n for s, n in result.statuses.items() if s >= 500 and s != 503}
    return {
        "seconds": round(elapsed, 1), "concurrency": concurrency,
        "requests_answered": sum(result.statuses.values()),
        "statuses": dict(sorted(result.statuses.items())),
        "valid_200_p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "valid_200_p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
        "overloaded_503": result.statuses.get(503, 0),
        "other_5xx": sum(server_errors.values()),
        "rss_start_mib": round(rss_start, 1), "rss_before_sigterm_mib": round(rss_end, 1),
        "accepted_lost": len(result.lost), "lost_detail": result.lost[:10],
        "refused_after_stop": result.refused, "server_exit_code": exit_code,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=SHIPPED_MODEL_DIR)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sigterm-at", type=float, default=50, help="seconds into the run")
    args = parser.parse_args()
    report = run(args.model_dir, args.duration, args.concurrency, args.sigterm_at)
    print(json.dumps(report, indent=1))
    sys.exit(0 if report["other_5xx"] == 0 and report["accepted_lost"] == 0 else 1)


if __name__ == "__main__":
    main()
