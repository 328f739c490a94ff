"""Model cards: measured facts about an exported model, written as markdown beside it."""

from __future__ import annotations

import statistics
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from app.spec import ModelSpec
from export.parity import ParityReport


def count_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of the convolutions for one forward pass at `shape`."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = (
                module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            )
            total += output.numel() * kernel
        elif isinstance(module, nn.ConvTranspose2d):
            kernel = (
                module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            )
            total += inputs[0].numel() * kernel

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(shape))
    finally:
        for handle in handles:
            handle.remove()
    return total


def measure_latency(
    onnx_path: Path, shape: tuple[int, ...], threads: int = 2, runs: int = 10
) -> dict[str, float]:
    """Median CPU latency in ms: labels from the graph vs logits + numpy argmax."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    session.run(None, {"image": x})  # warm-up

    def timed(fn: Any) -> float:
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1000)
        return statistics.median(samples)

    return {
        "labels_in_graph_ms": timed(lambda: session.run(["labels"], {"image": x})),
        "logits_numpy_argmax_ms": timed(lambda: session.run(["logits"], {"image": x})[0].argmax(1)),
    }


def training_recipe(checkpoint: dict[str, Any]) -> str:
    """The stages that made the checkpoint, first to last (fine-tuning runs name their
    parent checkpoint's recipe through `parent`; a run fine-tuned from an exported ONNX
    file carries the stages of that file's model card, models/onnx_weights.onnx_lineage)."""
    stages = []
    node: dict[str, Any] | None = checkpoint
    while node:
        stages.append(node)
        node = node.get("parent")
    ordered = stages[::-1]
    lines: list[str] = []
    for i, stage in enumerate(ordered):
        if "onnx" in stage:  # a shipped file: its card's stages, then the runs from it
            lines.extend(stage.get("card_stages") or [])
            continue
        number = len(lines) + 1
        cfg = stage.get("config") or {}
        skip = ("data_root", "out_dir", "resume", "init_from", "init_from_onnx")
        recipe = ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in skip)
        if cfg.get("init_from_onnx"):
            parent = (ordered[i - 1].get("onnx") if i else None) or {}
            how = f"fine-tuned from {parent.get('name')} {parent.get('version')}"
            how += f" (stage {number - 1})" if number > 1 else f" ({cfg['init_from_onnx']})"
        elif cfg.get("init_from"):
            how = f"fine-tuned from stage {number - 1}"
        else:
            how = "from scratch"
        minutes = (stage.get("train_seconds") or 0) / 60
        device = str(stage.get("device") or "cpu")
        if device == "cpu":
            threads = int(cfg.get("threads", 1))
            where = f"{threads} CPU thread" + ("s" if threads != 1 else "")
        else:
            where = device
        lines.append(
            f"{number}. {how}, {minutes:.0f} minutes on {where} up to its best epoch, "
            f"{stage.get('epoch')}: {recipe}."
        )
    return "\n".join(lines)


def write_card(
    path: Path,
    spec: ModelSpec,
    checkpoint: dict[str, Any],
    params: int,
    macs: int,
    shape: tuple[int, ...],
    latency: dict[str, float],
    parity: ParityReport,
    onnx_bytes: int,
    example_png: str,
    curves_png: str = "",
) -> None:
    """`curves_png`: the last training stage's curves beside the card, when there are."""
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(spec.metrics.items()))
    views = int((checkpoint.get("config") or {}).get("val_views", 1))
    scored = f", each image scored under {views} flips/rotations, averaged" if views > 1 else ""
    recipe = training_recipe(checkpoint)
    text = f"""# {spec.name} {spec.version}

{spec.description}

- **Architecture**: {spec.architecture}
- **Parameters**: {params:,} ({onnx_bytes / 1e6:.1f} MB ONNX, float32)
- **Compute**: {macs / 1e9:.2f} GMACs per image at {shape[-1]}x{shape[-2]} (convolutions)
- **Input**: {spec.input_channels} channel(s), `(v / 255 - mean) / std`,
  mean {spec.mean}, std {spec.std};
  height and width padded (mirror) to a multiple of {spec.size_multiple} by the service
- **Classes** (index order): {", ".join(f"{i} {c}" for i, c in enumerate(spec.classes))}
- **Training data**: {spec.training_data}
- **Terms**: {spec.data_terms}
- **Exported**: {spec.exported_at} from commit `{spec.git_commit or "unknown"}`

## Training recipe
{recipe}

## Validation metrics (best checkpoint{scored})
| metric | value |
| --- | --- |
{metrics}

## Export parity (ONNX vs torch on {parity.images} real validation images)
max |logit difference| {parity.max_abs_logit_diff:.2e} (limit 1e-4), argmax agreement
{parity.argmax_agreement:.6f} (limit 0.9999).

## CPU latency (onnxruntime, 2 threads, median of 10, {shape[-1]}x{shape[-2]})
| output used | ms |
| --- | --- |
| `labels` (argmax in the graph) | {latency["labels_in_graph_ms"]:.1f} |
| `logits` + numpy argmax | {latency["logits_numpy_argmax_ms"]:.1f} |

## Example predictions (validation)
![examples]({example_png})
"""
    if curves_png:
        stage = len(recipe.splitlines())
        text += f"""
## Training curves (stage {stage}: training loss, validation metrics)
![curves]({curves_png})
"""
    path.write_text(text)


VARIANTS_HEADING = "## Precision variants"
VARIANTS_INTRO = """Each variant's accuracy was measured at export on validation images, next to
this FP32 file's on the same images; a variant losing more than 0.005 mean IoU or adding
more than 0.002 pixel error is not shipped (export/quantize.py). Inputs and outputs are
the FP32 file's; SEG_PRECISION picks the file that serves.
"""


def variant_block(
    verdict: Any, file_bytes: int, how: str, latency: dict[str, float] | None, size: str
) -> str:
    """The card's subsection on one INT8/FP16 variant: how it was made, its accuracy
    next to the FP32 file's, and (INT8) its CPU latency against FP32 in the same run."""
    v, rows = verdict, []
    names = {"mean_iou": "mean IoU", "pixel_error": "pixel error", "rand_error": "Rand error"}
    for key, label in names.items():
        if key in v.metrics:
            rows.append(f"| {label} | {v.metrics[key]:.4f} | {v.reference[key]:.4f} |")
    rows.append(f"| pixels of the same class as FP32 | {v.agreement:.5f} | 1 |")
    timing = ""
    if latency:
        sentence = (
            f"CPU latency at {size} (onnxruntime, 2 threads, median of 10, the files "
            f"alternating in one run on a shared, noisy machine): FP32 {latency['fp32']:.1f} ms, "
            f"{v.precision.upper()} {latency[v.precision]:.1f} ms "
            f"({latency['fp32'] / latency[v.precision]:.2f}x)."
        )
        timing = "\n" + textwrap.fill(sentence, width=92) + "\n"
    about = textwrap.fill(f"{how} Measured on {v.description}.", width=92)
    return f"""### {v.precision} (`{{name}}.{v.precision}.onnx`, {file_bytes / 1e6:.1f} MB)
{about}

| metric | {v.precision} | fp32 |
| --- | --- | --- |
{chr(10).join(rows)}
{timing}"""


def write_variant_section(card: Path, name: str, precision: str, block: str) -> None:
    """Put `block` (a `### precision` subsection) under the card's precision-variants
    section, replacing that precision's earlier block; the section is added when missing."""
    text = card.read_text()
    if VARIANTS_HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{VARIANTS_HEADING}\n{VARIANTS_INTRO}"
    start = text.index(VARIANTS_HEADING)
    end = text.find("\n## ", start + len(VARIANTS_HEADING))
    end = len(text) if end < 0 else end + 1
    section = text[start:end]
    block = block.replace("{name}", name).rstrip("\n") + "\n"
    marker = f"\n### {precision} "
    at = section.find(marker)
    if at >= 0:
        stop = section.find("\n### ", at + len(marker))
        section = section[: at + 1] + block + (section[stop:] if stop >= 0 else "")
    else:
        section = section.rstrip("\n") + "\n\n" + block
    rest = text[end:].lstrip("\n")
    card.write_text(text[:start] + section.rstrip("\n") + "\n" + ("\n" + rest if rest else ""))
