"""A huge EM montage as a job: BigTIFF in, tiled BigTIFF out, region by region (issue 18).

    .venv/bin/python -m bench.tiff_job [--side 32768] [--out bench/results/tiff_job.json]

Writes a side x side BigTIFF montage of the shared ISBI slices (tiled 512, deflate; built
tile by tile, never whole), submits it to a real `segserve serve` (shipped models, CPU) as
a job, follows its progress, and reports the elapsed time, pixels per second, the server's
peak RSS and the result's check (opens in tifffile and Pillow, colour map, class share).
For the throughput ratio, the same server runs the synchronous in-memory tiled path on a
montage of the same slices (the job's side, at most 8192) before and after the job, and the
job's time is the server's own (started to finished); the machines are noisy, so the
reference is the mean of the two.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import tifffile
from tqdm import tqdm

from app.config import SHIPPED_MODEL_DIR
from app.imaging.tiff_regions import TiffRegions
from bench.common import em_mosaic, free_port, peak_rss_mib, png, rss_mib, serve_command, server


def write_montage(path: Path, side: int, tile: int = 512) -> None:
    """A side x side BigTIFF of ISBI slices (as em_mosaic lays them), tile by tile."""
    block = em_mosaic(2048)  # 4 x 4 slices, repeated across the montage

    def tiles() -> Iterator[np.ndarray]:
        for top in range(0, side, tile):
            for left in range(0, side, tile):
                y, x = top % 2048, left % 2048
                yield np.ascontiguousarray(block[y : y + tile, x : x + tile])

    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        writer.write(
            tiles(),
            shape=(side, side),
            dtype=np.uint8,
            tile=(tile, tile),
            compression="zlib",
            photometric="minisblack",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=32768)
    parser.add_argument("--out", type=Path, default=Path("bench/results/tiff_job.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tiff-job-"))
    montage = work / "montage.tif"
    started = time.perf_counter()
    write_montage(montage, args.side)
    print(
        f"montage {args.side}^2: {montage.stat().st_size / 2**20:.0f} MiB in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = serve_command(port, SHIPPED_MODEL_DIR)
    env = {
        "SEG_DEVICE": "cpu",
        "SEG_LOG_LEVEL": "warning",
        "SEG_JOB_DIR": str(work / "jobs"),
        "SEG_REQUEST_TIMEOUT_S": "3600",
        "SEG_MAX_UPLOAD_BYTES": str(256 * 2**20),  # the in-memory reference's PNG
    }
    with (
        server(command, port, env, "/health/ready") as process,
        httpx.Client(base_url=base, timeout=3600) as client,
    ):
        side = min(args.side, 8192)
        reference = png(em_mosaic(side))

        def in_memory() -> float:
            tick = time.perf_counter()
            sync = client.post(
                "/v1/models/unet-isbi/segment",
                content=reference,
                headers={"content-type": "image/png"},
            )
            sync.raise_for_status()
            rate = float(side**2 / (time.perf_counter() - tick) / 1e6)
            print(f"in-memory tiled path, {side}^2: {rate:.3f} Mpx/s", flush=True)
            return rate

        before = in_memory()
        rss_before = rss_mib(process.pid)
        Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # peak RSS from here on
        with open(montage, "rb") as body:
            submitted = client.post(
                "/v1/models/unet-isbi/jobs", content=body, headers={"content-type": "image/tiff"}
            )
        submitted.raise_for_status()
        location = submitted.headers["Location"]
        with tqdm(total=None, unit="tile", desc="job") as bar:
            while True:
                state = client.get(location).json()
                if bar.total is None and state["tiles_total"]:
                    bar.total = state["tiles_total"]
                bar.n = state["tiles_done"]
                bar.refresh()
                if state["state"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(2)
        elapsed = float(state["elapsed_s"])  # the server's own, started to finished
        peak = peak_rss_mib(process.pid)
        after = in_memory()
        sync_mpx_s = (before + after) / 2
        result = work / "map.tif"
        with (
            client.stream("GET", f"{location}/result?format=tiff") as response,
            open(result, "wb") as out,
        ):
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
    with tifffile.TiffFile(result) as tif:
        page = tif.pages[0]
        assert isinstance(page, tifffile.TiffPage)
        opened = {
            "bigtiff": tif.is_bigtiff,
            "tiled": page.is_tiled,
            "colormap": page.colormap is not None,
            "shape": list(page.shape),
        }
    regions = TiffRegions(result)  # a corner, read the way the service reads TIFF
    membrane = float(np.mean(regions.read(0, 4096, 0, 4096) == 0))
    regions.close()
    job_mpx_s = args.side**2 / elapsed / 1e6
    report = {
        "side": args.side,
        "state": state["state"],
        "tiles": state["tiles_total"],
        "seconds": round(elapsed, 1),
        "job_mpx_per_s": round(job_mpx_s, 3),
        "in_memory_tiled_mpx_per_s": round(sync_mpx_s, 3),
        "in_memory_before_after": [round(before, 3), round(after, 3)],
        "ratio_job_to_in_memory": round(job_mpx_s / sync_mpx_s, 3),
        "server_rss_before_mib": round(rss_before, 1),
        "server_peak_rss_mib": round(peak, 1),
        "input_mib": round(montage.stat().st_size / 2**20, 1),
        "result_mib": round(result.stat().st_size / 2**20, 1),
        "result": opened,
        "membrane_share_first_4096": round(membrane, 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
