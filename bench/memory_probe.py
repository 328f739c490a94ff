"""Peak memory of one large image through the service's own code path, in a fresh process:
`python -m bench.memory_probe --side 8192 --model-dir app/shipped_models` prints JSON."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from app.config import Device, Settings
from app.service import Limits, segment_file
from bench.common import PNG_OUT, em_mosaic, loaded_registry, peak_rss_mib, png


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--device", type=Device, default=Device.cpu)
    args = parser.parse_args()

    settings = Settings(model_dir=args.model_dir, device=args.device)
    registry = loaded_registry(settings)
    model = registry.get("unet-isbi")
    body = png(em_mosaic(args.side))
    baseline = peak_rss_mib(os.getpid())
    started = time.perf_counter()
    tiles = segment_file(model, body, PNG_OUT, Limits.from_settings(settings)).tiles
    elapsed = time.perf_counter() - started
    print(json.dumps({
        "side": args.side, "tiles": tiles, "seconds": round(elapsed, 2),
        "megapixels_per_s": round(args.side**2 / elapsed / 1e6, 3),
        "rss_before_mib": round(baseline, 1), "peak_rss_mib": round(peak_rss_mib(os.getpid()), 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
