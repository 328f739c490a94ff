"""Pre-processing, the session run and post-processing for one image."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from app.imaging.decode import to_channels
from app.inference.registry import ModelEntry
from app.spec import ModelSpec


@dataclass
class Segmentation:
    labels: np.ndarray  # (H, W) uint8 class indices at the input's resolution
    timings_ms: dict[str, float] = field(default_factory=dict)
    probabilities: np.ndarray | None = None  # (K, H, W) float32 softmax, when asked for


def mirror_pad(x: np.ndarray, bottom: int, right: int) -> np.ndarray:
    """Pad (C, H, W) at the bottom/right by mirroring; edge-repeat for 1-pixel sides."""
    if not bottom and not right:
        return x
    if min(x.shape[1:]) > 1:
        return np.pad(x, ((0, 0), (0, bottom), (0, right)), mode="reflect")
    return np.pad(x, ((0, 0), (0, bottom), (0, right)), mode="edge")


def preprocess(pixels: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Canonical uint8 pixels to the float32 (1, C, H', W') input, H' and W' padded."""
    chw = to_channels(pixels, spec.input_channels).transpose(2, 0, 1)
    x = chw.astype(np.float32) * np.float32(1 / 255)
    x -= np.asarray(spec.mean, np.float32)[:, None, None]
    x /= np.asarray(spec.std, np.float32)[:, None, None]
    m = spec.size_multiple
    h, w = x.shape[1:]
    return mirror_pad(x, (-h) % m, (-w) % m)[None]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class axis (0) of (K, H, W) logits."""
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    probabilities: np.ndarray = (shifted / shifted.sum(axis=0, keepdims=True)).astype(np.float32)
    return probabilities


def segment(model: ModelEntry, pixels: np.ndarray, probabilities: bool = False) -> Segmentation:
    """Class map for one decoded image; uses the graph's argmax output when it has one."""
    assert model.spec is not None and model.session is not None
    spec = model.spec
    h, w = pixels.shape[:2]
    started = time.perf_counter()
    x = preprocess(pixels, spec)
    prepared = time.perf_counter()
    probs = None
    if spec.labels_output and not probabilities:
        (out,) = model.session.run([spec.labels_output], {spec.input_name: x})
        labels = out[0, :h, :w]
    else:
        (logits,) = model.session.run([spec.logits_output], {spec.input_name: x})
        labels = logits[0, :, :h, :w].argmax(0)
        if probabilities:
            probs = softmax(logits[0, :, :h, :w])
    done = time.perf_counter()
    return Segmentation(
        np.ascontiguousarray(labels, dtype=np.uint8),
        {"preprocess": (prepared - started) * 1000, "inference": (done - prepared) * 1000},
        probs,
    )
