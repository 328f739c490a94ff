"""CPU latency of each shipped model's FP32 file against its INT8 variant, one run.

    python -m bench.precision_latency [--rounds 20] [--threads 2]

One validation image per model (ISBI slice 20, the first CamVid val frame), fed as the
files' metadata says; the two files alternate round by round (export/quantize.py's
`compare_latency`), so both see the same machine load. Prints medians and the ratio.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from export.accuracy import validation_split
from export.quantize import compare_latency
from models.datasets import DEFAULT_DATA_ROOT

SHIPPED = Path(__file__).resolve().parents[1] / "app" / "shipped_models"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    args = parser.parse_args(argv)
    print(
        f"| model | fp32 ms | int8 ms | ratio |  ({args.threads} threads, median of {args.rounds})"
    )
    print("| --- | --- | --- | --- |")
    for name in ("unet-isbi", "dilated-camvid"):
        image = validation_split(name, args.data_root, 1).images[0]
        files = [SHIPPED / f"{name}.onnx", SHIPPED / f"{name}.int8.onnx"]
        fp32, int8 = compare_latency(files, image, args.threads, args.rounds)
        print(f"| {name} | {fp32:.1f} | {int8:.1f} | {fp32 / int8:.2f}x |")


if __name__ == "__main__":
    main()
