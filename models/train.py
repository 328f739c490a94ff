"""Train a task: `python -m models.train --task unet-isbi --epochs 70`.

Seeded, resumable (`--resume` picks up `last.pt` in the run folder), fine-tunes from
another run's weights with `--init-from`, validates every
`--val-every` epochs, keeps the best checkpoint by the task's selection metric and
redraws a training-curve PNG as it goes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.datasets import DEFAULT_DATA_ROOT
from models.losses import weighted_cross_entropy
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

    @property
    def run_dir(self) -> Path:
        return self.out_dir / self.task


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 1 % of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min((step - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1), 1.0)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(cfg: TrainConfig) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    task = get_task(cfg.task, cfg.data_root)
    data = build_data(
        task,
        cfg.data_root,
        cfg.crop,
        cfg.steps_per_epoch * cfg.batch_size,
        cfg.seed,
        cfg.border_weights,
        cfg.border_w0,
        cfg.separation_w,
    )
    model = build_model(task.arch, **task.arch_options)
    multiple = size_multiple(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    class_weight = (
        torch.from_numpy(data.class_weights)
        if cfg.class_weights and data.class_weights is not None
        else None
    )
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "best": None, "elapsed_s": 0.0}
    last = cfg.run_dir / "last.pt"
    resumed = cfg.resume and last.exists()
    if resumed:
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        print(f"resumed from {last} at epoch {state['epoch']}")
    elif cfg.init_from:
        ckpt = torch.load(cfg.init_from, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        state["parent"] = lineage(ckpt)  # the model card tells the whole recipe
        print(f"weights from {cfg.init_from}")
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
    loader = DataLoader(
        data.train, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=0
    )
    better = (lambda a, b: a > b) if task.selection_higher_is_better else (lambda a, b: a < b)

    for epoch in range(state["epoch"], cfg.epochs):
        data.train.epoch = epoch
        torch.manual_seed(cfg.seed * 1000 + epoch)  # shuffling order and dropout replay on resume
        model.train()
        started, losses = time.time(), []
        bar = tqdm(loader, desc=f"{cfg.task} epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for x, y, w in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(state["step"], total_steps, cfg)
            loss = weighted_cross_entropy(model(x), y, w, class_weight, task.ignore_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            state["step"] += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        state["elapsed_s"] += time.time() - started
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": state["step"],
            "train_loss": float(np.mean(losses)),
        }
        record["lr"] = lr_at(state["step"], total_steps, cfg)
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
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
            if state["best"] is None or better(score, state["best"]["score"]):
                state["best"] = {"epoch": epoch + 1, "score": score, "metrics": metrics}
                torch.save(
                    {
                        "model": evaluated.state_dict(),
                        "task": cfg.task,
                        "arch": task.arch,
                        "arch_options": task.arch_options,
                        "metrics": metrics,
                        "epoch": epoch + 1,
                        "config": _jsonable(asdict(cfg)),
                        "train_seconds": state["elapsed_s"],
                        "parent": state.get("parent"),
                    },
                    cfg.run_dir / "best.pt",
                )
        state["history"].append(record)
        state["epoch"] = epoch + 1
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": state,
                "ema": ema.state_dict() if ema is not None else None,
            },
            last,
        )
        (cfg.run_dir / "history.json").write_text(json.dumps(state["history"], indent=1))
        plot_curves(state["history"], task.selection, cfg.run_dir / "curves.png", title=cfg.task)
        val = record.get("val", {})
        print(
            f"epoch {epoch + 1}/{cfg.epochs} loss {record['train_loss']:.4f} "
            + " ".join(
                f"{k} {val[k]:.4f}" for k in ("pixel_error", "rand_error", "mean_iou") if k in val
            )
            + f" [{state['elapsed_s'] / 60:.1f} min]",
            flush=True,
        )
    return state


def lineage(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What a fine-tuning run started from: the parent's recipe, time, best epoch and its
    own parent."""
    keys = ("config", "train_seconds", "epoch", "parent")
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
