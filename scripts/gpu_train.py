"""Train both models side by side on one GPU, export them, and pack the results.

Made for one call of the device tool (README "Training"): `scripts/gpu_train.sh` runs
`python3 scripts/gpu_train.py --data-root pack --out $OUT --minutes 5`. Each job is a
`python -m models.train` process of its own (the GPU has room for all of them), with
its training set on the GPU and augmented there (`--gpu-augment`; `--cpu-augment`
switches to DataLoader workers, the cores split among the jobs):

- `unet`: U-Net, base width 32 (the paper's 64 would make a 124 MB ONNX file, over the
  32 MiB a shipped model may weigh), the paper's border weights, elastic augmentation.
- `camvid-holdout`: the dilated network with a residual (DRN-C style) front-end, median
  frequency balancing, trained on train+val without sequence 0006R0 and validated on
  it: the recipe's generalisation figure.
- `camvid-final`: the same recipe on all of train+val (the model to ship).

Each job has `--minutes` of training time, then validates and keeps its best (for the
final fit: last) checkpoint. A job still running at the deadline is stopped; the
checkpoint of its last validation stays. Then every job's best checkpoint is exported
to ONNX and checked against torch (export/onnx_export.py, export/parity.py), and $OUT
receives at most 8 files, none over 15 MiB: `summary.json`, `logs.tar.gz` (logs,
histories, curves, parity reports) and `weights.tar.NN` (the checkpoints of the models
to ship, split; rejoin with `cat weights.tar.* | tar x`). The ONNX files with metadata
and model card are made afterwards from those checkpoints with `python -m export`.

`--tiny` shrinks networks, crops and steps for a CPU rehearsal of the whole path.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PART_BYTES = 15 * 2**20  # the device tool returns files of at most 16 MiB
MAX_FILES = 8

CAMVID = {
    "task": "dilated-camvid",
    "arch-options": json.dumps({"widths": [64, 128, 256], "residual": True}),
    "class-balance": "median",
    "batch-size": 16,
    "crop": 320,
    "lr": 2e-3,
    "weight-decay": 1e-4,
    "warmup-steps": 200,
    "steps-per-epoch": 250,
    "val-every": 4,
    "ema": 0.999,
}
JOBS: dict[str, dict[str, Any]] = {
    "unet": {
        "task": "unet-isbi",
        "arch-options": json.dumps({"base_width": 32}),
        "border-weights": True,
        "batch-size": 16,
        "crop": 256,
        "lr": 1e-3,
        "weight-decay": 1e-4,
        "warmup-steps": 200,
        "steps-per-epoch": 250,
        "val-every": 4,
        "val-views": 8,
        "ema": 0.999,
        "ship": True,
    },
    "camvid-holdout": {**CAMVID, "holdout": "0006R0", "ship": False},
    "camvid-final": {**CAMVID, "trainval": True, "ship": True},
}
TINY = {
    "unet": {"arch-options": json.dumps({"base_width": 4, "depth": 2}), "border-weights": False},
    "dilated-camvid": {"arch-options": json.dumps({"widths": [4, 8, 8], "residual": True})},
    "common": {
        "batch-size": 2,
        "crop": 64,
        "steps-per-epoch": 2,
        "warmup-steps": 1,
        "val-every": 1,
        "val-views": 1,
        "epochs": 2,
    },
}


def job_args(name: str, spec: dict[str, Any], args: argparse.Namespace) -> list[str]:
    options = {k: v for k, v in spec.items() if k != "ship"}
    options.update(
        {
            "epochs": 100000,
            "minutes": args.minutes,
            "workers": args.workers,
            "threads": 2,
            "data-root": str(args.data_root),
            "out-dir": str(args.work / name),
            "ckpt-every": 500,
            "gpu-augment": not args.cpu_augment,
        }
    )
    if args.tiny:
        options.update(TINY["unet" if spec["task"] == "unet-isbi" else "dilated-camvid"])
        options.update(TINY["common"])
    argv = []
    for key, value in options.items():
        if value is True:
            argv.append(f"--{key}")
        elif value is False:
            argv.append(f"--no-{key}")
        else:
            argv += [f"--{key}", str(value)]
    return argv


def run_jobs(names: list[str], args: argparse.Namespace) -> dict[str, int | None]:
    """Start every job, wait up to the deadline, stop what still runs; exit codes."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    procs = {}
    for name in names:
        (args.work / name).mkdir(parents=True, exist_ok=True)
        log = open(args.work / name / "train.log", "w")  # noqa: SIM115 (closed below)
        cmd = [sys.executable, "-m", "models.train", *job_args(name, JOBS[name], args)]
        print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    deadline = time.time() + args.deadline_minutes * 60
    codes: dict[str, int | None] = {}
    while len(codes) < len(procs):
        for name, (proc, _) in procs.items():
            if name not in codes and proc.poll() is not None:
                codes[name] = proc.returncode
                print(f"[{name}] exited {proc.returncode}", flush=True)
        if time.time() > deadline:
            for name, (proc, _) in procs.items():
                if name not in codes:
                    print(f"[{name}] past the deadline: stopped", flush=True)
                    proc.terminate()
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    codes[name] = None
        time.sleep(1)
    for _, log in procs.values():
        log.close()
    return codes


def export_job(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """ONNX export and parity check of a job's best checkpoint (no metadata: that needs
    the service's pydantic, absent on the GPU machine; `python -m export` adds it)."""
    import torch

    from export.onnx_export import export_onnx
    from export.parity import check_parity
    from models.registry import build_model, size_multiple
    from models.tasks import build_data, get_task

    best = args.work / name / JOBS[name]["task"] / "best.pt"
    if not best.is_file():
        return {"error": "no best.pt"}
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    task = get_task(ckpt["task"], args.data_root)
    model = build_model(ckpt["arch"], **ckpt["arch_options"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    onnx_path = args.work / name / f"{task.name}.onnx"
    export_onnx(model, task.in_channels, size_multiple(model), onnx_path)
    holdout = JOBS[name].get("holdout", "")
    data = build_data(task, args.data_root, 64, 1, 0, False, holdout=holdout)
    parity = check_parity(
        model, onnx_path, list(data.val_images[:2]), task.mean, task.std, size_multiple(model)
    )
    return {
        "onnx_mib": round(onnx_path.stat().st_size / 2**20, 2),
        "parity_ok": bool(parity.ok),
        "max_abs_logit_diff": float(parity.max_abs_logit_diff),
        "argmax_agreement": float(parity.argmax_agreement),
    }


def job_summary(name: str, args: argparse.Namespace, code: int | None) -> dict[str, Any]:
    run = args.work / name / JOBS[name]["task"]
    history = (
        json.loads((run / "history.json").read_text()) if (run / "history.json").is_file() else []
    )
    spec = JOBS[name]
    validated_on = (
        f"sequence {spec['holdout']}, held out"
        if spec.get("holdout")
        else "val, SEEN IN TRAINING (train+val fit)"
        if spec.get("trainval")
        else "val"
    )
    out: dict[str, Any] = {"exit": code, "epochs": len(history), "validated_on": validated_on}
    if history:
        last = history[-1]
        out.update(steps=last["step"], train_loss=round(last["train_loss"], 4))
        rates = [r["samples_per_s"] for r in history[1:]] or [history[0]["samples_per_s"]]
        out["samples_per_s"] = round(sorted(rates)[len(rates) // 2], 1)
    if (run / "best.pt").is_file():
        import torch

        best = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
        out.update(
            best_epoch=best["epoch"],
            train_minutes=round(best["train_seconds"] / 60, 2),
            device=best.get("device"),
            metrics={k: round(v, 4) for k, v in best["metrics"].items()},
        )
    return out


def pack_results(names: list[str], args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """summary.json, logs.tar.gz and the shipped jobs' checkpoints in 15 MiB parts."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    with tarfile.open(args.out / "logs.tar.gz", "w:gz") as tar:
        for name in names:
            run = args.work / name
            for f in sorted(run.rglob("*")):
                if f.suffix in (".log", ".json", ".png"):
                    tar.add(f, arcname=str(f.relative_to(args.work)))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in names:
            best = args.work / name / JOBS[name]["task"] / "best.pt"
            if JOBS[name]["ship"] and best.is_file():
                tar.add(best, arcname=f"{name}/best.pt")
    data = buffer.getvalue()
    parts = [data[i : i + PART_BYTES] for i in range(0, len(data), PART_BYTES)]
    room = MAX_FILES - 3  # beside summary.json, logs.tar.gz and gpu_train.sh's driver.log
    if len(parts) > room:
        raise SystemExit(f"checkpoints need {len(parts)} parts; only {room} fit")
    for i, part in enumerate(parts):
        (args.out / f"weights.tar.{i:02d}").write_bytes(part)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, default=ROOT / "pack")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_train"))
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"of {sorted(JOBS)}")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time per job")
    parser.add_argument(
        "--deadline-minutes", type=float, default=0.0, help="stop jobs after (0: minutes + 2.5)"
    )
    parser.add_argument("--workers", type=int, default=0, help="per job (0: cores / jobs - 1)")
    parser.add_argument("--tiny", action="store_true", help="a CPU rehearsal of the whole path")
    parser.add_argument(
        "--cpu-augment", action="store_true", help="augment in DataLoader workers, not on the GPU"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.jobs.split(",") if n]
    unknown = set(names) - set(JOBS)
    if unknown:
        parser.error(f"unknown jobs {sorted(unknown)}")
    if not args.workers:
        args.workers = max((os.cpu_count() or 2) // len(names) - 1, 1)
    args.deadline_minutes = args.deadline_minutes or args.minutes + 2.5
    args.work.mkdir(parents=True, exist_ok=True)

    import torch

    cuda = torch.cuda.is_available()
    print(
        f"torch {torch.__version__}, "
        + (f"{torch.cuda.get_device_name(0)}" if cuda else "no CUDA: CPU")
        + f", {os.cpu_count()} cores, {args.workers} workers per job",
        flush=True,
    )
    started = time.time()
    codes = run_jobs(names, args)
    summary: dict[str, Any] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "minutes_per_job": args.minutes,
        "jobs": {},
    }
    for name in names:
        summary["jobs"][name] = job_summary(name, args, codes[name])
        try:
            summary["jobs"][name]["export"] = export_job(name, args)
        except Exception as error:  # reported; the other jobs go on
            summary["jobs"][name]["export"] = {"error": repr(error)}
    summary["wall_minutes"] = round((time.time() - started) / 60, 2)
    pack_results(names, args, summary)
    print(json.dumps(summary, indent=1))
    for name, job in summary["jobs"].items():
        m = job.get("metrics", {})
        figures = " ".join(
            f"{k} {m[k]:.4f}" for k in ("mean_iou", "pixel_error", "rand_error") if k in m
        )
        print(f"{name}: {job.get('steps')} steps, {job.get('samples_per_s')} samples/s, {figures}")
    failed = [n for n, j in summary["jobs"].items() if "metrics" not in j or "error" in j["export"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
