"""Train a task: `python -m models.train --task unet-isbi --epochs 70`.

Seeded, resumable (`--resume` picks up `last.pt` in the run folder, also in the middle
of an epoch when `--ckpt-every` saved it there), fine-tunes from another run's weights
with `--init-from` or from a shipped ONNX file with `--init-from-onnx`, validates every
`--val-every` epochs, keeps the best checkpoint by the task's selection metric and
redraws a training-curve PNG as it goes.

On a GPU (`--device auto` finds it): bf16 autocast, channels_last, cuDNN autotuning and
augmentation in `--workers` DataLoader processes (models/accel.py) or, with
`--gpu-augment`, on the device itself (models/gpu_augment.py). `--minutes` bounds
the training time: the learning-rate schedule then runs on the clock (warm-up, cosine
to 1 % at the budget's end), and the run stops in time, validated, with its best
checkpoint kept. `--arch-options '{"base_width": 32}'` overrides the task's network.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from models.accel import (
    autocast,
    build_loader,
    configure,
    cpu_state_dict,
    first_batches,
    pick_device,
    prepare_model,
    to_device,
)
from models.datasets import DEFAULT_DATA_ROOT, EpochSampler
from models.gpu_augment import GpuAugment
from models.losses import weighted_cross_entropy
from models.onnx_weights import load_onnx_weights, onnx_lineage, recalibrate_batch_norm
from models.plots import plot_curves
from models.predict import validate
from models.registry import build_model, size_multiple
from models.tasks import build_data, get_task


@dataclass
class TrainConfig:
    task: str = "unet-isbi"
    data_root: Path = DEFAULT_DATA_ROOT
    out_dir: Path = Path("runs")
    epochs: int = 60
    steps_per_epoch: int = 50
    batch_size: int = 4
    crop: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    border_weights: bool = True  # U-Net paper's separation weights (ISBI only)
    border_w0: float = 10.0  # their peak (the paper's w0)
    separation_w: float = 0.0  # extra weight on the membrane line between cells (ISBI); 0 = off
    class_weights: bool = True  # ENet class weighting (CamVid only)
    val_every: int = 1
    val_views: int = 1  # score validation images under this many flips/rotations (max 8)
    threads: int = 1
    seed: int = 0
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0 = off
    resume: bool = False
    init_from: str = ""  # a checkpoint whose weights start a fine-tuning run (fresh optimiser)
    init_from_onnx: str = ""  # or an exported ONNX file's weights (models/onnx_weights.py)
    arch_options: str = ""  # JSON merged over the task's options, e.g. '{"base_width": 32}'
    class_balance: str = "enet"  # CamVid class weights: enet | median (median frequency)
    holdout: str = ""  # CamVid: train on train+val but this sequence, validate on it
    trainval: bool = False  # CamVid: train on train+val (the final fit; keeps the last)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    workers: int = 0  # DataLoader processes that augment (0: in the training process)
    gpu_augment: bool = False  # augment batches on the device instead (models/gpu_augment.py)
    minutes: float = 0.0  # training-time budget; 0 = run all epochs
    ckpt_every: int = 0  # steps between saves of last.pt inside an epoch; 0 = per epoch

    @property
    def run_dir(self) -> Path:
        return self.out_dir / self.task


def lr_at(step: int, total: int, cfg: TrainConfig, elapsed_s: float | None = None) -> float:
    """Linear warm-up, then cosine decay to 1 % of the peak; with a time budget
    (`cfg.minutes`) and `elapsed_s` given, the decay follows the clock instead of steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.minutes > 0 and elapsed_s is not None:
        progress = min(elapsed_s / (cfg.minutes * 60), 1.0)
    else:
        progress = min((step - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1), 1.0)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def arch_options(cfg: TrainConfig, task_options: dict[str, Any]) -> dict[str, Any]:
    extra = json.loads(cfg.arch_options) if cfg.arch_options else {}
    if not isinstance(extra, dict):
        raise ValueError("--arch-options must be a JSON object")
    return {**task_options, **extra}


def train(cfg: TrainConfig) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    configure(device)
    task = get_task(cfg.task, cfg.data_root)
    if cfg.trainval and cfg.holdout:
        raise ValueError("--trainval and --holdout exclude each other")
    data = build_data(
        task,
        cfg.data_root,
        cfg.crop,
        cfg.steps_per_epoch * cfg.batch_size,
        cfg.seed,
        cfg.border_weights,
        cfg.border_w0,
        cfg.separation_w,
        holdout=cfg.holdout,
        trainval=cfg.trainval,
        class_balance=cfg.class_balance,
        processes=max(cfg.workers, 1),
    )
    options = arch_options(cfg, task.arch_options)
    model = build_model(task.arch, **options)
    multiple = size_multiple(model)
    class_weight = (
        torch.from_numpy(data.class_weights).to(device)
        if cfg.class_weights and data.class_weights is not None
        else None
    )
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "best": None, "elapsed_s": 0.0}
    last = cfg.run_dir / "last.pt"
    resumed = cfg.resume and last.exists()
    ckpt: dict[str, Any] = {}
    if resumed:
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        state = ckpt["state"]
        print(f"resumed from {last} at step {state['step']}")
    elif cfg.init_from:
        parent = torch.load(cfg.init_from, map_location="cpu", weights_only=False)
        model.load_state_dict(parent["model"])
        state["parent"] = lineage(parent)  # the model card tells the whole recipe
        print(f"weights from {cfg.init_from}")
    elif cfg.init_from_onnx:
        load_onnx_weights(model, Path(cfg.init_from_onnx))
        recalibrate_batch_norm(model, first_batches(data.train, 4, cfg.batch_size))
        state["parent"] = onnx_lineage(Path(cfg.init_from_onnx))
        print(f"weights from {cfg.init_from_onnx}")
    model = prepare_model(model, device, cfg.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if resumed:
        optimizer.load_state_dict(ckpt["optimizer"])
    # Validated, checkpointed and exported in place of the raw weights when on: averaging
    # damps the epoch-to-epoch swings of the validation metrics.
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        if cfg.ema
        else None
    )
    if ema is not None and resumed:
        ema.load_state_dict(ckpt["ema"])
    evaluated = ema.module if ema is not None else model
    total_steps = cfg.epochs * cfg.steps_per_epoch
    sampler = EpochSampler(len(data.train), cfg.seed)
    loader = build_loader(data.train, sampler, cfg.batch_size, cfg.workers, device)
    augment = (
        GpuAugment(
            "isbi" if cfg.task == "unet-isbi" else "camvid",
            data.train.images,
            data.train.labels,
            data.train.weights,
            task.mean,
            task.std,
            cfg.crop,
            device,
            seed=cfg.seed,
            void=task.ignore_index,
        )
        if cfg.gpu_augment
        else None
    )
    better = (lambda a, b: a > b) if task.selection_higher_is_better else (lambda a, b: a < b)
    budget_s = cfg.minutes * 60 if cfg.minutes > 0 else math.inf

    def save_last() -> None:
        torch.save(
            {
                "model": cpu_state_dict(model),
                "optimizer": optimizer.state_dict(),
                "state": state,
                "ema": cpu_state_dict(ema) if ema is not None else None,
                "arch_options": options,
            },
            last,
        )

    out_of_time = False
    while state["epoch"] < cfg.epochs and not out_of_time:
        epoch = state["epoch"]
        # > 0 when resuming from a save inside this epoch
        done_in_epoch = max(state["step"] - epoch * cfg.steps_per_epoch, 0)
        data.train.epoch = epoch
        sampler.set_epoch(epoch, start=done_in_epoch * cfg.batch_size)
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout replays on resume
        model.train()
        started, losses = time.time(), []
        step_started = time.time()
        end = (epoch + 1) * cfg.steps_per_epoch
        batches = (
            loader
            if augment is None
            else (augment.batch(step, cfg.batch_size) for step in range(state["step"], end))
        )
        for x, y, w in batches:
            lr = lr_at(state["step"], total_steps, cfg, state["elapsed_s"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = to_device(x, device, cfg.channels_last)
            y, w = to_device(y, device), to_device(w, device)
            with autocast(device, cfg.amp):
                logits = model(x)
            loss = weighted_cross_entropy(logits.float(), y, w, class_weight, task.ignore_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            state["step"] += 1
            losses.append(loss.detach())
            now = time.time()
            state["elapsed_s"] += now - step_started
            step_started = now
            if cfg.ckpt_every and state["step"] % cfg.ckpt_every == 0:
                save_last()
            if state["elapsed_s"] >= budget_s:
                out_of_time = True
                break
        seconds = time.time() - started
        mean_loss = float(torch.stack(losses).mean()) if losses else float("nan")
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": state["step"],
            "train_loss": mean_loss,
            "lr": lr_at(state["step"], total_steps, cfg, state["elapsed_s"]),
            "samples_per_s": len(losses) * cfg.batch_size / max(seconds, 1e-9),
        }
        last_epoch = epoch + 1 == cfg.epochs or out_of_time
        if (epoch + 1) % cfg.val_every == 0 or last_epoch:
            metrics = validate(
                evaluated,
                data.val_images,
                data.val_labels,
                task.mean,
                task.std,
                task.classes,
                multiple,
                ignore_index=task.ignore_index if task.ignore_index >= 0 else None,
                rand_error=cfg.task == "unet-isbi",
                views=cfg.val_views,
            ).metrics
            record["val"] = metrics
            score = metrics[task.selection]
            # The final fit has no held-out data: its schedule was chosen on a held-out
            # sequence, so it keeps its last weights.
            if state["best"] is None or cfg.trainval or better(score, state["best"]["score"]):
                state["best"] = {"epoch": epoch + 1, "score": score, "metrics": metrics}
                torch.save(
                    {
                        "model": cpu_state_dict(evaluated),
                        "task": cfg.task,
                        "arch": task.arch,
                        "arch_options": options,
                        "metrics": metrics,
                        "epoch": epoch + 1,
                        "step": state["step"],
                        "config": _jsonable(asdict(cfg)),
                        "device": _device_name(device),
                        "train_seconds": state["elapsed_s"],
                        "parent": state.get("parent"),
                    },
                    cfg.run_dir / "best.pt",
                )
        state["history"].append(record)
        state["epoch"] = epoch + 1
        save_last()
        (cfg.run_dir / "history.json").write_text(json.dumps(state["history"], indent=1))
        if "val" in record or state["epoch"] == 1:
            plot_curves(
                state["history"], task.selection, cfg.run_dir / "curves.png", title=cfg.task
            )
        val = record.get("val", {})
        print(
            f"epoch {epoch + 1}/{cfg.epochs} step {state['step']} loss {mean_loss:.4f} "
            + " ".join(
                f"{k} {val[k]:.4f}" for k in ("pixel_error", "rand_error", "mean_iou") if k in val
            )
            + f" [{state['elapsed_s'] / 60:.2f} min, {record['samples_per_s']:.0f} samples/s]",
            flush=True,
        )
    if out_of_time:
        print(f"time budget of {cfg.minutes} min reached at step {state['step']}", flush=True)
    return state


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def lineage(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What a fine-tuning run started from: the parent's recipe, time, best epoch and its
    own parent."""
    keys = ("config", "train_seconds", "epoch", "device", "parent")
    return {k: checkpoint.get(k) for k in keys}


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for f in fields(TrainConfig):
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                action=argparse.BooleanOptionalAction,
                default=default,
            )
        else:
            parser.add_argument(
                f"--{f.name.replace('_', '-')}", type=type(default), default=default
            )
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    state = train(cfg)
    print(json.dumps({"best": state["best"], "train_minutes": state["elapsed_s"] / 60}, indent=1))


if __name__ == "__main__":
    main()
