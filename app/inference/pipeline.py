"""Pre-processing, the session run and post-processing for one image."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from app import tracing
from app.errors import ScoresUnavailable
from app.imaging.decode import to_channels
from app.inference.registry import ModelEntry
from app.spec import ModelSpec


@dataclass
class Segmentation:
    labels: np.ndarray  # (H, W) uint8 class indices at the input's resolution
    timings_ms: dict[str, float] = field(default_factory=dict)
    probabilities: np.ndarray | None = None  # (K, H, W) float32 softmax, when asked for
    confidence: np.ndarray | None = None  # (H, W) uint8: top-class probability x 255
    tiles: int = 1  # session inputs the image was cut into


def mirror_pad(x: np.ndarray, bottom: int, right: int) -> np.ndarray:
    """Pad (C, H, W) at the bottom/right by mirroring; edge-repeat for 1-pixel sides."""
    if not bottom and not right:
        return x
    if min(x.shape[1:]) > 1:
        return np.pad(x, ((0, 0), (0, bottom), (0, right)), mode="reflect")
    return np.pad(x, ((0, 0), (0, bottom), (0, right)), mode="edge")


def padded_size(spec: ModelSpec, height: int, width: int) -> tuple[int, int]:
    """Height and width after padding at the bottom/right to the model's size multiple."""
    m = spec.size_multiple
    return height + (-height) % m, width + (-width) % m


def padded_channels(pixels: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Canonical uint8 pixels to uint8 (C, H', W') for the model, mirror-padded at the
    bottom/right to its size multiple (padding before normalising: a quarter of the bytes)."""
    chw = to_channels(pixels, spec.input_channels).transpose(2, 0, 1)
    h, w = chw.shape[1:]
    padded_h, padded_w = padded_size(spec, h, w)
    return mirror_pad(chw, padded_h - h, padded_w - w)


def normalise(chw: np.ndarray, spec: ModelSpec, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (C, H, W) to float32 `(v / 255 - mean) / std`, written into `out` when given,
    else into a new C-contiguous array: numpy would otherwise lay the result out like `chw`,
    often a transposed (H, W, C) view, and the two in-place steps then ran 4x slower (RGB
    480x360: ~2.6 vs ~0.7 ms; bench/profile_stages.py)."""
    if out is None:
        out = np.empty(chw.shape, np.float32)
    x: np.ndarray = np.multiply(chw, np.float32(1 / 255), out=out, dtype=np.float32)
    x -= np.asarray(spec.mean, np.float32)[:, None, None]
    x /= np.asarray(spec.std, np.float32)[:, None, None]
    return x


def input_dtype(spec: ModelSpec) -> np.dtype[np.generic]:
    """The numpy dtype of the graph's input: uint8 pixels, or float32 normalised ones."""
    return np.dtype(np.uint8) if spec.input_dtype == "uint8" else np.dtype(np.float32)


def model_input(chw: np.ndarray, spec: ModelSpec, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (C, H, W) to what the graph takes: the pixels themselves when the graph
    normalises (`input_dtype` uint8), else `normalise`d; written into `out` when given."""
    if spec.input_dtype == "float32":
        return normalise(chw, spec, out)
    if out is None:
        return np.ascontiguousarray(chw)
    out[...] = chw
    return out


def preprocess(pixels: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Canonical uint8 pixels to the (1, C, H', W') graph input, H' and W' padded."""
    return model_input(padded_channels(pixels, spec), spec)[None]


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Softmax over the class axis of logits ((K, H, W): 0; (N, K, H, W): 1)."""
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    probabilities: np.ndarray = (shifted / shifted.sum(axis=axis, keepdims=True)).astype(np.float32)
    return probabilities


def run_session(
    model: ModelEntry, output: str, x: np.ndarray, batchable: bool = True
) -> np.ndarray:
    """`model.run`, traced as one `session_run` span (its wait in the dynamic batcher too)."""
    with tracing.span(
        "session_run",
        {
            "segserve.output": output,
            "segserve.input_shape": "x".join(map(str, x.shape)),
            "segserve.batchable": batchable,
        },
    ):
        return model.run(output, x, batchable)


def require_scores(
    spec: ModelSpec, probabilities: bool = False, confidence: bool = False, tta: bool = False
) -> None:
    """Refuse (422 scores-unavailable) what needs per-class scores from a model whose graph
    answers class labels only; nothing when nothing of the kind is asked or there are scores."""
    wants = {"probabilities": probabilities, "confidence": confidence, "tta": tta}
    asked = [what for what, wanted in wants.items() if wanted]
    if asked and spec.logits_output is None:
        raise ScoresUnavailable(
            f"model {spec.name!r} version {spec.version} answers class labels only (its graph "
            f"has no per-class scores output), so {' and '.join(asked)} cannot be computed: "
            "ask for the class map alone (format png, json, overlay, coco or geojson; the v2 "
            "output 'labels') without tta"
        )


class Stopped(Exception):
    """Work stopped between session runs because nobody waits for the answer any more."""


def run_probabilities(
    model: ModelEntry,
    x: np.ndarray,
    tta: bool = False,
    batchable: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Softmax (N, K, H, W) for a preprocessed batch. With `tta`, the average over the 8
    flips and 90-degree rotations of the input (the U-Net paper's test-time augmentation),
    each mapped back before averaging; `should_stop` is asked before each view."""
    spec = model.spec
    require_scores(spec, probabilities=not tta, tta=tta)
    logits = spec.logits_output
    assert logits is not None  # require_scores refused a labels-only model

    def probabilities(batch: np.ndarray) -> np.ndarray:
        return softmax(run_session(model, logits, batch, batchable), axis=1)

    if not tta:
        return probabilities(x)
    total = np.zeros((x.shape[0], spec.num_classes, *x.shape[2:]), np.float32)
    for flip in (False, True):
        flipped = x[..., ::-1] if flip else x
        for turns in range(4):
            if should_stop is not None and should_stop():
                raise Stopped(f"stopped after {4 * flip + turns} of 8 test-time views")
            view = np.ascontiguousarray(np.rot90(flipped, turns, axes=(2, 3)))
            back = np.rot90(probabilities(view), -turns, axes=(2, 3))
            total += back[..., ::-1] if flip else back
    total /= 8
    return total


def confidence_map(probabilities: np.ndarray) -> np.ndarray:
    """Top-class probability (K, H, W) -> (H, W) uint8, 255 = certain."""
    top = probabilities.max(axis=0)
    return np.asarray(np.rint(top * 255), dtype=np.uint8)


def segment(
    model: ModelEntry,
    pixels: np.ndarray,
    probabilities: bool = False,
    confidence: bool = False,
    tta: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> Segmentation:
    """Class map for one decoded image in one pass; uses the graph's argmax output when
    nothing else is asked for (no float logits leave the session then)."""
    spec = model.spec
    require_scores(spec, probabilities, confidence, tta)
    h, w = pixels.shape[:2]
    started = time.perf_counter()
    with tracing.span("preprocess"):
        x = preprocess(pixels, spec)
    prepared = time.perf_counter()
    probs = confidences = None
    if spec.labels_output and not (probabilities or confidence or tta):
        labels = run_session(model, spec.labels_output, x)[0, :h, :w]
    else:
        full = run_probabilities(model, x, tta, should_stop=should_stop)[0, :, :h, :w]
        labels = full.argmax(0)
        probs = np.ascontiguousarray(full) if probabilities else None
        confidences = confidence_map(full) if confidence else None
    done = time.perf_counter()
    return Segmentation(
        np.ascontiguousarray(labels, dtype=np.uint8),
        {"preprocess": (prepared - started) * 1000, "inference": (done - prepared) * 1000},
        probs,
        confidences,
    )
