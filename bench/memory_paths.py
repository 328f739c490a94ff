"""Peak memory of the server per request path, hostile inputs included (issue 20).

    .venv/bin/python -m bench.memory_paths [--quick] [--out bench/results/memory_paths.json]

One real `segserve serve` process with the shipped models on CPU, default settings. Before
each request the kernel's peak-RSS mark of the server is reset (/proc/PID/clear_refs, 5),
so each row is that request's own peak: resident memory at rest plus what the path adds.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from app.config import SHIPPED_MODEL_DIR
from bench.common import (
    CAMVID_FRAME,
    ISBI_SLICE,
    em_mosaic,
    free_port,
    peak_rss_mib,
    png,
    rss_mib,
    serve_command,
    server,
)

PNG = {"content-type": "image/png"}


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def strip_png(width: int) -> bytes:
    """A 1-row greyscale PNG: a few KB for a million pixels."""
    buffer = io.BytesIO()
    Image.fromarray((np.arange(width) % 256).astype(np.uint8)[None, :]).save(buffer, "PNG")
    return buffer.getvalue()


def smooth_png(side: int) -> bytes:
    """A side x side image that compresses to almost nothing (a gradient)."""
    row = (np.arange(side) * 255 // max(side - 1, 1)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.broadcast_to(row, (side, side)).copy()).save(buffer, "PNG")
    return buffer.getvalue()


def v2_bytes_body(data: bytes, outputs: list[dict[str, Any]] | None = None) -> tuple[bytes, str]:
    head: dict[str, Any] = {
        "inputs": [
            {
                "name": "image_bytes",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": len(data) + 4},
            }
        ]
    }
    if outputs:
        head["outputs"] = outputs
    text = json.dumps(head).encode()
    return text + len(data).to_bytes(4, "little") + data, str(len(text))


@dataclass
class Probe:
    name: str
    send: Callable[[httpx.Client], int]


def stalled_uploads(base: str, count: int, megabytes: int) -> Callable[[httpx.Client], int]:
    """`count` clients each send `megabytes` MiB of a 50 MiB upload and stall."""

    def send(client: httpx.Client) -> int:
        host, port = base.removeprefix("http://").split(":")
        sockets = []
        for _ in range(count):
            connection = socket.create_connection((host, int(port)))
            connection.sendall(
                b"POST /v1/models/unet-isbi/segment HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: image/png\r\nContent-Length: 52000000\r\n\r\n"
            )
            chunk = b"\x89PNG\r\n\x1a\n" + bytes(1024 * 1024 - 8)
            for _ in range(megabytes):
                connection.sendall(chunk)
            sockets.append(connection)
        time.sleep(2)  # they stall; the server holds what they sent
        status = client.get("/health/live").status_code
        for connection in sockets:
            connection.close()
        return status

    return send


def paths(base: str, quick: bool) -> list[Probe]:
    isbi, camvid = ISBI_SLICE.read_bytes(), CAMVID_FRAME.read_bytes()
    em2048 = png(em_mosaic(2048))
    em1024 = png(em_mosaic(1024))

    def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> Callable[..., int]:
        return lambda c: c.post(path, content=body, headers=headers or PNG).status_code

    unet = "/v1/models/unet-isbi/segment"
    items = [
        Probe("v1 png, ISBI 512x512", post(unet, isbi)),
        Probe("v1 png, CamVid 480x360", post("/v1/models/dilated-camvid/segment", camvid)),
        Probe("v1 json (rle), ISBI 512x512", post(unet + "?format=json", isbi)),
        Probe("v1 tta, ISBI 512x512", post(unet + "?tta=true", isbi)),
        Probe("v1 png, 1-row strip 262,144 px (1 KB)", post(unet, strip_png(262_144))),
        Probe("v1 png, 1-row strip 1,048,576 px (4 KB)", post(unet, strip_png(1_048_576))),
        Probe("v1 png, EM 1024x1024 (one pass)", post(unet, em1024)),
        Probe("v1 tta, EM 1024x1024 (one pass)", post(unet + "?tta=true", em1024)),
        Probe("v1 png, EM 2048x2048 (tiled)", post(unet, em2048)),
        Probe("v1 confidence, EM 2048x2048", post(unet + "?format=confidence", em2048)),
        Probe("v1 overlay, EM 2048x2048", post(unet + "?format=overlay", em2048)),
        Probe(
            "v1 overlay, 8192x8192 (refused: answer)",
            post(unet + "?format=overlay", smooth_png(8192)),
        ),
    ]
    body, length = v2_bytes_body(em2048)
    items.append(
        Probe(
            "v2 BYTES, EM 2048x2048 (tiled)",
            post("/v2/models/unet-isbi/infer", body, {"Inference-Header-Content-Length": length}),
        )
    )
    probs = [{"name": "probabilities", "parameters": {"binary_data": False}}]
    body, length = v2_bytes_body(em1024, probs)
    items.append(
        Probe(
            "v2 probabilities as JSON, EM 1024x1024",
            post("/v2/models/unet-isbi/infer", body, {"Inference-Header-Content-Length": length}),
        )
    )
    body, length = v2_bytes_body(png(em_mosaic(1024)[:, :, None].repeat(3, 2)), probs)
    items.append(
        Probe(
            "v2 probabilities as JSON, dilated 1024x1024 (refused)",
            post(
                "/v2/models/dilated-camvid/infer", body, {"Inference-Header-Content-Length": length}
            ),
        )
    )
    batch = np.zeros((16, 512, 512, 1), np.uint8)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": [16, 512, 512, 1],
                    "parameters": {"binary_data_size": batch.size},
                }
            ],
            "outputs": [{"name": "labels", "parameters": {"binary_data": True}}],
        }
    )
    items.append(
        Probe(
            "v2 UINT8 batch 16 x 512x512",
            post(
                "/v2/models/unet-isbi/infer",
                head.encode() + batch.tobytes(),
                {"Inference-Header-Content-Length": str(len(head))},
            ),
        )
    )
    items.append(Probe("10 uploads stalled after 40 MiB", stalled_uploads(base, 10, 40)))
    if not quick:
        items.append(Probe("v1 png, EM 4096x4096 (tiled)", post(unet, png(em_mosaic(4096)))))
        items.append(
            Probe("v1 overlay, EM 4096x4096", post(unet + "?format=overlay", png(em_mosaic(4096))))
        )
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 4096 x 4096 paths")
    parser.add_argument("--out", type=Path, default=Path("bench/results/memory_paths.json"))
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = serve_command(port, SHIPPED_MODEL_DIR)
    rows: list[dict[str, Any]] = []
    peaks: list[float] = []
    with (
        server(
            command, port, {"SEG_DEVICE": "cpu", "SEG_LOG_LEVEL": "warning"}, "/health/ready"
        ) as process,
        httpx.Client(base_url=base, timeout=600) as client,
    ):
        pid = process.pid
        for item in paths(base, args.quick):
            resting = rss_mib(pid)
            reset_peak(pid)
            started = time.perf_counter()
            status = item.send(client)
            seconds = time.perf_counter() - started
            peak = peak_rss_mib(pid)
            peaks.append(peak)
            rows.append(
                {
                    "path": item.name,
                    "status": status,
                    "seconds": round(seconds, 2),
                    "rss_before_mib": round(resting, 1),
                    "peak_rss_mib": round(peak, 1),
                    "added_mib": round(peak - resting, 1),
                }
            )
            print(
                f"{item.name:55s} {status} {seconds:7.2f} s  peak {peak:7.1f} MiB "
                f"(+{peak - resting:.1f})",
                flush=True,
            )
        alive = client.get("/health/live").status_code
    report = {
        "rows": rows,
        "live_after": alive,
        "max_peak_rss_mib": round(max(peaks), 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"max peak {report['max_peak_rss_mib']} MiB; /health/live after: {alive}")


if __name__ == "__main__":
    main()
