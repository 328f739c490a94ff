from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Executor
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from pydantic import BaseModel

from app import tracing
from app.api.body import DisconnectWatch, in_memory, read_image_upload
from app.config import Settings
from app.errors import PROBLEM_CONTENT, ProblemError
from app.imaging.decode import declared_pixels
from app.inference.admission import Admission
from app.inference.pipeline import require_scores
from app.inference.registry import ModelRegistry
from app.inference.tiling import Tiling
from app.observability import Metrics
from app.schemas import CocoDocument, SegmentationResponse
from app.service import Limits, OutputFormat, SegmentOptions, segment_file
from app.service.segmenting import ClassMapEncoding

router = APIRouter(prefix="/v1/models", tags=["segmentation"])

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
        if media == "application/geo+json":
            return "geojson"
    raise NotAcceptable(
        "this endpoint answers image/png, application/json or application/geo+json "
        "(or use ?format=)"
    )


SEGMENT_ROUTE: dict[str, Any] = dict(
    description=(
        "Returns the per-pixel class map at the input's resolution: `png` (default) is a "
        "palette PNG whose pixel values are class indices, `json` gives the map run-length "
        "encoded with per-class statistics, `overlay` blends the coloured map into the input. "
        "`coco` gives a COCO dataset of the image with one annotation per class present "
        "(pycocotools' compressed RLE, column-major, with area and bbox; category id = class "
        "index); `geojson` a FeatureCollection with one MultiPolygon (with holes) per class, "
        "in pixel coordinates (pixel edges on integers, y down) or, for a georeferenced "
        "GeoTIFF, in its map coordinates and CRS, simplified by `simplify`. "
        "The format comes from `format`, else from the Accept header."
    ),
    response_class=Response,
    responses={
        200: {
            "content": {
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {
                    "schema": {
                        "anyOf": [inline_schema(SegmentationResponse), inline_schema(CocoDocument)]
                    }
                },
                "application/geo+json": {"schema": {"type": "object"}},
            },
            "description": "The class map.",
        },
        400: {"description": "Undecodable image", **PROBLEM_CONTENT},
        404: {"description": "Unknown model", **PROBLEM_CONTENT},
        406: {"description": "Accept header allows no output format", **PROBLEM_CONTENT},
        413: {"description": "Body or declared image size above the limits", **PROBLEM_CONTENT},
        504: {"description": "No result within SEG_REQUEST_TIMEOUT_S", **PROBLEM_CONTENT},
        415: {"description": "Unsupported content type", **PROBLEM_CONTENT},
        422: {
            "description": "Invalid parameters; confidence or tta from a model that answers "
            "labels only (scores-unavailable)",
            **PROBLEM_CONTENT,
        },
        503: {"description": "Model not ready, or overloaded (see Retry-After)", **PROBLEM_CONTENT},
    },
)
VERSION_PARAMETER = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "Model version, as listed by GET /v1/models",
    "schema": {"type": "string"},
}


@router.post(
    "/{name}/segment",
    summary="Segment one image",
    openapi_extra={"requestBody": REQUEST_BODY},
    **SEGMENT_ROUTE,
)
@router.post(
    "/{name}/versions/{version}/segment",
    summary="Segment one image with one version of the model",
    openapi_extra={"requestBody": REQUEST_BODY, "parameters": [VERSION_PARAMETER]},
    **SEGMENT_ROUTE,
)
async def segment_image(
    request: Request,
    name: Annotated[str, Path(description="Model name", examples=["unet-isbi"])],
    format: Annotated[
        OutputFormat | None,
        Query(description="png, json, overlay, confidence, coco or geojson"),
    ] = None,
    simplify: Annotated[
        float,
        Query(ge=0.0, le=1e6, description="GeoJSON Douglas-Peucker tolerance, pixels (0: exact)"),
    ] = 0.0,
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="Overlay opacity")] = 0.5,
    encoding: Annotated[ClassMapEncoding, Query(description="JSON class-map encoding")] = "rle",
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
    # The app's shared objects straight from its state: FastAPI dependencies, even async
    # ones, cost about 20 us each per request on the event loop.
    state = request.app.state
    registry: ModelRegistry = state.registry
    settings: Settings = state.settings
    executor: Executor = state.executor
    metrics: Metrics = state.metrics
    admission: Admission = state.admission
    options = SegmentOptions(
        choose_format(format, accept), alpha, encoding, tiling, tile_size, tile_overlap, tta,
        simplify,
    )  # fmt: skip
    model = registry.get(name, request.path_params.get("version"))  # the highest by default
    tracing.annotate_model(model.name, model.version)
    # A labels-only model cannot answer confidence or TTA: refused before the upload is read.
    require_scores(model.spec, confidence=options.format == "confidence", tta=tta)
    admission.check_capacity()  # refuse before reading the body when the queue is full
    upload = await read_image_upload(request, settings)
    disconnected = DisconnectWatch(request)
    try:
        # The pixel budget (SEG_MAX_PENDING_PIXELS) counts the size the header declares; an
        # upload in memory (up to SEG_SPOOL_BYTES) is read here, one on disk off the loop.
        if in_memory(upload):
            pixels = declared_pixels(upload)
        else:
            pixels = await asyncio.to_thread(declared_pixels, upload)
        stop = threading.Event()  # set when nobody waits for the answer any more
        result = await admission.run(
            executor,
            tracing.bind(segment_file),  # the request's span into the executor thread
            model,
            upload,
            options,
            Limits.from_settings(settings),
            stop,
            stop=stop,
            disconnected=disconnected,
            pixels=pixels,
        )
    finally:
        disconnected.close()
        upload.close()
    timings = result.timings_ms
    metrics.inference.labels(model.spec.name).observe(timings["inference"] / 1000)
    return Response(
        result.body,
        media_type=result.media_type,
        headers={
            "X-Model-Name": model.spec.name,
            "X-Model-Version": model.spec.version,
            "X-Inference-Time-Ms": f"{timings['inference']:.2f}",
            "X-Tiles": str(result.tiles),
            "Server-Timing": ", ".join(f"{k};dur={v:.2f}" for k, v in timings.items()),
        },
    )
