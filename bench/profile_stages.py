"""Where the CPU time of one POST /v1/models/{name}/segment goes, stage by stage (issue 15).

    .venv/bin/python -m bench.profile_stages [--repeats 40] [--label after] [--no-server]
                                             [--jpeg] [--out bench/results/stages.json]

Two measurements on the shipped models (CPU provider), ISBI 512x512 and CamVid 480x360 PNG,
each sent as a raw image/png body and as multipart/form-data (with `--jpeg`, also
re-encoded as a quality-90 4:2:0 JPEG, raw):

1. In process, the request path's own functions called in the order the route calls them,
   each stage timed by the calling thread's CPU time (time.thread_time), the process's CPU
   time (time.process_time: includes onnxruntime's intra-op threads, so it is the column for
   the session run) and wall time; medians over `--repeats` requests. The stages: the body
   read from an ASGI receive channel in 64 KiB chunks (uvicorn's read size) into the
   spool (raw) or through python-multipart (multipart), the header read for admission,
   decode, to channels + mirror padding, normalisation (or the uint8 copy for graphs that
   normalise inside), the session run, post-processing (crop, uint8 labels), the palette
   PNG, and the Response object.
2. A real `segserve serve` process: the server's CPU time per request (utime + stime from
   /proc over `--repeats` sequential requests), the part of it spent on the main thread,
   which runs the event loop (HTTP parsing, ASGI, routing, reading the body, sending the
   answer; the decode, the session and the encode run on other threads), and the client's
   wall time.

The machine is shared and noisy: read the CPU columns (thread CPU above all), not wall.
Results are merged into the output file under `--label`, so one file keeps a before and
an after.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from fastapi import Response
from PIL import Image
from starlette.requests import Request

from app.api.body import read_image_upload
from app.config import SHIPPED_MODEL_DIR, Settings
from app.imaging.decode import declared_pixels, decode_image
from app.imaging.encode import palette_png
from app.inference.pipeline import model_input, padded_channels
from app.inference.registry import ModelEntry
from bench.common import SAMPLE, free_port, loaded_registry, serve_command, server

T = TypeVar("T")
CHUNK = 64 * 1024  # uvicorn hands the body over in reads of at most this size
STAGES = (
    "body",
    "header",
    "decode",
    "channels_pad",
    "normalise",
    "session",
    "post",
    "encode",
    "response",
)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "stages.json"


def multipart(image: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with the file in the `image` field, as clients send it."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="image.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def request_for(body: bytes, content_type: str) -> Request:
    """A Starlette request whose body arrives through ASGI receive in 64 KiB chunks."""
    chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)] or [b""]
    messages = iter(chunks)

    async def receive() -> dict[str, Any]:
        chunk = next(messages, None)
        if chunk is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": chunk is not chunks[-1]}

    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers,
             "query_string": b""}  # fmt: skip
    return Request(scope, receive)


class Clock:
    """Per-stage samples of thread CPU, process CPU and wall time, in milliseconds."""

    def __init__(self) -> None:
        self.samples: dict[str, dict[str, list[float]]] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        thread, process, wall = time.thread_time(), time.process_time(), time.perf_counter()
        yield
        row = self.samples.setdefault(name, {"thread": [], "process": [], "wall": []})
        row["thread"].append((time.thread_time() - thread) * 1000)
        row["process"].append((time.process_time() - process) * 1000)
        row["wall"].append((time.perf_counter() - wall) * 1000)

    def medians(self) -> dict[str, dict[str, float]]:
        return {
            name: {k: round(statistics.median(v), 3) for k, v in columns.items()}
            for name, columns in self.samples.items()
        }


def one_request(
    model: ModelEntry,
    body: bytes,
    content_type: str,
    settings: Settings,
    loop: asyncio.AbstractEventLoop,
    clock: Clock,
) -> bytes:
    """The route's work for one request, stage by stage; the answer's bytes."""
    assert model.spec is not None
    spec = model.spec
    request = request_for(body, content_type)
    with clock.stage("body"):
        upload = loop.run_until_complete(read_image_upload(request, settings))
    try:
        with clock.stage("header"):
            declared_pixels(upload)
        with clock.stage("decode"):
            image = decode_image(upload, settings.max_pixels)
    finally:
        upload.close()
    h, w = image.pixels.shape[:2]
    with clock.stage("channels_pad"):
        chw = padded_channels(image.pixels, spec)
    with clock.stage("normalise"):
        x = model_input(chw, spec)[None]
    assert spec.labels_output is not None
    with clock.stage("session"):
        out = model.run(spec.labels_output, x)
    with clock.stage("post"):
        labels = np.ascontiguousarray(out[0, :h, :w], dtype=np.uint8)
    with clock.stage("encode"):
        answer = palette_png(labels, spec.palette)
    with clock.stage("response"):
        Response(answer, media_type="image/png", headers={"x-image-size": f"{w}x{h}"})
    return answer


def jpeg(path: Path) -> bytes:
    """The sample re-encoded as a JPEG (quality 90, 4:2:0), as a camera would send it."""
    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.save(buffer, format="JPEG", quality=90, subsampling=2)
    return buffer.getvalue()


def cases(with_jpeg: bool = False) -> list[tuple[str, str, bytes, str]]:
    """(model, transport, body, content type) for every combination measured."""
    rows = []
    for name, path in SAMPLE.items():
        image = path.read_bytes()
        rows.append((name, "raw", image, "image/png"))
        rows.append((name, "multipart", *multipart(image)))
        if with_jpeg:
            rows.append((name, "raw-jpeg", jpeg(path), "image/jpeg"))
    return rows


def in_process(repeats: int, with_jpeg: bool) -> dict[str, dict[str, dict[str, float]]]:
    settings = Settings(model_dir=SHIPPED_MODEL_DIR, device="cpu")
    registry = loaded_registry(settings)
    loop = asyncio.new_event_loop()
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for name, transport, body, content_type in cases(with_jpeg):
            model = registry.get(name)
            for _ in range(3):  # warm-up
                one_request(model, body, content_type, settings, loop, Clock())
            clock = Clock()
            for _ in range(repeats):
                one_request(model, body, content_type, settings, loop, clock)
            results[f"{name} {transport}"] = clock.medians()
    finally:
        loop.close()
        registry.close()
    return results


def _cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _processes(pid: int) -> list[int]:
    """`pid` and its descendants (a supervisor's workers, when there are any)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            found.extend(_processes(int(child)))
    return found


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(every thread's CPU seconds, the main threads' only) of `pid` and its descendants:
    a server's main thread runs its event loop (HTTP parsing, ASGI, routing, reading the
    body, sending the answer); the others the thread pools and onnxruntime's threads."""
    total = loop = 0.0
    for process in _processes(pid):
        total += _cpu(Path(f"/proc/{process}/stat"))
        loop += _cpu(Path(f"/proc/{process}/task/{process}/stat"))
    return total, loop


def measured(fn: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - started) * 1000


def real_server(repeats: int, with_jpeg: bool) -> dict[str, dict[str, float]]:
    """Per case: the server's CPU ms per request and the client's wall p50 in ms."""
    port = free_port()
    command = serve_command(port, SHIPPED_MODEL_DIR)
    results: dict[str, dict[str, float]] = {}
    env = {"SEG_DEVICE": "cpu", "SEG_PRECISION": os.environ["SEG_PRECISION"]}
    with (
        server(command, port, env, "/health/ready") as process,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client,
    ):
        for name, transport, body, content_type in cases(with_jpeg):
            url = f"/v1/models/{name}/segment"

            def post(body: bytes = body, content_type: str = content_type,
                         url: str = url) -> httpx.Response:  # fmt: skip
                response = client.post(url, content=body,
                                           headers={"content-type": content_type})  # fmt: skip
                response.raise_for_status()
                return response

            for _ in range(3):
                post()
            total, loop = cpu_seconds(process.pid)
            walls = [measured(post)[1] for _ in range(repeats)]
            total_after, loop_after = cpu_seconds(process.pid)
            results[f"{name} {transport}"] = {
                "server_cpu_ms": round((total_after - total) * 1000 / repeats, 3),
                "event_loop_cpu_ms": round((loop_after - loop) * 1000 / repeats, 3),
                "wall_p50_ms": round(float(np.percentile(walls, 50)), 3),
            }
    return results


def table(stages: dict[str, dict[str, dict[str, float]]],
          served: dict[str, dict[str, float]] | None) -> str:  # fmt: skip
    lines = []
    for case, rows in stages.items():
        lines.append(f"\n{case}  (ms: thread CPU / process CPU / wall)")
        total = {"thread": 0.0, "process": 0.0, "wall": 0.0}
        for stage in STAGES:
            row = rows[stage]
            for k in total:
                total[k] += row[k]
            lines.append(f"  {stage:<14}{row['thread']:>8.3f}{row['process']:>9.3f}"
                         f"{row['wall']:>9.3f}")  # fmt: skip
        lines.append(f"  {'sum':<14}{total['thread']:>8.3f}{total['process']:>9.3f}"
                     f"{total['wall']:>9.3f}")  # fmt: skip
        if served and case in served:
            row = served[case]
            lines.append(f"  real server, CPU per request: {row['server_cpu_ms']:.2f} ms, of "
                         f"which the event loop thread (HTTP, ASGI, routing, body, answer) "
                         f"{row['event_loop_cpu_ms']:.2f} ms; client wall p50 "
                         f"{row['wall_p50_ms']:.2f} ms")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--label", default="current", help="key of this run in the file")
    parser.add_argument("--no-server", action="store_true", help="skip the real server")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--precision", default="fp32", help="SEG_PRECISION (default fp32)")
    parser.add_argument("--jpeg", action="store_true", help="also the samples as JPEG (raw)")
    args = parser.parse_args()
    os.environ["SEG_PRECISION"] = args.precision  # read by Settings here and in the server
    stages = in_process(args.repeats, args.jpeg)
    served = None if args.no_server else real_server(args.repeats, args.jpeg)
    print(table(stages, served))
    runs: dict[str, Any] = {}
    if args.out.exists():
        runs = json.loads(args.out.read_text()).get("runs", {})
    runs[args.label] = {
        "repeats": args.repeats,
        "precision": args.precision,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared: noisy)",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stages_ms": stages,
        "server": served,
    }
    document = {
        "what": "per-stage CPU and wall time of POST /v1/models/{name}/segment (medians); "
        "bench/profile_stages.py",
        "stages": list(STAGES),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"\nwrote {args.out} ({args.label})")


if __name__ == "__main__":
    main()
