"""segserve against its peers: raw onnxruntime, segserve (FP32 and its default precision),
BentoML 1.4 and LitServe 0.2 on the same shipped models and images.

    bash scripts/bench_env.sh     # once: BentoML and LitServe in their own .venv-bench
    .venv/bin/python -m bench.peers_benchmark [--quick] [--rounds 2] [--threads 2]

Every server runs alone (started, its answer checked against raw onnxruntime's class map,
warmed, measured, stopped), in an order reversed every other round; each gets a multipart
PNG upload (field `image`) and answers a palette PNG. onnxruntime gets the same number of
intra-op threads everywhere. The peers always serve the FP32 file (`NAME.onnx`); segserve
is measured with SEG_PRECISION=fp32 (the same file) and with its default (`auto`: the INT8
variant on the CPU provider, FP16 on CUDA, when shipped). Writes bench/results/peers.json
and peers.png, prints the markdown table of the README. Compare ratios, not absolute
numbers across runs: they move with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.config import SHIPPED_MODEL_DIR, Device, Settings
from bench.common import CAMVID_FRAME, DATA, ROOT, Stats, free_port, serve_command, time_calls
from bench.peers.common import ENV_DEVICE, ENV_MODEL, ENV_THREADS, load_model, predict, to_input
from bench.peers.harness import FULL, QUICK, Counts, Server, measure_server
from bench.peers_report import PEERS, markdown, plain, plot, summarise

IMAGES = {"unet-isbi": DATA / "isbi2012" / "images" / "20.png", "dilated-camvid": CAMVID_FRAME}
SERVERS = ("segserve-fp32", "segserve", *PEERS)
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"


@dataclass
class Run:
    """One server's measurements, pooled over the rounds."""

    precision: str
    latencies: list[float] = field(default_factory=list)  # c=1, seconds
    requests: dict[int, int] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)


def variant(model_dir: Path, name: str, precision: str) -> Path:
    """The flat file of a model's variant: NAME.onnx (FP32), NAME.int8.onnx, NAME.fp16.onnx."""
    return model_dir / (f"{name}.onnx" if precision == "fp32" else f"{name}.{precision}.onnx")


def default_precision(model_dir: Path, name: str, device: Device) -> str | None:
    """What segserve's SEG_PRECISION=auto serves (INT8 on the CPU provider, FP16 on CUDA,
    when that file is there, else FP32); None while segserve has no precision setting."""
    if "precision" not in Settings.model_fields:
        return None
    wanted = "fp16" if device is Device.cuda else "int8"
    return wanted if variant(model_dir, name, wanted).exists() else "fp32"


def servers(
    name: str,
    model_dir: Path,
    device: Device,
    threads: int,
    port: int,
    default: str | None,
    peers_python: Path,
) -> dict[str, Server]:
    seg_env = {"SEG_INTRA_OP_THREADS": str(threads), "SEG_LOG_LEVEL": "warning"}
    seg = serve_command(port, model_dir, "--device", device.value)
    segment = f"/v1/models/{name}/segment"
    peer_env = {
        ENV_MODEL: str(variant(model_dir, name, "fp32")),
        ENV_THREADS: str(threads),
        ENV_DEVICE: device.value,
        "BENTOML_DO_NOT_TRACK": "true",
    }
    bento = [
        str(peers_python),
        "-m",
        "bentoml",
        "serve",
        "bench.peers.bento_service:PeerSegmenter",
        "--port",
        str(port),
    ]
    lit = [str(peers_python), "-m", "bench.peers.litserve_service", "--port", str(port)]
    return {
        "segserve-fp32": Server(
            "segserve-fp32",
            seg,
            {**seg_env, "SEG_PRECISION": "fp32"},
            "/health/ready",
            segment,
            "fp32",
        ),
        "segserve": Server("segserve", seg, seg_env, "/health/ready", segment, default or "fp32"),
        "bentoml": Server("bentoml", bento, peer_env, "/readyz", "/segment", "fp32"),
        "litserve": Server("litserve", lit, peer_env, "/health", "/predict", "fp32"),
    }


def raw(
    model_file: Path, pixels: np.ndarray, threads: int, device: Device, repeats: int, batch: int = 1
) -> tuple[Stats, np.ndarray]:
    """`session.run` of the argmax output on the preprocessed image: the floor every server
    pays, the faster of onnxruntime's default session (the peers') and one whose idle
    threads do not spin (segserve's); and the class map every server must answer."""
    best: Stats | None = None
    for spinning in (True, False):
        model = load_model(model_file, threads, device.value, spinning=spinning)
        spec = model.spec
        x = np.ascontiguousarray(np.repeat(to_input(pixels, spec), batch, axis=0))
        run = partial(model.session.run, [spec.labels_output], {spec.input_name: x})
        stats = time_calls(run, repeats)
        best = stats if best is None or stats.p50_ms < best.p50_ms else best
    assert best is not None
    return best, predict(model, pixels)


def run(
    model_dir: Path,
    images: dict[str, Path],
    labels: list[str],
    device: Device,
    threads: int,
    rounds: int,
    counts: Counts,
    concurrency: tuple[int, ...],
    peers_python: Path = BENCH_PYTHON,
    logs: Path | None = None,
) -> dict[str, Any]:
    """The whole comparison; the report's `skipped` says why a server was left out."""
    skipped: dict[str, str] = {}
    if not peers_python.exists():
        for peer in PEERS:
            if peer in labels:
                skipped[peer] = f"{peers_python} is missing: run scripts/bench_env.sh"
    if "precision" not in Settings.model_fields and "segserve" in labels:
        skipped["segserve"] = (
            "segserve has no SEG_PRECISION setting yet: its default is the FP32 row"
        )
    logs = logs or Path(tempfile.mkdtemp(prefix="peers-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"server logs: {logs}", flush=True)
    models: dict[str, Any] = {}
    pixels_of: dict[str, np.ndarray] = {}
    for name, image in images.items():
        default = default_precision(model_dir, name, device)
        here = {}
        if default == "fp32" and "segserve" in labels:
            here["segserve"] = (
                f"no variant for SEG_PRECISION=auto is shipped for {name}: segserve's default is "
                "the FP32 row"
            )
        channels = load_model(variant(model_dir, name, "fp32"), 1).spec.input_channels
        pixels = pixels_of[name] = np.asarray(
            Image.open(image).convert("L" if channels == 1 else "RGB")
        )
        precisions = ["fp32"] + ([default] if default not in (None, "fp32") else [])
        models[name] = {
            "image": f"{pixels.shape[1]}x{pixels.shape[0]}",
            "file": image.name,
            "default_precision": default,
            "raw": {p: [] for p in precisions},
            "runs": {},
            "active": [label for label in labels if label not in skipped | here],
            "skipped": here,
        }
        if device is Device.cuda:
            models[name]["raw_batch8"] = {p: [] for p in precisions}
    for r in range(rounds):
        for name, image in images.items():
            entry, pixels = models[name], pixels_of[name]
            order = entry["active"] if r % 2 == 0 else entry["active"][::-1]
            expected = {}
            for precision in entry["raw"]:
                stats, expected[precision] = raw(
                    variant(model_dir, name, precision), pixels, threads, device, counts.single
                )
                entry["raw"][precision].append(stats)
                if device is Device.cuda:
                    batch8, _ = raw(
                        variant(model_dir, name, precision),
                        pixels,
                        threads,
                        device,
                        counts.single,
                        batch=8,
                    )
                    entry["raw_batch8"][precision].append(batch8)
            for label in order:
                port = free_port()
                server = servers(
                    name, model_dir, device, threads, port, entry["default_precision"], peers_python
                )[label]
                print(f"round {r + 1}/{rounds}: {name} on {label} ({server.precision})", flush=True)
                measured = measure_server(
                    server,
                    image,
                    expected[server.precision],
                    counts,
                    concurrency,
                    port,
                    logs / f"{label}-{name}-{r}.log",
                )
                runs = entry["runs"].setdefault(label, Run(server.precision))
                runs.latencies += measured["latencies"]
                for c in concurrency:
                    runs.requests[c] = runs.requests.get(c, 0) + measured["requests"][c]
                    runs.seconds[c] = runs.seconds.get(c, 0.0) + measured["seconds"][c]
                runs.rounds.append(
                    {
                        "round": r,
                        "p50_ms": Stats.of(measured["latencies"]).p50_ms,
                        "rps": {
                            c: measured["requests"][c] / measured["seconds"][c] for c in concurrency
                        },
                    }
                )
    return summarise(models, skipped, device, threads, rounds, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=SHIPPED_MODEL_DIR)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--device", type=Device, default=Device.cpu, help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--rounds", type=int, help="default 2 (quick: 1)")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    parser.add_argument("--quick", action="store_true", help="a few requests: a smoke test")
    args = parser.parse_args()
    labels = [s for s in args.servers.split(",") if s]
    unknown = set(labels) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    gpu = args.device is Device.cuda
    concurrency = (1, 4, 8, 16, 32) if gpu else (1, 4, 8)
    rounds = args.rounds or (1 if args.quick else 2)
    report = run(
        args.model_dir,
        IMAGES,
        labels,
        args.device,
        args.threads,
        rounds,
        QUICK if args.quick else FULL,
        concurrency,
    )
    report["quick"] = args.quick
    lines = markdown(report)
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (args.out / f"peers{suffix}.json").write_text(json.dumps(plain(report), indent=1))
    plot(report, args.out / f"peers{suffix}.png")
    print(f"\nwrote {args.out}/peers{suffix}.json and peers{suffix}.png")


if __name__ == "__main__":
    main()
