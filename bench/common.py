"""Shared bits of the benchmark: images from the shared data, timing, servers, memory."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from app.config import Settings
from app.inference.registry import ModelRegistry
from app.service import SegmentOptions

ROOT = Path(__file__).resolve().parents[1]
# BENCH_DATA_ROOT: where the shared datasets are, when not beside the checkout
DATA = Path(os.environ.get("BENCH_DATA_ROOT", ROOT.parent / "shared" / "datasets"))
ISBI_SLICE = DATA / "isbi2012" / "images" / "21.png"
CAMVID_FRAME = DATA / "camvid" / "val" / "0016E5_08041.png"
SAMPLE = {"unet-isbi": ISBI_SLICE, "dilated-camvid": CAMVID_FRAME}
PNG_OUT = SegmentOptions()  # the endpoint's defaults: a palette PNG


def sample_pixels(name: str, channels: int) -> np.ndarray:
    """The model's sample image as the uint8 pixels the service decodes it to."""
    return np.asarray(Image.open(SAMPLE[name]).convert("L" if channels == 1 else "RGB"))


def loaded_registry(settings: Settings) -> ModelRegistry:
    """Every model of `settings.model_dir`, loaded and warmed up."""
    registry = ModelRegistry(settings)
    registry.discover()
    registry.load_all()
    return registry


def em_mosaic(side: int) -> np.ndarray:
    """A side x side EM image tiled from the 512 x 512 ISBI slices (slices 0-23 in turn),
    every other tile mirrored so the seams look like tissue, not a grid."""
    slices = [np.asarray(Image.open(DATA / "isbi2012" / "images" / f"{i}.png")) for i in range(24)]
    n = -(-side // 512)
    rows = []
    for r in range(n):
        row = [slices[(r * n + c) % 24][:, :: (-1) ** c] for c in range(n)]
        rows.append(np.concatenate(row, axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:side, :side])


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass
class Stats:
    p50_ms: float
    p95_ms: float
    mean_ms: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ms = np.asarray(seconds) * 1000
        return cls(float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(ms.mean()),
                   len(ms))  # fmt: skip


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 2) -> Stats:
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return Stats.of(seconds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for process {pid}")


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants: a server with SEG_PROCESSES > 1 serves from its children."""
    pids = [pid]
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            pids += _tree(int(child))
    return pids


def _tree_mib(pid: int, key: str) -> float:
    total = 0.0
    for member in _tree(pid):
        with contextlib.suppress(FileNotFoundError, RuntimeError):  # exited meanwhile
            total += _status_mib(member, key)
    return total


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set size so far (summed over it and its worker
    processes, if any: an upper bound on their peak together)."""
    return _tree_mib(pid, "VmHWM")


def rss_mib(pid: int) -> float:
    """VmRSS: the process's resident set size now (with its worker processes', if any)."""
    return _tree_mib(pid, "VmRSS")


@contextlib.contextmanager
def server(
    command: list[str], port: int, env: dict[str, str], ready_path: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process on `port`; yields it once `ready_path` answers 200."""
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command} never became ready")
            time.sleep(0.3)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=60)


async def _load(url: str, body: bytes, total: int, concurrency: int) -> tuple[list[float], float]:
    limits = httpx.Limits(max_connections=concurrency)
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with semaphore:
                started = time.perf_counter()
                response = await client.post(url, content=body,
                                             headers={"content-type": "image/png"})  # fmt: skip
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        return latencies, time.perf_counter() - started


def http_load(url: str, body: bytes, total: int, concurrency: int) -> tuple[Stats, float]:
    """(latency stats, requests per second) for `total` requests, `concurrency` at once."""
    # Warm the connections and the server's batch shapes at this concurrency first: each new
    # input shape costs a slow first run on CUDA
    asyncio.run(_load(url, body, 4 * concurrency, concurrency))
    latencies, elapsed = asyncio.run(_load(url, body, total, concurrency))
    return Stats.of(latencies), total / elapsed


def python() -> str:
    return sys.executable


def serve_command(port: int, model_dir: Path, *options: str) -> list[str]:
    """`segserve serve` on `port` for the models of `model_dir`, in this interpreter."""
    return [python(), "-m", "app.cli", "serve", "--port", str(port), "--model-dir",
            str(model_dir), *options]  # fmt: skip
