"""INT8 and FP16 variants of a shipped FP32 model, each kept only if it stays accurate.

    python -m export quantize app/shipped_models/unet-isbi.onnx --out app/shipped_models

INT8 (for the CPU provider): onnxruntime static quantization in QDQ format, weights
int8 per output channel, activations uint8 with ranges calibrated on training images
(never the validation images). FP16 (for CUDA): every float tensor inside the graph in
half precision, the inputs and outputs as they were (`keep_io_types`).

Each candidate is scored on the validation data against the FP32 file on the same
images; a candidate that loses more than `MAX_MIOU_DROP` mean IoU or adds more than
`MAX_PIXEL_ERROR_RISE` pixel error is not written. The file that is written carries
its measured metrics, `precision` and schema_version 2 in its metadata.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.transformers.float16 import convert_float_to_float16

from app.spec import ModelSpec
from export.accuracy import (
    ImageReader,
    Split,
    class_maps,
    graph_input,
    read_spec,
    score,
    session,
    training_images,
    validation_split,
)
from export.card import variant_block, write_variant_section
from export.metadata import git_commit, write_metadata
from models.datasets import DEFAULT_DATA_ROOT

MAX_MIOU_DROP = 0.005  # 0.5 mIoU points
MAX_PIXEL_ERROR_RISE = 0.002
METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# Conv and ConvTranspose carry the arithmetic; quantizing MaxPool and Concat too keeps
# the activations in int8 between them (the U-Net's skip connections are Concats), and
# Resize/Add for the dilated network's context module and upsampling.
INT8_OP_TYPES = ("Conv", "ConvTranspose", "MaxPool", "Concat", "Resize", "Add")
Precision = Literal["int8", "fp16"]


def quantize_int8(
    fp32: Path,
    out: Path,
    images: np.ndarray,
    method: str = "minmax",
    op_types: tuple[str, ...] = INT8_OP_TYPES,
    exclude: tuple[str, ...] = (),
) -> None:
    """Static QDQ quantization of `fp32` into `out`, calibrated on uint8 `images`; the
    nodes named in `exclude` stay in float."""
    spec = read_spec(fp32)
    quantize_static(
        str(fp32),
        str(out),
        ImageReader(spec, images),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(op_types),
        nodes_to_exclude=list(exclude),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=METHODS[method],
        extra_options={"CalibStridedMinMax": 1},  # one image's activations in memory at a time
    )


def convert_fp16(fp32: Path, out: Path) -> None:
    """Half-precision arithmetic inside, inputs and outputs unchanged."""
    proto = onnx.load(str(fp32))
    half = convert_float_to_float16(proto, keep_io_types=True)
    onnx.save(half, str(out))


@dataclass
class Verdict:
    precision: Precision
    metrics: dict[str, float]  # the candidate's, on the validation split
    reference: dict[str, float]  # the FP32 file's, on the same images
    agreement: float  # share of pixels whose class equals the FP32 file's
    description: str  # which images

    @property
    def miou_drop(self) -> float:
        return self.reference["mean_iou"] - self.metrics["mean_iou"]

    @property
    def pixel_error_rise(self) -> float:
        return self.metrics["pixel_error"] - self.reference["pixel_error"]

    @property
    def ok(self) -> bool:
        return self.miou_drop <= MAX_MIOU_DROP and self.pixel_error_rise <= MAX_PIXEL_ERROR_RISE

    def summary(self) -> str:
        return (
            f"{self.precision}: mIoU {self.metrics['mean_iou']:.4f} "
            f"(fp32 {self.reference['mean_iou']:.4f}), pixel error "
            f"{self.metrics['pixel_error']:.4f} (fp32 {self.reference['pixel_error']:.4f}), "
            f"agreement with fp32 {self.agreement:.5f} on {self.description}: "
            + ("kept" if self.ok else "REFUSED")
        )


def judge(
    fp32: Path, candidate: Path, precision: Precision, split: Split, fp32_maps: np.ndarray
) -> Verdict:
    spec = read_spec(fp32)
    maps = class_maps(candidate, split.images)
    return Verdict(
        precision,
        score(spec, maps, split),
        score(spec, fp32_maps, split),
        float((maps == fp32_maps).mean()),
        split.description,
    )


def variant_path(fp32: Path, out_dir: Path, precision: Precision) -> Path:
    return out_dir / f"{fp32.stem}.{precision}.onnx"


def variant_spec(spec: ModelSpec, verdict: Verdict) -> ModelSpec:
    metrics = dict(verdict.metrics)
    metrics.update({f"fp32/{k}": v for k, v in verdict.reference.items() if "/" not in k})
    metrics["agreement_with_fp32"] = verdict.agreement
    return spec.model_copy(
        update={
            "schema_version": 2,
            "precision": verdict.precision,
            "metrics": metrics,
            "git_commit": git_commit(),
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )


def make_variant(
    fp32: Path,
    out_dir: Path,
    precision: Precision,
    build: Callable[[Path], None],
    split: Split,
    fp32_maps: np.ndarray,
) -> Verdict:
    """Build a candidate in a scratch folder, judge it, and write it to `out_dir` (with
    its spec) only when the verdict is ok; a refused candidate leaves no file behind."""
    target = variant_path(fp32, out_dir, precision)
    with tempfile.TemporaryDirectory(prefix="segserve-variant-") as scratch:
        candidate = Path(scratch) / target.name
        build(candidate)
        verdict = judge(fp32, candidate, precision, split, fp32_maps)
        if verdict.ok:
            write_metadata(candidate, variant_spec(read_spec(fp32), verdict))
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(candidate, target)
    return verdict


def compare_latency(
    paths: list[Path], image: np.ndarray, threads: int = 2, rounds: int = 10
) -> list[float]:
    """Median ms per run of each file on one image, alternating between files every
    round so that all of them see the same machine load."""
    runners = []
    for path in paths:
        spec = read_spec(path)
        run = session(path, threads)
        feed = {spec.input_name: graph_input(spec, image)}
        run.run(None, feed)  # warm-up
        runners.append((run, feed, spec.logits_output))
    samples: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, (run, feed, output) in enumerate(runners):
            start = time.perf_counter()
            run.run([output], feed)
            samples[i].append((time.perf_counter() - start) * 1000)
    return [statistics.median(s) for s in samples]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export quantize",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="the shipped FP32 ONNX file")
    parser.add_argument("--out", type=Path, default=Path("app/shipped_models"))
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--precision", choices=["int8", "fp16"], nargs="+", default=["int8"])
    parser.add_argument("--method", choices=sorted(METHODS), default="minmax")
    parser.add_argument("--calibration-images", type=int, default=20)
    parser.add_argument(
        "--val-images", type=int, default=None, help="CamVid val frames (default all 101)"
    )
    parser.add_argument("--op-types", nargs="+", default=list(INT8_OP_TYPES))
    parser.add_argument(
        "--exclude-nodes", nargs="+", default=[], help="nodes to keep in float (their names)"
    )
    parser.add_argument(
        "--card", type=Path, default=None, help="model card to update (default MODEL.md)"
    )
    parser.add_argument("--note", default="", help="a sentence for the card: why this recipe")
    args = parser.parse_args(argv)

    fp32: Path = args.model
    spec = read_spec(fp32)
    if spec.precision != "fp32":
        parser.error(f"{fp32} is a {spec.precision} file: start from the FP32 one")
    split = validation_split(spec.name, args.data_root, args.val_images)
    fp32_maps = class_maps(fp32, split.images)
    calibration, calibration_what = training_images(
        spec.name, args.data_root, args.calibration_images
    )
    builders: dict[Precision, Callable[[Path], None]] = {
        "int8": lambda out: quantize_int8(
            fp32, out, calibration, args.method, tuple(args.op_types), tuple(args.exclude_nodes)
        ),
        "fp16": lambda out: convert_fp16(fp32, out),
    }
    hows: dict[Precision, str] = {
        "int8": (
            "onnxruntime static quantization, QDQ format, weights int8 per output channel, "
            f"activations uint8 with {args.method} ranges calibrated on {calibration_what}; "
            f"op types quantized: {', '.join(args.op_types)}"
            + (f"; kept in float: {', '.join(args.exclude_nodes)}." if args.exclude_nodes else ".")
            + (f" {args.note}" if args.note else "")
        ),
        "fp16": (
            "float16 arithmetic inside (onnxruntime.transformers' float16 conversion, "
            "inputs and outputs unchanged), for the CUDA provider. Its accuracy was measured "
            "with onnxruntime's CPU provider, which runs the FP16 nodes it has no kernel for "
            "in float32 between casts: CUDA's half-precision arithmetic may move a few more "
            "near-tie pixels."
        ),
    }
    card = args.card or fp32.with_suffix(".md")
    failed = False
    for precision in args.precision:
        verdict = make_variant(fp32, args.out, precision, builders[precision], split, fp32_maps)
        print(verdict.summary(), flush=True)
        if not verdict.ok:
            failed = True
            continue
        written = variant_path(fp32, args.out, precision)
        latency = None
        if precision == "int8":
            ms = compare_latency([fp32, written], split.images[0])
            latency = {"fp32": ms[0], "int8": ms[1]}
            print(f"CPU latency, 2 threads, median, alternating: {latency}", flush=True)
        if card.is_file():
            size = "x".join(str(n) for n in split.images[0].shape[:2][::-1])
            block = variant_block(verdict, written.stat().st_size, hows[precision], latency, size)
            write_variant_section(card, spec.name, precision, block)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
