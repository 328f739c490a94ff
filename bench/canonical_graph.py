"""An imported model's canonical graph versus the original graph with numpy around it.

    python -m bench.canonical_graph --model segformer-b0.onnx --classes 150 --size 512

The canonical graph (export/canonical.py, what `segserve import` writes) takes uint8
pixels and does the normalisation, the upsampling of the scores to the input size and the
argmax inside onnxruntime. The alternative design feeds the original graph float input
normalised in numpy (app/inference/pipeline.normalise, as the service does for float32
specs) and upsamples its scores in numpy (export/importer_check.bilinear, the same half-pixel
bilinear) before the argmax. Per request: one uint8 class map from one RGB image of
`--size` squared, the median of `--rounds` with the two designs alternating round by round
so they see the same load; `--threads` intra-op threads for both sessions. Prints
milliseconds and the ratio; checks that both give the same class map (bar near-ties).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.inference.pipeline import normalise
from export.importer import import_model
from export.importer_check import bilinear
from export.importer_inputs import ImportRequest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the original ONNX file")
    parser.add_argument("--classes", type=int, required=True, help="its number of classes")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as repo:
        names = [f"class{i}" for i in range(args.classes)]
        imported = import_model(
            ImportRequest(source=args.model, repo=Path(repo), name="bench", classes=names)
        )
        canonical_bytes = imported.path.read_bytes()
    spec, probe = imported.spec, imported.probe
    if probe.kind == "labels":
        parser.error("the model answers class labels only: there are no scores to compare")
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    cpu = ["CPUExecutionProvider"]
    canonical = ort.InferenceSession(canonical_bytes, options, providers=cpu)
    original = ort.InferenceSession(str(args.model), options, providers=cpu)
    pixels = np.random.default_rng(0).integers(0, 256, (3, args.size, args.size), np.uint8)

    def one_graph() -> np.ndarray:
        labels: np.ndarray = canonical.run(["labels"], {"image": pixels[None]})[0][0]
        return labels

    def graph_and_numpy() -> np.ndarray:
        x = normalise(pixels, spec)[None]
        if probe.layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        scores = original.run([probe.output], {probe.input: x})[0][0]
        if probe.scores_layout == "NHWC":
            scores = scores.transpose(2, 0, 1)
        if scores.shape[1:] != (args.size, args.size):
            scores = bilinear(scores, args.size, args.size)
        labels: np.ndarray = scores.argmax(0).astype(np.uint8)
        return labels

    same = float((one_graph() == graph_and_numpy()).mean())
    designs: dict[str, Callable[[], np.ndarray]] = {
        "canonical graph (uint8 in, resize+argmax inside)": one_graph,
        "original graph + numpy normalise/resize/argmax": graph_and_numpy,
    }
    samples: dict[str, list[float]] = {name: [] for name in designs}
    for _ in range(args.rounds):
        for name, fn in designs.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1000)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(
        f"model {args.model.name}: {spec.num_classes} classes, output stride {probe.stride:g}, "
        f"{args.size}x{args.size} RGB, {args.threads} threads, median of {args.rounds}"
    )
    for name, ms in medians.items():
        print(f"  {name}: {ms:.1f} ms")
    first, second = medians.values()
    print(f"  ratio numpy-around / canonical: {second / first:.2f}; same class map: {same:.4%}")


if __name__ == "__main__":
    main()
