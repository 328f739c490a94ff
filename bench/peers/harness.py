"""One server over HTTP for the peers benchmark: started in its own process group, its
answer checked against raw onnxruntime's class map, warmed, loaded with multipart PNG
uploads at a given concurrency, stopped with all its worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.common import ROOT


@dataclass(frozen=True)
class Counts:
    """Requests per measurement: `single` at c=1, `per_client` x c above; `warm_per_client`
    x c before each (connections, the server's first runs)."""

    single: int
    per_client: int
    warm_per_client: int


FULL = Counts(single=40, per_client=16, warm_per_client=4)
QUICK = Counts(single=6, per_client=2, warm_per_client=1)


@dataclass
class Server:
    """How to start one server for one model, where it answers, and what it must answer."""

    label: str
    command: list[str]
    env: dict[str, str]
    ready_path: str
    segment_path: str
    precision: str


class WrongAnswer(AssertionError):
    """A server's class map differs from raw onnxruntime's."""


def multipart(data: bytes, filename: str = "image.png") -> tuple[bytes, str]:
    """A multipart/form-data body with the file in field `image`, and its content type."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
        f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def check_answer(png: bytes, expected: np.ndarray, label: str) -> None:
    """The answer must be a palette PNG whose pixel values are `expected`'s class indices."""
    image = Image.open(io.BytesIO(png))
    if image.mode != "P":
        raise WrongAnswer(f"{label} answered a mode {image.mode} image, not a palette PNG")
    labels = np.asarray(image)
    if labels.shape != expected.shape:
        raise WrongAnswer(f"{label} answered {labels.shape}, expected {expected.shape}")
    wrong = int((labels != expected).sum())
    if wrong:
        raise WrongAnswer(f"{label}: {wrong} of {expected.size} pixels differ from raw onnxruntime")


@contextlib.contextmanager
def running(server: Server, port: int, log: Path) -> Iterator[None]:
    """The server in its own process group, until its ready path answers 200; then the whole
    group is stopped (LitServe's and BentoML's worker processes too)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            server.command,
            env={**os.environ, **server.env},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{server.label} exited with {process.returncode}:\n{tail}")
            with contextlib.suppress(httpx.TransportError):
                ready = httpx.get(f"http://127.0.0.1:{port}{server.ready_path}", timeout=2)
                if ready.status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.label} never became ready (log: {log})")
            time.sleep(0.3)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        time.sleep(0.5)  # the group's workers get their SIGTERM too; then nothing is left
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


async def _load(
    url: str, body: bytes, content_type: str, total: int, concurrency: int
) -> tuple[list[float], float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency)
    headers = {"content-type": content_type}
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with semaphore:
                started = time.perf_counter()
                response = await client.post(url, content=body, headers=headers)
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        return latencies, time.perf_counter() - started


def measure_server(
    server: Server,
    image: Path,
    expected: np.ndarray,
    counts: Counts,
    concurrency: tuple[int, ...],
    port: int,
    log: Path,
) -> dict[str, Any]:
    """Start, check the answer, warm and measure one server; stopped again on return."""
    body, content_type = multipart(image.read_bytes(), image.name)
    url = f"http://127.0.0.1:{port}{server.segment_path}"
    result: dict[str, Any] = {"requests": {}, "seconds": {}}
    with running(server, port, log):
        answer = httpx.post(url, content=body, headers={"content-type": content_type}, timeout=600)
        answer.raise_for_status()
        check_answer(answer.content, expected, server.label)
        for c in concurrency:
            asyncio.run(_load(url, body, content_type, counts.warm_per_client * c, c))
            total = counts.single if c == 1 else counts.per_client * c
            latencies, seconds = asyncio.run(_load(url, body, content_type, total, c))
            if c == 1:
                result["latencies"] = latencies
            result["requests"][c], result["seconds"][c] = total, seconds
    return result
