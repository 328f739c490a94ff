"""Decode -> plan -> infer -> encode for one image: the one code path behind every route."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np

from app import tracing
from app.imaging.decode import decode_image
from app.imaging.georef import read_georeference
from app.inference.pipeline import Segmentation, segment
from app.inference.registry import ModelEntry
from app.inference.tiling import Tiling, choose_plan, segment_tiled
from app.service.budget import Limits, check_image
from app.service.render import check_renderable, render

OutputFormat = Literal["png", "json", "overlay", "confidence", "coco", "geojson"]
ClassMapEncoding = Literal["rle", "list"]


@dataclass(frozen=True)
class SegmentOptions:
    """What one request asks for; the defaults are the endpoint's."""

    format: OutputFormat = "png"
    alpha: float = 0.5  # overlay opacity
    encoding: ClassMapEncoding = "rle"  # JSON class-map encoding
    tiling: Tiling = "auto"
    tile_size: int | None = None  # default: the model's metadata
    tile_overlap: int | None = None
    tta: bool = False  # average over the 8 flips/rotations
    simplify: float = 0.0  # GeoJSON Douglas-Peucker tolerance in pixels (0: exact)


@dataclass(frozen=True)
class SegmentResult:
    """An encoded answer and what the response headers report about it."""

    body: bytes
    media_type: str
    width: int
    height: int
    tiles: int  # session inputs the image was cut into
    timings_ms: dict[str, float]  # decode, preprocess, inference, encode


def infer_pixels(
    model: ModelEntry,
    pixels: np.ndarray,
    limits: Limits,
    *,
    tiling: Tiling = "auto",
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    tta: bool = False,
    confidence: bool = False,
    probabilities: bool = False,
    stop: threading.Event | None = None,
) -> Segmentation:
    """Class map (and, when asked, confidence or probabilities) for decoded uint8 pixels,
    (H, W) grey or (H, W, 3) RGB: one pass up to `whole_image_max_pixels` padded pixels,
    overlap-tiles above. Work stops between tiles and views once `stop` is set."""
    height, width = pixels.shape[:2]
    check_image(model.spec, height, width, limits)
    plan = choose_plan(
        model.spec, height, width, limits.whole_image_max_pixels,
        tiling, tile_size, tile_overlap, model.tile_batch,
    )  # fmt: skip
    should_stop = stop.is_set if stop is not None else None
    if plan is None:
        return segment(
            model, pixels, probabilities=probabilities, confidence=confidence, tta=tta,
            should_stop=should_stop,
        )  # fmt: skip
    return segment_tiled(
        model, pixels, plan, confidence=confidence, probabilities=probabilities, tta=tta,
        should_stop=should_stop,
    )  # fmt: skip


def segment_file(
    model: ModelEntry,
    source: bytes | BinaryIO,
    options: SegmentOptions,
    limits: Limits,
    stop: threading.Event | None = None,
) -> SegmentResult:
    """An encoded image (bytes or a seekable binary file) to the encoded answer `options`
    ask for. CPU work from start to end: callers run it in the inference executor."""
    started = time.perf_counter()
    source = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source

    def renderable(width: int, height: int) -> None:
        # An answer too large for the budget is refused from the header, before decoding.
        check_renderable(height, width, options, limits)

    with tracing.span("decode") as decoding:
        image = decode_image(source, limits.max_pixels, renderable)
        decoding.set_attribute("segserve.image.width", image.width)
        decoding.set_attribute("segserve.image.height", image.height)
    georef = read_georeference(source) if options.format == "geojson" else None
    decoded = time.perf_counter()
    result = infer_pixels(
        model, image.pixels, limits,
        tiling=options.tiling, tile_size=options.tile_size, tile_overlap=options.tile_overlap,
        tta=options.tta, confidence=options.format == "confidence", stop=stop,
    )  # fmt: skip
    timings = {"decode": (decoded - started) * 1000, **result.timings_ms}
    with tracing.span("encode", {"segserve.format": options.format}):
        body, media_type = render(model, image.pixels, result, options, limits, timings, georef)
    return SegmentResult(body, media_type, image.width, image.height, result.tiles, timings)
