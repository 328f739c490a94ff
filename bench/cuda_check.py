"""The CUDA path, checked on a machine with a GPU (not a test: CI has none).

    python -m bench.cuda_check [--model-dir app/shipped_models]

Loads every shipped model with SEG_DEVICE=cuda and with SEG_DEVICE=cpu, reports the
providers each session really got, and compares the class maps of the benchmark's real
images (one pass and tiled) between the two; then starts the real server with
SEG_DEVICE=cuda and reads the provider it reports in /v1/models and in the response
headers. Prints one JSON object; exits 1 when CUDA was not really used or maps disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.config import SHIPPED_MODEL_DIR, Device, Settings
from app.inference.pipeline import segment
from app.inference.session import CUDA
from app.inference.tiling import choose_plan, segment_tiled
from bench.common import (
    SAMPLE,
    em_mosaic,
    free_port,
    loaded_registry,
    sample_pixels,
    serve_command,
    server,
)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def compare(model_dir: Path) -> dict[str, Any]:
    cuda = loaded_registry(Settings(model_dir=model_dir, device=Device.cuda))
    cpu = loaded_registry(Settings(model_dir=model_dir, device=Device.cpu))
    report: dict[str, Any] = {
        "models": {
            e.file: {"state": e.state.value, "reason": e.reason, "providers": e.providers}
            for e in cuda.statuses
        },
    }
    if not cuda.ready:  # no CUDA here: the reasons above say why; nothing to compare
        cuda.close()
        cpu.close()
        return report
    for name in SAMPLE:
        on_gpu, on_cpu = cuda.get(name), cpu.get(name)
        pixels = sample_pixels(name, on_gpu.spec.input_channels)
        report[f"{name} one pass agreement"] = agreement(
            segment(on_gpu, pixels).labels, segment(on_cpu, pixels).labels
        )
    mosaic = em_mosaic(2048)
    unet_gpu, unet_cpu = cuda.get("unet-isbi"), cpu.get("unet-isbi")
    plan = choose_plan(unet_gpu.spec, 2048, 2048, 0)
    assert plan is not None
    report["unet-isbi tiled 2048 agreement"] = agreement(
        segment_tiled(unet_gpu, mosaic, plan).labels, segment_tiled(unet_cpu, mosaic, plan).labels
    )
    cuda.close()
    cpu.close()
    return report


def served(model_dir: Path) -> dict[str, Any]:
    port = free_port()
    command = serve_command(port, model_dir, "--device", "cuda")
    with server(command, port, {"SEG_LOG_LEVEL": "warning"}, "/health/ready"):
        base = f"http://127.0.0.1:{port}"
        listed = httpx.get(f"{base}/v1/models").json()
        answer = httpx.post(
            f"{base}/v1/models/unet-isbi/segment",
            content=SAMPLE["unet-isbi"].read_bytes(),
            headers={"content-type": "image/png"},
            timeout=60,
        )
        return {
            "listed": listed,
            "status": answer.status_code,
            "headers": {k: v for k, v in answer.headers.items() if k.startswith("x-")},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=SHIPPED_MODEL_DIR)
    args = parser.parse_args()
    report = compare(args.model_dir)
    on_cuda = all(m["providers"][:1] == [CUDA] for m in report["models"].values())
    if on_cuda:
        report["server"] = served(args.model_dir)
    print(json.dumps(report, indent=1))
    agreeing = all(v >= 0.999 for k, v in report.items() if k.endswith("agreement"))
    sys.exit(0 if on_cuda and agreeing else 1)


if __name__ == "__main__":
    main()
