"""segserve benchmark: raw onnxruntime vs the service, on the shipped models and real images.

    .venv/bin/python -m bench.benchmark [--model-dir app/shipped_models] [--quick]

In one run (the machines are noisy: compare ratios, not absolute numbers across runs):
raw `InferenceSession.run` on the preprocessed tensor (the floor), the in-process pipeline
(decode, infer, encode), HTTP end to end against a real `segserve serve` process (p50/p95,
throughput at concurrency 1, 2, 4, 8, peak RSS), a 4096 x 4096 EM mosaic tiled against raw
onnxruntime on the same tiles, peak RSS for 2048/4096/8192 squares in fresh processes, and
a naive baseline (plain FastAPI running the torch checkpoint eagerly per request, when
runs/<task>/best.pt exists). Writes bench/results/report.json and benchmark.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from app.config import SHIPPED_MODEL_DIR, Device, Settings
from app.inference.pipeline import model_input, padded_channels, preprocess
from app.inference.registry import ModelRegistry
from app.inference.runner import SessionRunner
from app.inference.tiling import choose_plan, segment_tiled, tile_starts
from app.service import Limits, segment_file
from bench.common import (
    PNG_OUT,
    ROOT,
    SAMPLE,
    em_mosaic,
    free_port,
    http_load,
    loaded_registry,
    peak_rss_mib,
    python,
    sample_pixels,
    serve_command,
    server,
    time_calls,
)

CONCURRENCY = (1, 2, 4, 8)
TARGETS = {"unet-isbi": 1.05, "dilated-camvid": 1.3}  # end-to-end p50 / raw p50


def raw_and_pipeline(registry: ModelRegistry, name: str, repeats: int) -> dict[str, Any]:
    model = registry.get(name)
    data = SAMPLE[name].read_bytes()
    pixels = sample_pixels(name, model.spec.input_channels)
    x = preprocess(pixels, model.spec)
    session, spec = model.session, model.spec
    raw = time_calls(lambda: session.run([spec.labels_output], {spec.input_name: x}), repeats)
    settings: Settings = registry.settings
    pipeline = time_calls(
        lambda: segment_file(model, data, PNG_OUT, Limits.from_settings(settings)),
        repeats,
    )
    return {"image": f"{pixels.shape[1]}x{pixels.shape[0]}", "raw": raw, "pipeline": pipeline}


def tiled_vs_raw(registry: ModelRegistry, side: int) -> dict[str, Any]:
    """px/s of the tiled pipeline vs session.run on the very same tile batches."""
    model = registry.get("unet-isbi")
    spec, session = model.spec, model.session
    pixels = em_mosaic(side)
    plan = choose_plan(spec, side, side, 0, batch=model.tile_batch)  # force tiling
    assert plan is not None
    segment_tiled(model, pixels, plan)  # warm: first runs of this batch shape
    started = time.perf_counter()
    result = segment_tiled(model, pixels, plan)
    tiled_s = time.perf_counter() - started
    x = model_input(padded_channels(pixels, spec), spec)  # the whole mosaic, as raw input
    starts = tile_starts(side, plan.size, plan.overlap)
    tiles = [
        np.ascontiguousarray(x[:, y : y + plan.size, x0 : x0 + plan.size])
        for y in starts
        for x0 in starts
    ]
    tiles += [tiles[0]] * (-len(tiles) % plan.batch)  # the service pads its last batch too
    raw_s = 0.0
    for first in tqdm(range(0, len(tiles), plan.batch), desc=f"raw tiles {side}", leave=False):
        batch = np.stack(tiles[first : first + plan.batch])
        tick = time.perf_counter()
        session.run([spec.labels_output], {spec.input_name: batch})
        raw_s += time.perf_counter() - tick
    return {
        "side": side, "tile": plan.size, "overlap": plan.overlap, "batch": plan.batch,
        "tiles": result.tiles, "tiled_mpx_s": side * side / tiled_s / 1e6,
        "raw_mpx_s": side * side / raw_s / 1e6,
    }  # fmt: skip


def http(
    model_dir: Path, device: Device, totals: dict[str, int], env: dict[str, str] | None = None,
    concurrency: tuple[int, ...] = CONCURRENCY,
) -> dict[str, Any]:  # fmt: skip
    port = free_port()
    command = serve_command(port, model_dir, "--device", device.value)
    results: dict[str, Any] = {}
    env = {"SEG_LOG_LEVEL": "warning", **(env or {})}
    with server(command, port, env, "/health/ready") as process:
        for name, total in totals.items():
            url = f"http://127.0.0.1:{port}/v1/models/{name}/segment"
            body = SAMPLE[name].read_bytes()
            per: dict[str, Any] = {}
            for c in tqdm(concurrency, desc=f"http {name}", leave=False):
                stats, rps = http_load(url, body, total if c > 1 else total // 2, c)
                per[str(c)] = {"latency": stats, "rps": rps}
            results[name] = per
        results["peak_rss_mib"] = peak_rss_mib(process.pid)
    return results


def batching(model_dir: Path, device: Device, totals: dict[str, int]) -> dict[str, Any]:
    """Throughput at concurrency 8 and 16 with dynamic batching off and on (at most 8), the
    same number of worker threads either way."""
    runs = {}
    for label, size in (("off", "1"), ("on", "8")):
        env = {"SEG_BATCH_MAX_SIZE": size, "SEG_WORKERS": "16"}
        runs[label] = http(model_dir, device, totals, env, concurrency=(8, 16))
    return runs


def io_binding(registry: ModelRegistry, repeats: int) -> dict[str, Any]:
    """Raw session time through a plain `run` vs IO binding, batch 1 and 8 (CUDA only)."""
    rows: dict[str, Any] = {}
    for name in TARGETS:
        model = registry.get(name)
        assert model.spec.labels_output
        one = preprocess(sample_pixels(name, model.spec.input_channels), model.spec)
        for n in (1, 8):
            x = np.ascontiguousarray(np.repeat(one, n, axis=0))
            for bind_on in (None, "cuda"):
                run = SessionRunner(model.session, model.spec.input_name, bind_on)
                key = f"{name} batch {n} {'io_binding' if bind_on else 'run'}"
                rows[key] = time_calls(partial(run, model.spec.labels_output, x), repeats)
    return rows


def algo_search(model_dir: Path, repeats: int) -> dict[str, Any]:
    """cuDNN algorithm search modes: first run of a new input shape, then steady p50."""
    rows: dict[str, Any] = {}
    for mode in ("EXHAUSTIVE", "HEURISTIC"):
        registry = loaded_registry(
            Settings(model_dir=model_dir, device=Device.cuda, cudnn_algo_search=mode)
        )
        for name in TARGETS:
            model = registry.get(name)
            x = preprocess(sample_pixels(name, model.spec.input_channels), model.spec)
            session, output = model.session, model.spec.labels_output
            feeds = {model.spec.input_name: x}
            tick = time.perf_counter()
            session.run([output], feeds)
            first_ms = (time.perf_counter() - tick) * 1000
            steady = time_calls(partial(session.run, [output], feeds), repeats)
            rows[f"{name} {mode}"] = {"first_ms": first_ms, "steady": steady}
        registry.close()
    return rows


def naive_torch(totals: dict[str, int], device: Device) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, total in totals.items():
        checkpoint = ROOT / "runs" / name / "best.pt"
        if not checkpoint.exists():
            continue
        port = free_port()
        command = [python(), "-m", "uvicorn", "bench.naive_torch_server:app", "--port", str(port),
                   "--log-level", "warning"]  # fmt: skip
        env = {"SEG_BENCH_CHECKPOINT": str(checkpoint), "SEG_BENCH_DEVICE": device.value}
        with server(command, port, env, "/ready") as process:
            url = f"http://127.0.0.1:{port}/segment"
            body = SAMPLE[name].read_bytes()
            one, rps1 = http_load(url, body, total // 2, 1)
            _, rps4 = http_load(url, body, total, 4)
            results[name] = {"latency": one, "rps_1": rps1, "rps_4": rps4,
                             "peak_rss_mib": peak_rss_mib(process.pid)}  # fmt: skip
    return results


def memory(model_dir: Path, device: Device, sides: list[int]) -> list[dict[str, Any]]:
    rows = []
    for side in tqdm(sides, desc="peak RSS", leave=False):
        out = subprocess.run(
            [python(), "-m", "bench.memory_probe", "--side", str(side), "--model-dir",
             str(model_dir), "--device", device.value],
            capture_output=True, text=True, cwd=ROOT, check=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return round(value, 4) if isinstance(value, float) else value


def summary(report: dict[str, Any]) -> list[str]:
    on = f"{report['gpu']}, " if "gpu" in report else ""
    lines = [f"segserve benchmark, {on}{report['cpu_count']} CPU cores, {report['device']}", ""]
    lines.append(
        "| model | image | raw ORT p50 | pipeline p50 | HTTP p50 / p95 (c=1) | HTTP / raw | "
        "target | rps c=1 / 2 / 4 / 8 | c=4 vs 1/raw | naive torch p50, rps c=4 |"
    )
    lines.append("|" + " --- |" * 10)
    for name, single in report["single"].items():
        raw = single["raw"].p50_ms
        h = report["http"][name]
        e2e = h["1"]["latency"]
        rps = " / ".join(f"{h[str(c)]['rps']:.2f}" for c in CONCURRENCY)
        naive = report["naive_torch"].get(name)
        naive_text = (f"{naive['latency'].p50_ms:.0f} ms, {naive['rps_4']:.2f}" if naive
                      else "not run (no checkpoint)")  # fmt: skip
        lines.append(
            f"| {name} | {single['image']} | {raw:.1f} ms | {single['pipeline'].p50_ms:.1f} ms | "
            f"{e2e.p50_ms:.1f} / {e2e.p95_ms:.1f} ms | {e2e.p50_ms / raw:.3f} | <= "
            f"{TARGETS[name]} | {rps} | {h['4']['rps'] * raw / 1000:.2f} | {naive_text} |"
        )
    t = report["tiled"]
    ratio = t["tiled_mpx_s"] / t["raw_mpx_s"]
    lines += ["", f"Tiled {t['side']}x{t['side']} EM mosaic ({t['tiles']} tiles of {t['tile']}, "
              f"overlap {t['overlap']}, {t.get('batch', 1)} per run): {t['tiled_mpx_s']:.3f} "
              f"Mpx/s vs raw onnxruntime on the same tiles {t['raw_mpx_s']:.3f} Mpx/s: "
              f"ratio {ratio:.3f} (target >= 0.9)", "",
              f"Server peak RSS after the HTTP runs: {report['http']['peak_rss_mib']:.0f} MiB", "",
              "| image (U-Net, PNG in, PNG out) | tiles | seconds | peak RSS |",
              "| --- | --- | --- | --- |"]  # fmt: skip
    for row in report["memory"]:
        lines.append(f"| {row['side']} x {row['side']} | {row['tiles']} | {row['seconds']} | "
                     f"{row['peak_rss_mib']:.0f} MiB |")  # fmt: skip
    b = report["batching"]
    lines += ["", "Dynamic batching (SEG_WORKERS=16): requests/s, SEG_BATCH_MAX_SIZE 1 -> 8:",
              "", "| model | c=8 | c=16 | p50 at c=16 |", "| --- | --- | --- | --- |"]  # fmt: skip
    for name in report["single"]:
        off, on_ = b["off"][name], b["on"][name]
        cells = [
            f"{off[c]['rps']:.2f} -> {on_[c]['rps']:.2f} ({on_[c]['rps'] / off[c]['rps']:.2f}x)"
            for c in ("8", "16")
        ]
        p50 = f"{off['16']['latency'].p50_ms:.0f} -> {on_['16']['latency'].p50_ms:.0f} ms"
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {p50} |")
    if "io_binding" in report:
        lines += ["", "| raw session (labels output) | p50 |", "| --- | --- |"]
        for key, stats in report["io_binding"].items():
            lines.append(f"| {key} | {stats.p50_ms:.2f} ms |")
        lines += ["", "| cuDNN algorithm search | first run of a new shape | then p50 |",
                  "| --- | --- | --- |"]  # fmt: skip
        for key, row in report["algo_search"].items():
            lines.append(f"| {key} | {row['first_ms']:.1f} ms | {row['steady'].p50_ms:.2f} ms |")
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=80)
    names = list(report["single"])
    kinds = ["raw ORT", "pipeline", "HTTP", "naive torch"]
    for i, name in enumerate(names):
        naive = report["naive_torch"].get(name)
        values = [report["single"][name]["raw"].p50_ms, report["single"][name]["pipeline"].p50_ms,
                  report["http"][name]["1"]["latency"].p50_ms,
                  naive["latency"].p50_ms if naive else 0]  # fmt: skip
        left.bar(np.arange(4) + i * 0.4, values, width=0.4, label=name)
    left.set_xticks(np.arange(4) + 0.2, kinds)
    left.set_ylabel("p50 latency, ms (one request)")
    left.legend()
    for name in names:
        h = report["http"][name]
        right.plot(CONCURRENCY, [h[str(c)]["rps"] for c in CONCURRENCY], "o-", label=name)
        raw = report["single"][name]["raw"].p50_ms
        right.axhline(1000 / raw, ls="--", lw=0.8, color=right.lines[-1].get_color())
    right.set_xlabel("concurrent requests")
    right.set_ylabel("requests / s (dashed: 1 / raw latency)")
    right.set_xticks(CONCURRENCY)
    right.legend()
    where = report.get("gpu", f"{report['cpu_count']} CPU cores")
    fig.suptitle(f"segserve on {where} ({report['device']})")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=SHIPPED_MODEL_DIR)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--device", type=Device, default=Device.cpu, help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="fewer requests, no 8192 square")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies request counts")
    args = parser.parse_args()
    repeats = int((10 if args.quick else 30) * args.scale)
    base = {"unet-isbi": 16, "dilated-camvid": 24} if args.quick else {
        "unet-isbi": 40, "dilated-camvid": 60}  # fmt: skip
    totals = {name: int(n * args.scale) for name, n in base.items()}
    registry = loaded_registry(Settings(model_dir=args.model_dir, device=args.device))
    providers = registry.get("unet-isbi").providers
    report: dict[str, Any] = {"cpu_count": os.cpu_count(), "device": providers[0]}
    if args.device is Device.cuda:
        report["gpu"] = gpu_name()
        report["io_binding"] = io_binding(registry, repeats)
        report["algo_search"] = algo_search(args.model_dir, repeats)
    report["single"] = {n: raw_and_pipeline(registry, n, repeats) for n in TARGETS}
    report["tiled"] = tiled_vs_raw(registry, 2048 if args.quick else 4096)
    registry.close()
    del registry  # its sessions' memory and threads must not count against the servers
    report["http"] = http(args.model_dir, args.device, totals)
    report["batching"] = batching(args.model_dir, args.device, totals)
    report["naive_torch"] = naive_torch(totals, args.device)
    report["memory"] = memory(args.model_dir, args.device,
                              [2048, 4096] + ([] if args.quick else [8192]))  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    lines = summary(report)
    print("\n".join(lines))
    (args.out / "report.json").write_text(json.dumps(plain(report), indent=1))
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(report, args.out / "benchmark.png")
    print(f"\nwrote {args.out}/report.json, summary.md and benchmark.png")


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown GPU"
    return out.stdout.strip().splitlines()[0]


if __name__ == "__main__":
    main()
