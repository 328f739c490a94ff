"""Throughput of one worker process against several (SEG_PROCESSES) on this machine.

    .venv/bin/python -m bench.processes_benchmark [--model dilated-camvid] [--processes 1 2]
        [--concurrency 4] [--requests 200] [--rounds 2] [--device cpu]
        [--out bench/results/processes.json]

On a GPU host: `--device cuda --processes 1 2 4 8 --concurrency 32 --requests 2000`.

Each round starts `segserve serve` once per process count, in alternating order, posts the
model's sample image (a CamVid frame or an ISBI slice, as PNG) `--requests` times,
`--concurrency` at once over kept-alive connections, and reads the requests each worker
answered from the server's log. SEG_INTRA_OP_THREADS is left to its default: the CPU count
for one process, divided among several. Prints requests/s, p50 and p95 per setting, the
best of the rounds, and each setting's ratio to the first, measured in this one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from app.config import SHIPPED_MODEL_DIR
from bench.common import SAMPLE, free_port, http_load, serve_command


@contextlib.contextmanager
def served(processes: int, model_dir: Path, device: str) -> Iterator[tuple[str, Any]]:
    """`segserve serve` with SEG_PROCESSES=`processes`; yields (base URL, log file)."""
    port = free_port()
    env = {**os.environ, "SEG_PROCESSES": str(processes), "SEG_DEVICE": device}
    env.pop("SEG_INTRA_OP_THREADS", None)
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(serve_command(port, model_dir), env=env, stdout=log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited:\n{log_text(log)}")
                with contextlib.suppress(httpx.TransportError):
                    ready = httpx.get(f"{base}/health/ready", timeout=2).status_code == 200
                    if ready and workers_serving(log) >= processes:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the server never became ready")
                time.sleep(0.3)
            yield base, log
        finally:
            process.terminate()
            process.wait(timeout=60)


def log_text(log: Any) -> str:
    """What the server logged so far, read without moving the offset it writes at."""
    chunks, offset = [], 0
    while chunk := os.pread(log.fileno(), 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).decode(errors="replace")


def workers_serving(log: Any) -> int:
    """Workers taking connections, as the supervisor logs them (1 without a supervisor)."""
    lines = log_text(log).splitlines()
    serving = [line for line in lines if '"segserve.processes"' in line and ") serving" in line]
    return max(1, len(serving))


def answers_per_worker(log: Any) -> list[int]:
    """How many segment requests each worker answered (from the log's `pid` fields)."""
    counts: Counter[int] = Counter()
    for line in log_text(log).splitlines():
        if line.startswith("{") and '"route": "/v1/models/{name}/segment"' in line:
            counts[json.loads(line).get("pid", 0)] += 1
    return sorted(counts.values(), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dilated-camvid", choices=sorted(SAMPLE))
    parser.add_argument("--model-dir", type=Path, default=SHIPPED_MODEL_DIR)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    body = Path(SAMPLE[args.model]).read_bytes()
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.processes}
    for round_ in range(args.rounds):
        order = args.processes if round_ % 2 == 0 else args.processes[::-1]
        for n in order:
            with served(n, args.model_dir, args.device) as (base, log):
                url = f"{base}/v1/models/{args.model}/segment"
                stats, rate = http_load(url, body, args.requests, args.concurrency)
                run = {"round": round_, "req_per_s": round(rate, 2),
                       "p50_ms": round(stats.p50_ms, 1), "p95_ms": round(stats.p95_ms, 1),
                       "answers_per_worker": answers_per_worker(log)}  # fmt: skip
            runs[n].append(run)
            print(json.dumps({"processes": n, **run}), flush=True)
    best = {n: max(r["req_per_s"] for r in rs) for n, rs in runs.items()}
    first = args.processes[0]
    summary = {
        "model": args.model,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "cores": os.cpu_count(),
        "device": args.device,
        "runs": {str(n): rs for n, rs in runs.items()},
        "best_req_per_s": {str(n): v for n, v in best.items()},
        "ratio_to_first": {str(n): round(v / best[first], 3) for n, v in best.items()},
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
