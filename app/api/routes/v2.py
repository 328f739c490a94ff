"""Open Inference Protocol (KServe v2) beside /v1, so Triton/KServe clients work unchanged.

Inputs: `image` (UINT8, [N, H, W, C] with C 1 or 3) or `image_bytes` (BYTES, [1], an
encoded image file). Outputs: `labels` (UINT8, [N, H, W]) and, when asked for,
`probabilities` (FP32, [N, K, H, W]). Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.api.body import read_limited
from app.api.deps import AdmissionDep, ExecutorDep, MetricsDep, RegistryDep, SettingsDep
from app.config import Settings
from app.errors import V2_ERROR_CONTENT, BadInferenceRequest, ModelNotFound, PayloadTooLarge
from app.imaging.decode import decode_image
from app.inference.pipeline import Stopped
from app.inference.registry import ModelEntry, ModelState
from app.inference.v2_codec import InferenceRequest, encode_response, parse_request
from app.main_info import SERVER_NAME, VERSION
from app.service import Limits, infer_pixels
from app.service.budget import JSON_BYTES_PER_FLOAT, JSON_BYTES_PER_LABEL, check_answer

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
HEADER_LENGTH = "Inference-Header-Content-Length"
OUTPUTS = ("labels", "probabilities")


def _find(registry: RegistryDep, name: str, version: str | None = None) -> ModelEntry:
    for entry in registry.served():
        if entry.name == name and (
            version is None or (entry.spec and entry.spec.version == version)
        ):
            return entry
    raise ModelNotFound(f"unknown model {name!r}" + (f" version {version!r}" if version else ""))


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": VERSION, "extensions": ["binary_tensor_data"]}


@router.get("/health/live", summary="Server live (same meaning as /health/live)")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server ready (same meaning as /health/ready)")
async def ready(registry: RegistryDep) -> JSONResponse:
    return JSONResponse({"ready": registry.ready}, status_code=200 if registry.ready else 503)


def _model_metadata(entry: ModelEntry) -> dict[str, Any]:
    assert entry.spec is not None
    spec = entry.spec
    return {
        "name": spec.name,
        "versions": [spec.version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, spec.input_channels]},
            {"name": "image_bytes", "datatype": "BYTES", "shape": [1]},
        ],
        "outputs": [
            {"name": "labels", "datatype": "UINT8", "shape": [-1, -1, -1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, spec.num_classes, -1, -1]},
        ],
        "parameters": {"classes": spec.classes, "providers": entry.providers},
    }


@router.get("/models/{name}", summary="Model metadata")
async def model_metadata(registry: RegistryDep, name: str) -> dict[str, Any]:
    return _model_metadata(_find(registry, name))


@router.get("/models/{name}/versions/{version}", summary="Model metadata (one version)")
async def model_version_metadata(registry: RegistryDep, name: str, version: str) -> dict[str, Any]:
    return _model_metadata(_find(registry, name, version))


def _ready_response(entry: ModelEntry) -> JSONResponse:
    is_ready = entry.state is ModelState.ready
    return JSONResponse(
        {"name": entry.name, "ready": is_ready}, status_code=200 if is_ready else 503
    )


@router.get("/models/{name}/ready", summary="Model ready")
async def model_ready(registry: RegistryDep, name: str) -> JSONResponse:
    return _ready_response(_find(registry, name))


@router.get("/models/{name}/versions/{version}/ready", summary="Model ready (one version)")
async def model_version_ready(registry: RegistryDep, name: str, version: str) -> JSONResponse:
    return _ready_response(_find(registry, name, version))


def _images(tensors: dict[str, Any], settings: Settings) -> list[np.ndarray]:
    """The request's images as canonical (H, W) or (H, W, 3) uint8 arrays."""
    given = [n for n in tensors if n in ("image", "image_bytes")]
    if len(given) != 1 or len(tensors) != 1:
        raise BadInferenceRequest(
            "send exactly one input: 'image' (UINT8) or 'image_bytes' (BYTES)"
        )
    if given[0] == "image_bytes":
        files = tensors["image_bytes"]
        if not isinstance(files, list) or len(files) != 1:
            raise BadInferenceRequest("'image_bytes' must be a BYTES tensor of shape [1]")
        return [decode_image(files[0], settings.max_pixels).pixels]
    array = tensors["image"]
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise BadInferenceRequest("'image' must be a UINT8 tensor")
    if array.ndim != 4 or array.shape[3] not in (1, 3) or 0 in array.shape:
        raise BadInferenceRequest(
            "'image' must have shape [N, H, W, C] with C 1 or 3 and no empty side"
        )
    count, height, width = array.shape[:3]
    if count > settings.v2_max_batch:
        raise PayloadTooLarge(
            f"{count} images in one request; the limit is {settings.v2_max_batch} "
            "(SEG_V2_MAX_BATCH)"
        )
    if count * height * width > settings.max_pixels:
        raise PayloadTooLarge(
            f"{count} images of {width}x{height} exceed SEG_MAX_PIXELS={settings.max_pixels} "
            "pixels in all"
        )
    return [image[..., 0] if image.shape[2] == 1 else image for image in array]


def _wanted(request: InferenceRequest) -> list[tuple[str, bool]]:
    """(output name, binary) pairs, following the binary tensor data extension's rules."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    if not request.outputs:
        return [("labels", default_binary)]
    wanted = []
    for output in request.outputs:
        if output.name not in OUTPUTS:
            raise BadInferenceRequest(
                f"unknown output {output.name!r}; outputs are {list(OUTPUTS)}"
            )
        wanted.append((output.name, bool(output.parameters.get("binary_data", default_binary))))
    return wanted


def _check_answer_size(
    entry: ModelEntry, images: list[np.ndarray], wanted: list[tuple[str, bool]], limits: Limits
) -> None:
    """Refuse, before any inference, outputs that would pass SEG_MAX_ANSWER_BYTES."""
    assert entry.spec is not None
    pixels = sum(image.shape[0] * image.shape[1] for image in images)
    size = 0
    for name, binary in wanted:
        if name == "labels":
            size += pixels * (1 if binary else JSON_BYTES_PER_LABEL)
        else:
            size += pixels * entry.spec.num_classes * (4 if binary else JSON_BYTES_PER_FLOAT)
    check_answer(size, "the requested outputs", limits, "ask for binary_data or fewer pixels")


def _infer(
    entry: ModelEntry,
    request: InferenceRequest,
    tensors: dict[str, Any],
    settings: Settings,
    stop: threading.Event,
) -> tuple[bytes, int | None, float]:
    """Each image through the same service path as /v1 (overlap tiles above
    SEG_WHOLE_IMAGE_MAX_PIXELS), stopping between images and tiles once `stop` is set."""
    assert entry.spec is not None
    limits = Limits.from_settings(settings)
    images = _images(tensors, settings)
    wanted = _wanted(request)
    _check_answer_size(entry, images, wanted, limits)
    with_probs = any(name == "probabilities" for name, _ in wanted)
    results = []
    for done, image in enumerate(images):
        if stop.is_set():
            raise Stopped(f"stopped after {done} of {len(images)} images")
        results.append(infer_pixels(entry, image, limits, probabilities=with_probs, stop=stop))
    arrays = {"labels": np.stack([r.labels for r in results])}
    if with_probs:
        arrays["probabilities"] = np.stack(
            [r.probabilities for r in results if r.probabilities is not None]
        )
    header: dict[str, Any] = {"model_name": entry.spec.name, "model_version": entry.spec.version}
    if request.id is not None:
        header["id"] = request.id
    body, json_length = encode_response(header, [(n, arrays[n], binary) for n, binary in wanted])
    return body, json_length, sum(r.timings_ms["inference"] for r in results)


async def _infer_route(
    request: Request,
    entry: ModelEntry,
    settings: SettingsDep,
    executor: ExecutorDep,
    metrics: MetricsDep,
    admission: AdmissionDep,
) -> Response:
    if entry.state is not ModelState.ready:
        return JSONResponse(
            {"error": f"model {entry.name!r} is {entry.state.value}"}, status_code=503
        )
    admission.check_capacity()  # refuse before reading the body when the queue is full
    body = await read_limited(request, settings.max_upload_bytes, settings.body_timeout_s)
    header_length = request.headers.get(HEADER_LENGTH)
    json_bytes = len(body) if header_length is None else _json_length(header_length, len(body))
    if json_bytes > settings.v2_max_json_bytes:
        raise PayloadTooLarge(
            f"the JSON part has {json_bytes} bytes; the limit is {settings.v2_max_json_bytes} "
            "(SEG_V2_MAX_JSON_BYTES): send large tensors with the binary tensor data extension"
        )
    # Parsing and validating JSON holds the interpreter: off the event loop, so health
    # probes and other requests keep being answered meanwhile.
    parsed, tensors = await asyncio.to_thread(parse_request, body, header_length)
    stop = threading.Event()  # set when nobody waits for the answer any more
    content, json_length, inference_ms = await admission.run(
        executor, _infer, entry, parsed, tensors, settings, stop,
        stop=stop, disconnected=request.is_disconnected,
    )  # fmt: skip
    metrics.inference.labels(entry.name).observe(inference_ms / 1000)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)}
    )


def _json_length(header_length: str, body_length: int) -> int:
    """The JSON part's length as the header states it (the codec validates it fully)."""
    if header_length.isascii() and header_length.isdigit() and len(header_length) <= 12:
        return min(int(header_length), body_length)
    return 0


@router.post("/models/{name}/infer", summary="Inference (JSON or binary tensor data)")
async def infer(
    request: Request, registry: RegistryDep, settings: SettingsDep, executor: ExecutorDep,
    metrics: MetricsDep, admission: AdmissionDep, name: str,
) -> Response:  # fmt: skip
    return await _infer_route(
        request, _find(registry, name), settings, executor, metrics, admission
    )


@router.post("/models/{name}/versions/{version}/infer", summary="Inference (one version)")
async def infer_version(
    request: Request, registry: RegistryDep, settings: SettingsDep, executor: ExecutorDep,
    metrics: MetricsDep, admission: AdmissionDep, name: str, version: str,
) -> Response:  # fmt: skip
    return await _infer_route(
        request, _find(registry, name, version), settings, executor, metrics, admission
    )
