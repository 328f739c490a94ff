"""The self-check of `segserve import` (export/importer.py): the wrapped graph answers the
original model's class map on a probe, within AGREEMENT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from app.spec import ModelSpec
from export.importer_inputs import ImportProblem
from export.importer_labels import check_label_range, nearest
from export.importer_probe import PROBE_BASE, Probe, align, load_session, numpy_dtype

AGREEMENT = 0.99  # wrapped vs original class map on the self-check probe


def self_check(
    session: ort.InferenceSession, wrapped: onnx.ModelProto, probe: Probe, spec: ModelSpec
) -> None:
    """The wrapped graph answers the original's class map on a probe: the original fed the
    service's numpy normalisation, its scores upsampled bilinearly in numpy."""
    if probe.fixed is not None:
        h, w = probe.fixed
    else:
        h, w = align(PROBE_BASE, spec.size_multiple), align(PROBE_BASE + 32, spec.size_multiple)
    pixels = np.random.default_rng(7).integers(0, 256, (1, probe.channels, h, w), np.uint8)
    canonical = load_session(wrapped.SerializeToString(), Path("the wrapped model"))
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    x = (pixels.astype(np.float32) / np.float32(255) - mean) / std
    feed = x.transpose(0, 2, 3, 1) if probe.layout == "NHWC" else x
    dtype = numpy_dtype(session.get_inputs()[0].type)
    scores = session.run([probe.output], {probe.input: feed.astype(dtype)})[0]
    if probe.kind == "labels":
        (labels,) = canonical.run(["labels"], {"image": pixels})
        if labels.shape != (1, h, w):
            raise ImportProblem(
                f"the wrapped model answered labels {labels.shape} for a {h}x{w} input "
                f"(expected (1, {h}, {w})): set --output/--layout"
            )
        original = (
            scores[0] if probe.labels_axis is None else scores[0].squeeze(probe.labels_axis - 1)
        )
        check_label_range(original, spec.num_classes, probe.output, "the self-check probe")
        want = nearest(original, h, w)
    else:
        logits, labels = canonical.run(["logits", "labels"], {"image": pixels})
        if logits.shape != (1, spec.num_classes, h, w) or labels.shape != (1, h, w):
            raise ImportProblem(
                f"the wrapped model answered {logits.shape} for a {h}x{w} input (expected "
                f"(1, {spec.num_classes}, {h}, {w})): set --output/--layout"
            )
        if probe.scores_layout == "NHWC":
            scores = scores.transpose(0, 3, 1, 2)
        want = bilinear(scores[0].astype(np.float32), h, w).argmax(0)
    agreement = float((want == labels[0]).mean())
    if agreement < AGREEMENT:
        raise ImportProblem(
            f"the wrapped model's class map agrees with the original's on only {agreement:.1%} "
            "of a probe's pixels: check --layout, --output and --output-kind"
        )


def bilinear(scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """(K, h, w) to (K, height, width) as torch's interpolate(bilinear, align_corners=False)
    and ONNX Resize(linear, half_pixel) do it."""

    def axis(out: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(out) + 0.5) * size / out - 0.5, 0, size - 1)
        low = np.floor(src).astype(np.int64)
        return low, np.minimum(low + 1, size - 1), (src - low).astype(np.float32)

    y0, y1, fy = axis(height, scores.shape[1])
    x0, x1, fx = axis(width, scores.shape[2])
    rows = scores[:, y0] * (1 - fy)[:, None] + scores[:, y1] * fy[:, None]
    out: np.ndarray = rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx
    return out
