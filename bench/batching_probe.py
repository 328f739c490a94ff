"""Dynamic batching in process, without HTTP: U-Net throughput of `--threads` threads with
batching off and on, on the inference alone and on the whole decode-infer-encode path.

    python -m bench.batching_probe --device cuda [--requests 400] [--threads 8]

For each case it prints one JSON line: requests/s, the batches run, the mean requests
per batch, and the share of the wall time spent inside session runs.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from app.config import Device, Settings
from app.inference.pipeline import segment
from app.service import Limits, segment_file
from bench.common import PNG_OUT, SAMPLE, loaded_registry, sample_pixels


def probe(
    device: Device, batch: int, delay_ms: float, whole_path: bool, threads: int, requests: int
) -> dict[str, Any]:
    settings = Settings(device=device, batch_max_size=batch, batch_max_delay_ms=delay_ms)
    registry = loaded_registry(settings)
    model = registry.get("unet-isbi")
    data = SAMPLE["unet-isbi"].read_bytes()
    pixels = sample_pixels("unet-isbi", 1)
    in_runs = [0.0]
    batcher = model.batcher
    if batcher is not None:
        run = batcher.run

        def timed(output: str, x: np.ndarray) -> np.ndarray:
            started = time.perf_counter()
            try:
                return run(output, x)
            finally:
                in_runs[0] += time.perf_counter() - started

        batcher.run = timed

    def job(_: int) -> object:
        if whole_path:
            whole = Limits(settings.max_pixels, settings.max_pixels, settings.max_answer_bytes)
            return segment_file(model, data, PNG_OUT, whole)
        return segment(model, pixels)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(job, range(4 * threads)))  # warm up: the batch shapes' first runs
        if batcher is not None:
            batcher.batches = batcher.rows = 0
            in_runs[0] = 0.0
        started = time.perf_counter()
        list(pool.map(job, range(requests)))
        elapsed = time.perf_counter() - started
    registry.close()
    return {
        "batch": batch, "delay_ms": delay_ms, "whole_path": whole_path,
        "rps": round(requests / elapsed, 1),
        "batches": batcher.batches if batcher else None,
        "mean_requests_per_batch": round(batcher.rows / batcher.batches, 2) if batcher else None,
        "share_in_runs": round(in_runs[0] / elapsed, 2) if batcher else None,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=Device, default=Device.cpu)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    for whole_path in (False, True):
        for batch, delay_ms in ((1, 2.0), (8, 2.0), (8, 0.5)):
            row = probe(args.device, batch, delay_ms, whole_path, args.threads, args.requests)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
