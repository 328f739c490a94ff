from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response
from pydantic import BaseModel

from app.api.body import read_image_bytes
from app.api.deps import AdmissionDep, ExecutorDep, MetricsDep, RegistryDep, SettingsDep
from app.errors import PROBLEM_CONTENT, InvalidParameter, ProblemError
from app.imaging.decode import decode_image
from app.imaging.encode import (
    MAX_LIST_PIXELS,
    class_map_json,
    class_stats,
    grey_png,
    overlay_png,
    palette_png,
)
from app.inference.pipeline import Segmentation, segment
from app.inference.registry import ModelEntry
from app.inference.tiling import Tiling, choose_plan, segment_tiled
from app.schemas import ClassStat, ModelRef, SegmentationResponse

router = APIRouter(prefix="/v1/models", tags=["segmentation"])

OutputFormat = Literal["png", "json", "overlay", "confidence"]

REQUEST_BODY = {
    "required": True,
    "description": "The image: a raw body with an image content type, or multipart field `image`.",
    "content": {
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/tiff": {"schema": {"type": "string", "format": "binary"}},
        "image/webp": {"schema": {"type": "string", "format": "binary"}},
        "image/bmp": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary"}},
            }
        },
    },
}


class NotAcceptable(ProblemError):
    status, slug = 406, "not-acceptable"


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` inlined: embedded in a response entry, the
    `#/$defs/...` references would point nowhere in the OpenAPI document."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def choose_format(query: OutputFormat | None, accept: str | None) -> OutputFormat:
    """The `format` query parameter wins; else the Accept header; else png."""
    if query is not None:
        return query
    if not accept:
        return "png"
    ranked = []
    for position, item in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        ranked.append((-q, position, media.lower()))
    for negative_q, _, media in sorted(ranked):
        if negative_q == 0:
            break
        if media in ("image/png", "image/*", "*/*"):
            return "png"
        if media == "application/json":
            return "json"
    raise NotAcceptable("this endpoint answers image/png or application/json (or use ?format=)")


@dataclass(frozen=True)
class Options:
    fmt: OutputFormat
    alpha: float
    encoding: str
    tiling: Tiling
    tile_size: int | None
    tile_overlap: int | None
    tta: bool


def _run(
    model: ModelEntry,
    pixels: Any,
    options: Options,
    whole_image_max: int,
    stop: threading.Event | None = None,
) -> Segmentation:
    assert model.spec is not None
    height, width = pixels.shape[:2]
    plan = choose_plan(
        model.spec, height, width, whole_image_max,
        options.tiling, options.tile_size, options.tile_overlap, model.tile_batch,
    )  # fmt: skip
    confidence = options.fmt == "confidence"
    if plan is None:
        return segment(model, pixels, confidence=confidence, tta=options.tta)
    should_stop = stop.is_set if stop is not None else None
    return segment_tiled(
        model, pixels, plan, confidence=confidence, tta=options.tta, should_stop=should_stop
    )


def _render(
    model: ModelEntry,
    data: bytes,
    max_pixels: int,
    whole_image_max: int,
    options: Options,
    stop: threading.Event | None = None,
) -> tuple[bytes, str, dict[str, float], int]:
    """Decode, segment, encode: all CPU work, run in the inference executor."""
    assert model.spec is not None
    spec = model.spec
    fmt = options.fmt
    started = time.perf_counter()
    image = decode_image(data, max_pixels)
    if (
        fmt == "json"
        and options.encoding == "list"
        and image.width * image.height > MAX_LIST_PIXELS
    ):
        raise InvalidParameter(
            f"encoding=list is limited to {MAX_LIST_PIXELS} pixels; use encoding=rle"
        )
    decoded = time.perf_counter()
    result = _run(model, image.pixels, options, whole_image_max, stop)
    segmented = time.perf_counter()
    timings = {"decode": (decoded - started) * 1000, **result.timings_ms}
    if fmt == "png":
        body, media = palette_png(result.labels, spec.palette), "image/png"
    elif fmt == "confidence":
        assert result.confidence is not None
        body, media = grey_png(result.confidence), "image/png"
    elif fmt == "overlay":
        overlay = overlay_png(image.pixels, result.labels, spec.palette, options.alpha)
        body, media = overlay, "image/png"
    else:
        class_map = class_map_json(result.labels, options.encoding)
        stats = [ClassStat(**s) for s in class_stats(result.labels, spec.classes)]
        timings["encode"] = (time.perf_counter() - segmented) * 1000
        payload = SegmentationResponse(
            model=ModelRef(name=spec.name, version=spec.version),
            width=image.width,
            height=image.height,
            classes=spec.classes,
            class_map=class_map,
            stats=stats,
            providers=model.providers,
            tiles=result.tiles,
            timings_ms={k: round(v, 3) for k, v in timings.items()},
        )
        return payload.model_dump_json().encode(), "application/json", timings, result.tiles
    timings["encode"] = (time.perf_counter() - segmented) * 1000
    return body, media, timings, result.tiles


@router.post(
    "/{name}/segment",
    summary="Segment one image",
    description=(
        "Returns the per-pixel class map at the input's resolution: `png` (default) is a "
        "palette PNG whose pixel values are class indices, `json` gives the map run-length "
        "encoded with per-class statistics, `overlay` blends the coloured map into the input. "
        "The format comes from `format`, else from the Accept header."
    ),
    openapi_extra={"requestBody": REQUEST_BODY},
    response_class=Response,
    responses={
        200: {
            "content": {
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": inline_schema(SegmentationResponse)},
            },
            "description": "The class map.",
        },
        400: {"description": "Undecodable image", **PROBLEM_CONTENT},
        404: {"description": "Unknown model", **PROBLEM_CONTENT},
        406: {"description": "Accept header allows no output format", **PROBLEM_CONTENT},
        413: {"description": "Body or declared image size above the limits", **PROBLEM_CONTENT},
        504: {"description": "No result within SEG_REQUEST_TIMEOUT_S", **PROBLEM_CONTENT},
        415: {"description": "Unsupported content type", **PROBLEM_CONTENT},
        422: {"description": "Invalid parameters", **PROBLEM_CONTENT},
        503: {"description": "Model not ready, or overloaded (see Retry-After)", **PROBLEM_CONTENT},
    },
)
async def segment_image(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    executor: ExecutorDep,
    metrics: MetricsDep,
    admission: AdmissionDep,
    name: Annotated[str, Path(description="Model name", examples=["unet-isbi"])],
    format: Annotated[
        OutputFormat | None, Query(description="png, json, overlay or confidence")
    ] = None,
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="Overlay opacity")] = 0.5,
    encoding: Annotated[
        Literal["rle", "list"], Query(description="JSON class-map encoding")
    ] = "rle",
    tiling: Annotated[
        Tiling,
        Query(description="auto: overlap-tile above SEG_WHOLE_IMAGE_MAX_PIXELS; on; off"),
    ] = "auto",
    tile_size: Annotated[
        int | None, Query(ge=64, le=2048, description="Tile side (default: the model's)")
    ] = None,
    tile_overlap: Annotated[
        int | None, Query(ge=0, le=512, description="Context pixels per tile side")
    ] = None,
    tta: Annotated[
        bool, Query(description="Average over the 8 flips/rotations (8x the compute)")
    ] = False,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    options = Options(
        choose_format(format, accept), alpha, encoding, tiling, tile_size, tile_overlap, tta
    )
    model = registry.get(name)
    data = await read_image_bytes(request, settings.max_upload_bytes)
    stop = threading.Event()  # set when nobody waits for the answer any more
    body, media, timings, tiles = await admission.run(
        executor,
        _render,
        model,
        data,
        settings.max_pixels,
        settings.whole_image_max_pixels,
        options,
        stop,
        stop=stop,
        disconnected=request.is_disconnected,
    )
    assert model.spec is not None
    metrics.inference.labels(model.spec.name).observe(timings["inference"] / 1000)
    return Response(
        body,
        media_type=media,
        headers={
            "X-Model-Name": model.spec.name,
            "X-Model-Version": model.spec.version,
            "X-Inference-Time-Ms": f"{timings['inference']:.2f}",
            "X-Tiles": str(tiles),
            "Server-Timing": ", ".join(f"{k};dur={v:.2f}" for k, v in timings.items()),
        },
    )
