"""Overlap-tile inference (Ronneberger et al. 2015, fig. 2) for images of any size.

The image is mirror-padded, cut into square tiles of one fixed size that overlap by
`overlap` pixels of context on each side, run through the session in fixed-shape batches,
and only each tile's centre (`size - 2 * overlap` square) is written into the result.
Peak memory grows with the tile batch and the uint8 output maps, never with float logits
for the whole image.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from app.errors import InvalidParameter
from app.imaging.decode import to_channels
from app.inference.pipeline import Segmentation, confidence_map, run_probabilities
from app.inference.registry import ModelEntry
from app.spec import ModelSpec

Tiling = Literal["auto", "on", "off"]
DEFAULT_TILE, DEFAULT_OVERLAP = 512, 64  # for models whose metadata has no tile defaults


@dataclass(frozen=True)
class TilePlan:
    size: int
    overlap: int
    batch: int = 1

    @property
    def core(self) -> int:
        return self.size - 2 * self.overlap

    def grid(self, height: int, width: int) -> list[tuple[int, int]]:
        """Top-left corners, in image coordinates, of each tile's centre."""
        rows, cols = math.ceil(height / self.core), math.ceil(width / self.core)
        return [(r * self.core, c * self.core) for r in range(rows) for c in range(cols)]


def choose_plan(
    spec: ModelSpec,
    height: int,
    width: int,
    whole_image_max_pixels: int,
    tiling: Tiling = "auto",
    size: int | None = None,
    overlap: int | None = None,
) -> TilePlan | None:
    """The tiling for one request, or None for a single whole-image pass."""
    if tiling == "off" or (tiling == "auto" and height * width <= whole_image_max_pixels):
        if height * width > whole_image_max_pixels:
            raise InvalidParameter(
                f"tiling=off allows at most {whole_image_max_pixels} pixels in one pass; "
                "use tiling=auto"
            )
        return None
    default = spec.tile
    size = size or (default.size if default else DEFAULT_TILE)
    overlap = overlap if overlap is not None else (default.overlap if default else DEFAULT_OVERLAP)
    m = spec.size_multiple
    if size % m or overlap % m:
        raise InvalidParameter(
            f"tile_size and tile_overlap must be multiples of {m} for this model"
        )
    if 2 * overlap >= size:
        raise InvalidParameter("tile_overlap must be less than half of tile_size")
    return TilePlan(size, overlap, default.batch if default else 1)


def mirror_pad_hwc(pixels: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Mirror padding of (H, W, C) on every side, repeated reflection for wide pads;
    edge repetition along a side of one pixel (nothing to mirror)."""
    widths = ((top, bottom), (left, right), (0, 0))
    if min(pixels.shape[:2]) > 1:
        return np.pad(pixels, widths, mode="reflect")
    return np.pad(pixels, widths, mode="edge")


def segment_tiled(
    model: ModelEntry,
    pixels: np.ndarray,
    plan: TilePlan,
    confidence: bool = False,
    tta: bool = False,
) -> Segmentation:
    assert model.spec is not None and model.session is not None
    spec, session = model.spec, model.session
    started = time.perf_counter()
    image = to_channels(pixels, spec.input_channels)  # (H, W, C) uint8
    height, width = image.shape[:2]
    o, core, size = plan.overlap, plan.core, plan.size
    corners = plan.grid(height, width)
    rows = corners[-1][0] // core + 1
    cols = corners[-1][1] // core + 1
    padded = mirror_pad_hwc(image, o, rows * core - height + o, o, cols * core - width + o)
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    scale = (1 / (np.asarray(spec.std, np.float32) * 255))[:, None, None]
    labels = np.empty((height, width), np.uint8)
    confidences = np.empty((height, width), np.uint8) if confidence else None
    use_labels_output = bool(spec.labels_output) and not (confidence or tta)
    batch = np.empty((plan.batch, spec.input_channels, size, size), np.float32)
    preparing = inferring = 0.0
    for first in range(0, len(corners), plan.batch):
        chunk = corners[first : first + plan.batch]
        tick = time.perf_counter()
        for i, (y, x) in enumerate(chunk):
            tile = padded[y : y + size, x : x + size].transpose(2, 0, 1)
            np.multiply(tile, scale, out=batch[i])
            batch[i] -= mean * scale * 255
        batch[len(chunk) :] = batch[0]  # a short last batch keeps the session's input shape
        tock = time.perf_counter()
        if use_labels_output:
            (tile_labels,) = session.run([spec.labels_output], {spec.input_name: batch})
            tile_probs = None
        else:
            tile_probs = run_probabilities(model, batch, tta)
            tile_labels = tile_probs.argmax(1)
        for i, (y, x) in enumerate(chunk):
            h, w = min(core, height - y), min(core, width - x)
            labels[y : y + h, x : x + w] = tile_labels[i, o : o + h, o : o + w]
            if confidences is not None and tile_probs is not None:
                centre = tile_probs[i, :, o : o + h, o : o + w]
                confidences[y : y + h, x : x + w] = confidence_map(centre)
        preparing += tock - tick
        inferring += time.perf_counter() - tock
    setup = (time.perf_counter() - started) - preparing - inferring
    return Segmentation(
        labels,
        {"preprocess": (setup + preparing) * 1000, "inference": inferring * 1000},
        confidence=confidences,
        tiles=len(corners),
    )
