"""Open Inference Protocol (KServe v2) beside /v1, so Triton/KServe clients work unchanged.

Inputs: `image` (UINT8, [N, H, W, C] with C 1 or 3) or `image_bytes` (BYTES, [1], an
encoded image file). Outputs: `labels` (UINT8, [N, H, W]) and, when asked for,
`probabilities` (FP32, [N, K, H, W]). Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app import tracing
from app.api.body import read_limited
from app.api.deps import AdmissionDep, ExecutorDep, MetricsDep, RegistryDep, SettingsDep
from app.api.routes import repository
from app.config import Settings
from app.errors import V2_ERROR_CONTENT, ModelNotReady
from app.inference.registry import ModelEntry, ModelRegistry
from app.inference.v2_codec import InferenceRequest, encode_response, parse_request
from app.main_info import SERVER_NAME, VERSION
from app.service import v2_infer

router = APIRouter(
    prefix="/v2",
    tags=["open inference protocol (v2)"],
    responses={
        400: {"description": "Invalid inference request", **V2_ERROR_CONTENT},
        404: {"description": "Unknown model or version", **V2_ERROR_CONTENT},
        413: {"description": "Body or image above the limits", **V2_ERROR_CONTENT},
        503: {"description": "Model not ready, or overloaded", **V2_ERROR_CONTENT},
        504: {"description": "No result within SEG_REQUEST_TIMEOUT_S", **V2_ERROR_CONTENT},
    },
)
router.include_router(repository.router)  # /v2/repository/...: behind SEG_ADMIN_KEYS
HEADER_LENGTH = "Inference-Header-Content-Length"


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": VERSION, "extensions": ["binary_tensor_data"]}


@router.get("/health/live", summary="Server live (same meaning as /health/live)")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server ready (same meaning as /health/ready)")
async def ready(registry: RegistryDep) -> JSONResponse:
    return JSONResponse({"ready": registry.ready}, status_code=200 if registry.ready else 503)


def _metadata(registry: ModelRegistry, name: str, version: str | None) -> dict[str, Any]:
    entry = registry.get(name, version)
    return v2_infer.model_metadata(entry, [e.version for e in registry.versions(name)])


@router.get("/models/{name}", summary="Model metadata")
async def model_metadata(registry: RegistryDep, name: str) -> dict[str, Any]:
    return _metadata(registry, name, None)


@router.get("/models/{name}/versions/{version}", summary="Model metadata (one version)")
async def model_version_metadata(registry: RegistryDep, name: str, version: str) -> dict[str, Any]:
    return _metadata(registry, name, version)


def _ready_response(registry: ModelRegistry, name: str, version: str | None) -> JSONResponse:
    """200 and ready when the model (version) serves; 503 and not ready while it loads or
    when it failed; 404 when unknown."""
    try:
        entry = registry.get(name, version)
    except ModelNotReady:
        return JSONResponse({"name": name, "ready": False}, status_code=503)
    return JSONResponse({"name": entry.name, "ready": True}, status_code=200)


@router.get("/models/{name}/ready", summary="Model ready")
async def model_ready(registry: RegistryDep, name: str) -> JSONResponse:
    return _ready_response(registry, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model ready (one version)")
async def model_version_ready(registry: RegistryDep, name: str, version: str) -> JSONResponse:
    return _ready_response(registry, name, version)


def _infer(
    entry: ModelEntry,
    request: InferenceRequest,
    tensors: dict[str, Any],
    settings: Settings,
    stop: threading.Event,
) -> tuple[bytes, int | None, float]:
    """The route's work in the executor: the shared v2 inference, encoded as JSON or with
    the binary tensor data extension."""
    images = v2_infer.request_images(tensors, settings)
    wanted = v2_infer.wanted_outputs(request)
    result = v2_infer.infer_images(entry, images, wanted, settings, stop)
    header: dict[str, Any] = {"model_name": entry.spec.name, "model_version": entry.spec.version}
    if request.id is not None:
        header["id"] = request.id
    with tracing.span("encode"):
        body, json_length = encode_response(
            header, [(n, result.arrays[n], binary) for n, binary in wanted]
        )
    return body, json_length, result.inference_ms


async def _infer_route(
    request: Request,
    entry: ModelEntry,
    settings: SettingsDep,
    executor: ExecutorDep,
    metrics: MetricsDep,
    admission: AdmissionDep,
) -> Response:
    tracing.annotate_model(entry.name, entry.version)
    admission.check_capacity()  # refuse before reading the body when the queue is full
    body = await read_limited(request, settings.max_upload_bytes, settings.body_timeout_s)
    header_length = request.headers.get(HEADER_LENGTH)

    def parse() -> tuple[InferenceRequest, dict[str, Any], int]:
        parsed, tensors = parse_request(body, header_length, settings.v2_max_json_bytes)
        return parsed, tensors, v2_infer.tensor_pixels(tensors)  # for SEG_MAX_PENDING_PIXELS

    # Parsing and validating JSON holds the interpreter: off the event loop, so health
    # probes and other requests keep being answered meanwhile.
    with tracing.span("parse", {"segserve.body_bytes": len(body)}):
        parsed, tensors, pixels = await asyncio.to_thread(parse)
    stop = threading.Event()  # set when nobody waits for the answer any more
    content, json_length, inference_ms = await admission.run(
        executor, tracing.bind(_infer), entry, parsed, tensors, settings, stop,
        stop=stop, disconnected=request.is_disconnected, pixels=pixels,
    )  # fmt: skip
    metrics.inference.labels(entry.name).observe(inference_ms / 1000)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)}
    )


@router.post("/models/{name}/infer", summary="Inference (JSON or binary tensor data)")
async def infer(
    request: Request, registry: RegistryDep, settings: SettingsDep, executor: ExecutorDep,
    metrics: MetricsDep, admission: AdmissionDep, name: str,
) -> Response:  # fmt: skip
    return await _infer_route(request, registry.get(name), settings, executor, metrics, admission)


@router.post("/models/{name}/versions/{version}/infer", summary="Inference (one version)")
async def infer_version(
    request: Request, registry: RegistryDep, settings: SettingsDep, executor: ExecutorDep,
    metrics: MetricsDep, admission: AdmissionDep, name: str, version: str,
) -> Response:  # fmt: skip
    return await _infer_route(
        request,
        registry.get(name, version),
        settings,
        executor,
        metrics,
        admission,
    )
