"""Export a trained checkpoint: `python -m export runs/unet-isbi/best.pt --out app/shipped_models`.

`python -m export quantize app/shipped_models/unet-isbi.onnx --precision int8 fp16` writes
the INT8/FP16 variants of a shipped file instead (export/quantize.py), and
`python -m export uint8-input FILE...` re-ships a float-input file as a uint8-input one
(export/uint8_input.py).

Writes `<name>.onnx` (metadata inside), `<name>.md` (model card), `<name>-examples.png`
and `<name>-curves.png` (the run's training curves, when beside the checkpoint), after
`onnx.checker` and a parity check against torch on real validation images; exits non-zero
when parity fails.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from export.card import count_macs, measure_latency, write_card
from export.metadata import build_spec, write_metadata
from export.onnx_export import export_onnx
from export.parity import check_parity
from models.datasets import DEFAULT_DATA_ROOT
from models.plots import plot_montage
from models.predict import validate
from models.registry import build_model, size_multiple
from models.tasks import build_data, get_task

TYPICAL_SHAPES = {"unet-isbi": (1, 1, 512, 512), "dilated-camvid": (1, 3, 360, 480)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["quantize"]:
        from export.quantize import main as quantize_main

        return quantize_main(argv[1:])
    if argv[:1] == ["uint8-input"]:
        from export.uint8_input import main as uint8_main

        return uint8_main(argv[1:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=Path("app/shipped_models"))
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--parity-images", type=int, default=4)
    args = parser.parse_args(argv)

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    task = get_task(ckpt["task"], args.data_root)
    model = build_model(ckpt["arch"], **ckpt["arch_options"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    multiple = size_multiple(model)

    # The spec (with the git commit and whether the tree is clean) before any file is
    # written: overwriting a shipped model would make every re-export look dirty.
    architecture = f"{ckpt['arch']} {ckpt['arch_options']}"
    spec = build_spec(task, args.version, ckpt["metrics"], multiple, architecture)
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / f"{task.name}.onnx"
    export_onnx(model, task.in_channels, multiple, onnx_path)
    write_metadata(onnx_path, spec)

    data = build_data(task, args.data_root, crop=64, epoch_length=1, seed=0, border_weights=False)
    val_images = list(data.val_images[: args.parity_images])
    parity = check_parity(model, onnx_path, val_images, task.mean, task.std, multiple)
    print(f"parity: {parity}")
    if not parity.ok:
        print("parity check FAILED", file=sys.stderr)
        return 1

    pick = np.linspace(0, len(data.val_images) - 1, 3).astype(int)
    preds = validate(
        model,
        data.val_images[pick],
        data.val_labels[pick],
        task.mean,
        task.std,
        task.classes,
        multiple,
    ).predictions
    example = f"{task.name}-examples.png"
    plot_montage(
        data.val_images[pick],
        data.val_labels[pick],
        preds,
        task.palette,
        [data.val_names[i] for i in pick],
        args.out / example,
        title=f"{task.name} on validation images",
    )
    curves = args.checkpoint.parent / "curves.png"  # models.train draws it beside best.pt
    curves_png = f"{task.name}-curves.png" if curves.is_file() else ""
    if curves_png:
        shutil.copyfile(curves, args.out / curves_png)
    shape = TYPICAL_SHAPES[task.name]
    write_card(
        args.out / f"{task.name}.md",
        spec,
        ckpt,
        params=sum(p.numel() for p in model.parameters()),
        macs=count_macs(model, shape),
        shape=shape,
        latency=measure_latency(onnx_path, shape),
        parity=parity,
        onnx_bytes=onnx_path.stat().st_size,
        example_png=example,
        curves_png=curves_png,
    )
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB) and its model card")
    return 0


if __name__ == "__main__":
    sys.exit(main())
