"""Float-input graph versus its uint8-input wrapping (export/uint8_input.py), one run.

    python -m bench.uint8_input --float OLD/unet-isbi.onnx --uint8 app/shipped_models/unet-isbi.onnx

For one model's sample image: the service's pre-processing (app/inference/pipeline.py's
`preprocess`: pad, then normalise or not), the bytes fed to the session, the session run
(2 threads, both outputs) and the labels' conversion to uint8 class maps, each the median
of `--rounds`, the two files alternating round by round so they see the same load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from app.inference.pipeline import preprocess
from app.spec import ModelSpec
from bench.common import sample_pixels


def read_spec(path: Path) -> ModelSpec:
    proto = onnx.load(str(path))
    return ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props})


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--float", dest="float_file", type=Path, required=True)
    parser.add_argument("--uint8", dest="uint8_file", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    files = {"float32": args.float_file, "uint8": args.uint8_file}
    specs = {k: read_spec(p) for k, p in files.items()}
    pixels = sample_pixels(specs["uint8"].name, specs["uint8"].input_channels)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {
        k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
        for k, p in files.items()
    }
    feeds = {k: preprocess(pixels, s) for k, s in specs.items()}
    outputs = {k: sessions[k].run(None, {specs[k].input_name: feeds[k]}) for k in files}
    times: dict[str, dict[str, list[float]]] = {k: {} for k in files}
    for _ in range(args.rounds):
        for k, spec in specs.items():
            run, name, feed, labels = sessions[k], spec.input_name, feeds[k], outputs[k][1]
            stages: dict[str, tuple[Callable[[], object], int]] = {
                "preprocess": (partial(preprocess, pixels, spec), 20),
                "session": (partial(run.run, None, {name: feed}), 1),
                "labels_to_uint8": (partial(np.ascontiguousarray, labels[0], np.uint8), 20),
            }
            for stage, (fn, reps) in stages.items():
                times[k].setdefault(stage, []).append(median_ms(fn, reps))
    print(f"{specs['uint8'].name}, image {pixels.shape}, {args.rounds} rounds alternating")
    print("| stage | float32 input | uint8 input | ratio |\n| --- | --- | --- | --- |")
    for stage in times["float32"]:
        a = statistics.median(times["float32"][stage])
        b = statistics.median(times["uint8"][stage])
        print(f"| {stage} ms | {a:.3f} | {b:.3f} | {a / b:.2f}x |")
    a_bytes, b_bytes = feeds["float32"].nbytes, feeds["uint8"].nbytes
    print(f"| bytes fed | {a_bytes:,} | {b_bytes:,} | {a_bytes / b_bytes:.2f}x |")
    a_lab, b_lab = outputs["float32"][1].nbytes, outputs["uint8"][1].nbytes
    print(f"| labels bytes out | {a_lab:,} | {b_lab:,} | {a_lab / b_lab:.2f}x |")


if __name__ == "__main__":
    main()
