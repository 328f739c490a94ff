"""The folder CLI (`segserve segment DIR`, one keep-alive pool) against one connection per
image (the CLI before the segserve client: urllib, a new TCP connection for every image).

    .venv/bin/python -m bench.client_folder [--images 100] [--concurrency 2] [--out FILE]

A `segserve serve` process with the shipped models on CPU; the first `images` CamVid val
frames (480 x 360) through dilated-camvid, from a temporary folder of links to the shared
data. Both sides run in this process with the same number of requests at once and write
the same PNG files (checked byte for byte); the per-image side is the old CLI's loop over
`app.client.request`. The two take turns on chunks of the folder (ABBA), so that the drifting
load of a shared machine does not land on one side. Reported: each side's seconds for all
the images, images per second, and the ratio; and, to show what a connection costs without
inference, milliseconds per metadata GET with a new connection each and on the pool.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from app.cli import main as cli_main
from app.client import request
from app.config import SHIPPED_MODEL_DIR
from bench.common import DATA, free_port, serve_command, server
from segserve import Client

MODEL = "dilated-camvid"


def per_image_connections(url: str, files: list[Path], out: Path, concurrency: int) -> int:
    """The old `segserve segment` loop: a urllib request (its own connection) per image."""
    endpoint = f"{url}/v1/models/{urllib.parse.quote(MODEL, safe='')}/segment?format=png"

    def one(source: Path) -> bool:
        status, body = request("POST", endpoint, source.read_bytes(), "image/png")
        if status == 200:
            (out / f"{source.stem}.png").write_bytes(body)
        return status == 200

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return sum(pool.map(one, files))


def folder_cli(url: str, folder: Path, out: Path, concurrency: int) -> int:
    argv = ["segment", str(folder), "--model", MODEL, "--url", url, "-o", str(out),
            "--concurrency", str(concurrency), "-q"]  # fmt: skip
    return cli_main(argv)


def per_call_ms(url: str, calls: int) -> dict[str, float]:
    """Milliseconds per GET /v1/models/{name} (no inference): what a connection costs."""
    path = f"/v1/models/{MODEL}"
    started = time.perf_counter()
    for _ in range(calls):
        status, _ = request("GET", url + path, timeout=30)
        assert status == 200
    new_connections = time.perf_counter() - started
    with Client(url) as client:
        started = time.perf_counter()
        for _ in range(calls):
            client.model(MODEL)
        pooled = time.perf_counter() - started
    return {"new_connection_each": round(1000 * new_connections / calls, 3),
            "keep_alive_pool": round(1000 * pooled / calls, 3)}  # fmt: skip


def side(seconds: float, images: int, **extra: int) -> dict[str, float]:
    return {"seconds": round(seconds, 2), "images_per_s": round(images / seconds, 2), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=10, help="images per interleaved chunk")
    parser.add_argument("--out", type=Path, default=Path("bench/results/client_folder.json"))
    args = parser.parse_args()
    frames = sorted((DATA / "camvid" / "val").glob("*.png"))[: args.images]
    if len(frames) < args.images:
        sys.exit(f"only {len(frames)} CamVid val frames under {DATA}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serve_command(port, SHIPPED_MODEL_DIR)
    env = {"SEG_DEVICE": "cpu", "SEG_LOG_LEVEL": "warning"}
    with tempfile.TemporaryDirectory() as scratch, server(command, port, env, "/health/ready"):
        root = Path(scratch)
        folder = root / "frames"
        folder.mkdir()
        for frame in frames:  # links, not copies, of the shared data
            (folder / frame.name).symlink_to(frame)
        files = sorted(folder.iterdir())
        per_image_out, cli_out = root / "per-image", root / "cli"
        per_image_out.mkdir()
        per_image_connections(url, files[:4], per_image_out, args.concurrency)  # warm-up
        per_image_s = cli_s = 0.0
        done, codes = 0, set[int]()
        # Interleaved in chunks, ABBA: the load of a shared machine drifts over a minute, and
        # one side run wholly after the other would carry that drift as a difference.
        for number, start in enumerate(range(0, len(files), args.chunk)):
            chunk = folder / f"chunk{number}"
            chunk.mkdir()
            for link in files[start : start + args.chunk]:
                link.rename(chunk / link.name)
            sides = ["per-image", "cli"] if number % 2 == 0 else ["cli", "per-image"]
            for name in sides:
                started = time.perf_counter()
                if name == "per-image":
                    done += per_image_connections(url, sorted(chunk.iterdir()), per_image_out,
                                                  args.concurrency)  # fmt: skip
                    per_image_s += time.perf_counter() - started
                else:
                    codes.add(folder_cli(url, chunk, cli_out, args.concurrency))
                    cli_s += time.perf_counter() - started
        same = all(
            (cli_out / name).read_bytes() == (per_image_out / name).read_bytes()
            for name in (f"{f.stem}.png" for f in files)
        )
        code = max(codes)
        metadata_ms = per_call_ms(url, 300)
    report: dict[str, Any] = {
        "images": len(files),
        "model": MODEL,
        "image_size": "480x360 CamVid val frames",
        "concurrency": args.concurrency,
        "per_image_connections": side(per_image_s, len(files), ok=done),
        "folder_cli": side(cli_s, len(files), exit_code=code),
        "speedup": round(per_image_s / cli_s, 3),
        "same_outputs": same,
        "metadata_get_ms_per_call": metadata_ms,
        "chunk": args.chunk,
        "note": "one run on a 2-core machine shared with other work; server on CPU",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
