"""Evaluate a checkpoint on its task's validation data.

Usage: `python -m models.evaluate runs/unet-isbi/best.pt`, or a shipped ONNX file's
weights: `python -m models.evaluate app/shipped_models/dilated-camvid.onnx --task
dilated-camvid` (add `--arch-options` when its network differs from the task's). CamVid
can be scored on a held-out training sequence instead of val (`--holdout 0006R0`).

Prints a metrics table, writes a JSON report and a PNG montage of predictions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.datasets import DEFAULT_DATA_ROOT
from models.onnx_weights import load_onnx_weights
from models.plots import plot_montage
from models.predict import validate
from models.registry import build_model, size_multiple
from models.tasks import build_data, get_task


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument(
        "--out", type=Path, default=None, help="report folder (default: beside the checkpoint)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--montage", type=int, default=4, help="examples in the PNG montage")
    parser.add_argument(
        "--views",
        type=int,
        default=0,
        help="flips/rotations to score each image under (default: the training run's)",
    )
    parser.add_argument("--task", default="", help="the task of an ONNX file")
    parser.add_argument("--arch-options", default="", help="JSON over the task's (ONNX only)")
    parser.add_argument(
        "--holdout", default="", help="CamVid: score this train sequence instead of val"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.checkpoint.suffix == ".onnx":
        if not args.task:
            parser.error("an ONNX file needs --task")
        task = get_task(args.task, args.data_root)
        options = {**task.arch_options, **json.loads(args.arch_options or "{}")}
        model = load_onnx_weights(build_model(task.arch, **options), args.checkpoint)
        ckpt: dict[str, Any] = {}
    else:
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        task = get_task(ckpt["task"], args.data_root)
        model = build_model(ckpt["arch"], **ckpt["arch_options"])
        model.load_state_dict(ckpt["model"])
    model.eval()
    data = build_data(
        task,
        args.data_root,
        crop=64,
        epoch_length=1,
        seed=0,
        border_weights=False,
        holdout=args.holdout,
    )
    # Scored as the training run selected the checkpoint, unless told otherwise.
    views = args.views or int(ckpt.get("config", {}).get("val_views", 1))
    metrics, preds, cm = validate(
        model,
        data.val_images,
        data.val_labels,
        task.mean,
        task.std,
        task.classes,
        size_multiple(model),
        ignore_index=task.ignore_index if task.ignore_index >= 0 else None,
        rand_error=task.name == "unet-isbi",
        views=views,
        progress="evaluate",
    )

    out = args.out or args.checkpoint.parent
    suffix = f"-{args.holdout}" if args.holdout else ""
    out.mkdir(parents=True, exist_ok=True)
    width = max(len(name) for name in metrics)
    print(f"{'metric':<{width}}  value")
    for name, value in metrics.items():
        print(f"{name:<{width}}  {value:.4f}")
    report = {
        "checkpoint": str(args.checkpoint),
        "task": task.name,
        "images": len(preds),
        "views": views,
        "holdout": args.holdout or None,
        "metrics": metrics,
        "confusion_matrix": cm.tolist(),
        "classes": task.classes,
    }
    (out / f"evaluation{suffix}.json").write_text(json.dumps(report, indent=1))
    pick = np.linspace(0, len(preds) - 1, min(args.montage, len(preds))).astype(int)
    plot_montage(
        data.val_images[pick],
        data.val_labels[pick],
        preds[pick],
        task.palette,
        [data.val_names[i] for i in pick],
        out / f"evaluation{suffix}.png",
        title=f"{task.name} validation",
    )
    print(f"wrote {out / f'evaluation{suffix}.json'} and {out / f'evaluation{suffix}.png'}")
    return metrics


if __name__ == "__main__":
    main()
