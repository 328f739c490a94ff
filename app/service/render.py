"""A segmentation to the answer's bytes: palette PNG, confidence PNG, overlay or JSON."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from app.errors import InvalidParameter
from app.imaging.encode import (
    MAX_LIST_PIXELS,
    class_stats,
    grey_png,
    overlay_png,
    palette_png,
    rle_json_text,
    rle_text_bytes,
)
from app.imaging.georef import GeoReference
from app.imaging.masks.coco import coco_document, coco_size_bound
from app.imaging.masks.geojson import feature_collection, geojson_size_bound
from app.inference.pipeline import Segmentation
from app.inference.registry import ModelEntry
from app.schemas import ClassStat, ModelRef, SegmentationResponse
from app.service.budget import Limits, check_answer
from app.spec import ModelSpec

if TYPE_CHECKING:
    from app.service.segmenting import SegmentOptions

COUNTS_PLACEHOLDER = '"counts":[]'


def check_renderable(height: int, width: int, options: SegmentOptions, limits: Limits) -> None:
    """Refuse, before any inference, an answer that cannot fit the budget."""
    pixels = height * width
    if options.format == "json" and options.encoding == "list" and pixels > MAX_LIST_PIXELS:
        raise InvalidParameter(
            f"encoding=list is limited to {MAX_LIST_PIXELS} pixels; use encoding=rle"
        )
    if options.format == "overlay":
        check_answer(3 * pixels, f"an overlay of {width}x{height}", limits, "use format=png")
    elif options.format in ("png", "confidence"):
        check_answer(pixels, f"a PNG of {width}x{height}", limits)


def render(
    model: ModelEntry,
    pixels: np.ndarray,
    result: Segmentation,
    options: SegmentOptions,
    limits: Limits,
    timings: dict[str, float],
    georef: GeoReference | None = None,
) -> tuple[bytes, str]:
    """Body and media type; adds the encode time to `timings`. `georef`: the GeoTIFF's
    map coordinates for format=geojson."""
    spec = model.spec
    started = time.perf_counter()
    if options.format == "json":
        body = _json(model, result, options, limits, timings, started)
        return body, "application/json"
    if options.format in ("coco", "geojson"):
        body, media_type = _mask_answer(spec, result.labels, options, limits, georef)
        timings["encode"] = (time.perf_counter() - started) * 1000
        return body, media_type
    if options.format == "png":
        body = palette_png(result.labels, spec.palette)
    elif options.format == "confidence":
        assert result.confidence is not None
        body = grey_png(result.confidence)
    else:
        body = overlay_png(pixels, result.labels, spec.palette, options.alpha)
    timings["encode"] = (time.perf_counter() - started) * 1000
    return body, "image/png"


def _json(
    model: ModelEntry,
    result: Segmentation,
    options: SegmentOptions,
    limits: Limits,
    timings: dict[str, float],
    started: float,
) -> bytes:
    spec, labels = model.spec, result.labels
    height, width = labels.shape
    if options.encoding == "list":
        class_map: dict[str, object] = {"encoding": "list", "rows": labels.tolist()}
        counts_text = None
    else:
        # The runs' text is sized before it is built: a noisy map has a run per pixel.
        check_answer(rle_text_bytes(labels), f"the run-length class map of {width}x{height}",
                     limits, "use format=png")  # fmt: skip
        class_map = {"encoding": "rle", "order": "row-major", "counts": []}
        counts_text = rle_json_text(labels)
    stats = [ClassStat(**s) for s in class_stats(labels, spec.classes)]
    timings["encode"] = (time.perf_counter() - started) * 1000
    payload = SegmentationResponse(
        model=ModelRef(name=spec.name, version=spec.version),
        width=width,
        height=height,
        classes=spec.classes,
        class_map=class_map,
        stats=stats,
        providers=model.providers,
        tiles=result.tiles,
        timings_ms={k: round(v, 3) for k, v in timings.items()},
    )
    text = payload.model_dump_json()
    if counts_text is not None:
        # The runs are spliced in as text: a list of Python ints would take ~36 bytes each.
        head, tail = text.split(COUNTS_PLACEHOLDER, 1)
        return b"".join((head.encode(), b'"counts":[', counts_text, b"]", tail.encode()))
    return text.encode()


def _mask_answer(
    spec: ModelSpec,
    labels: np.ndarray,
    options: SegmentOptions,
    limits: Limits,
    georef: GeoReference | None,
) -> tuple[bytes, str]:
    """COCO RLE or GeoJSON polygons, each sized by an upper estimate before it is built."""
    height, width = labels.shape
    header = {"model": {"name": spec.name, "version": spec.version}, "width": width,
              "height": height}  # fmt: skip
    if options.format == "coco":
        size = coco_size_bound(labels, spec.classes)
        check_answer(size, f"the COCO RLE of {width}x{height}", limits, "use format=png")
        return coco_document(labels, spec.classes, header), "application/json"
    size = geojson_size_bound(labels, spec.classes, georef is not None)
    check_answer(size, f"the GeoJSON polygons of {width}x{height}", limits,
                 "use format=png or format=coco")  # fmt: skip
    body = feature_collection(labels, spec.classes, options.simplify, georef, header)
    return body, "application/geo+json"
