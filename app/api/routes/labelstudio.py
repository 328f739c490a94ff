"""A Label Studio ML backend per model: connect Label Studio to `<server>/labelstudio/<model>`.

Label Studio's ML backend protocol: `GET /health` (and `GET /`) answers
{"status": "UP"}; `POST /setup` checks the project's labeling config and answers the
model version; `POST /predict` takes {"tasks": [...], "label_config": ...} and answers
{"results": [one prediction per task]}, each a list of BrushLabels results in Label
Studio's brush RLE, one per class present that the config's <BrushLabels> labels.

Images: a task's image is read only from a `data:` URI or from this server's own sample
URL (`/v1/samples/<model>`, relative or on the request's own host), which is resolved
to the file without any request. The server never fetches any other URL: a prediction
request naming an arbitrary URL (cloud metadata, internal hosts, Label Studio's own
storage) could otherwise make it reach hosts on the attacker's behalf (SSRF). Such tasks
get 422.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import urllib.parse
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.api.body import read_limited
from app.api.deps import AdmissionDep, ExecutorDep, RegistryDep, SettingsDep
from app.api.routes.segment import inline_schema
from app.api.routes.web import sample_file
from app.config import Settings
from app.errors import PROBLEM_CONTENT, AnswerTooLarge, BadInferenceRequest, InvalidParameter
from app.imaging.decode import decode_image
from app.imaging.masks.labelstudio import (
    BrushTarget,
    LabelConfigError,
    brush_results,
    brush_target,
    results_size_bound,
    rle_json,
)
from app.inference.registry import ModelEntry
from app.service import Limits, infer_pixels

router = APIRouter(prefix="/labelstudio/{name}", tags=["label studio"])

MAX_TASKS = 64  # per /predict request
ModelName = Annotated[str, Path(description="Model name", examples=["unet-isbi"])]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed body", **PROBLEM_CONTENT},
    404: {"description": "Unknown model", **PROBLEM_CONTENT},
    413: {"description": "Body, image or answer above the limits", **PROBLEM_CONTENT},
    422: {"description": "Unusable config, task or image source", **PROBLEM_CONTENT},
    503: {"description": "Model not ready, or overloaded", **PROBLEM_CONTENT},
}


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class SetupRequest(Lenient):
    project: str | int | None = None
    label_config: str | None = Field(None, alias="schema")  # the protocol's name


class Task(Lenient):
    id: int | str | None = None
    data: dict[str, Any]


class PredictRequest(Lenient):
    tasks: list[Task]
    label_config: str | None = None
    project: str | int | None = None


def model_version(model: ModelEntry) -> str:
    return f"{model.spec.name}-{model.spec.version}"


@router.get("/health", summary="Label Studio ML backend: health", responses=ERRORS)
@router.get("/", include_in_schema=False)
async def health(registry: RegistryDep, name: ModelName) -> dict[str, Any]:
    model = registry.get(name)  # 404 unknown, 503 not ready
    return {"status": "UP", "model_class": "segserve", "model_version": model_version(model)}


@router.post(
    "/setup",
    summary="Label Studio ML backend: check a project",
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(SetupRequest)}},
        }
    },
)
async def setup(
    request: Request, registry: RegistryDep, settings: SettingsDep, name: ModelName
) -> dict[str, Any]:
    model = registry.get(name)
    body = await _json_body(request, settings, 1 << 20)
    try:
        config = SetupRequest.model_validate(body).label_config
    except ValidationError as exc:
        raise InvalidParameter(f"the setup request is invalid: {_first_error(exc)}") from None
    _target(config, model.spec.classes)
    return {"model_version": model_version(model)}


@router.post(
    "/predict",
    summary="Label Studio ML backend: predict brush masks",
    description="Tasks' images must be `data:` URIs or this server's /v1/samples URLs; "
    "no other URL is ever fetched (SSRF).",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}}, **ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(PredictRequest)}},
        }
    },
)
async def predict(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    executor: ExecutorDep,
    admission: AdmissionDep,
    name: ModelName,
) -> Response:
    model = registry.get(name)
    admission.check_capacity()
    # Base64 data URIs are 4/3 of the image; the JSON around them is small.
    body = await _json_body(request, settings, settings.max_upload_bytes * 4 // 3 + (1 << 20))
    try:
        parsed = PredictRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidParameter(f"the predict request is invalid: {_first_error(exc)}") from None
    if len(parsed.tasks) > MAX_TASKS:
        raise InvalidParameter(f"{len(parsed.tasks)} tasks; at most {MAX_TASKS} per request")
    target = _target(parsed.label_config, model.spec.classes)
    limits = Limits.from_settings(settings)
    served = {e.name for e in registry.served()}
    budget = limits.max_answer_bytes
    predictions: list[tuple[dict[str, Any], list[bytes]]] = []
    for number, task in enumerate(parsed.tasks):
        image = _task_image(task, target, number, request, settings, served)
        stop = threading.Event()
        results, rles, score, size = await admission.run(
            executor, _predict_one, model, image, target, limits, budget, f"{number}-", stop,
            stop=stop, disconnected=request.is_disconnected,
        )  # fmt: skip
        budget -= size
        prediction = {"result": results, "score": score, "model_version": model_version(model)}
        predictions.append((prediction, rles))
    return Response(_answer(predictions, model_version(model)), media_type="application/json")


def _predict_one(
    model: ModelEntry,
    image: bytes,
    target: BrushTarget,
    limits: Limits,
    budget: int,
    prefix: str,
    stop: threading.Event,
) -> tuple[list[dict[str, Any]], list[bytes], float, int]:
    decoded = decode_image(image, limits.max_pixels)
    # The score is the mean top-class probability; a labels-only model has none (score 1.0).
    confidence = model.spec.has_scores
    result = infer_pixels(model, decoded.pixels, limits, confidence=confidence, stop=stop)
    size = results_size_bound(result.labels, target)
    if size > budget:
        raise AnswerTooLarge(
            f"the brush masks would be about {limits.max_answer_bytes - budget + size} bytes; "
            f"the limit is {limits.max_answer_bytes} (SEG_MAX_ANSWER_BYTES): send fewer tasks"
        )
    results, rles, score = brush_results(result.labels, result.confidence, target, prefix)
    return results, rles, score, size


def _answer(predictions: list[tuple[dict[str, Any], list[bytes]]], version: str) -> bytes:
    """{"results": [...], "model_version": ...} with each `"rle":[]` spliced with its bytes
    as JSON integers (json.dumps escapes any quote inside strings, so the marker is only
    ever the placeholder)."""
    text = json.dumps(
        {"results": [p for p, _ in predictions], "model_version": version},
        separators=(",", ":"),
    ).encode()
    pieces = text.split(b'"rle":[]')
    rles = [rle for _, group in predictions for rle in group]
    assert len(pieces) == len(rles) + 1
    out = [pieces[0]]
    for rle, piece in zip(rles, pieces[1:], strict=True):
        out += [b'"rle":', rle_json(rle), piece]
    return b"".join(out)


def _target(config: str | None, classes: list[str]) -> BrushTarget:
    try:
        return brush_target(config, classes)
    except LabelConfigError as exc:
        raise InvalidParameter(str(exc)) from None


async def _json_body(request: Request, settings: Settings, limit: int) -> Any:
    raw = await read_limited(request, limit, settings.body_timeout_s)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise BadInferenceRequest("the body is not valid JSON") from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ()))
    return f"{where}: {error.get('msg', '')}"[:300]


def _task_image(
    task: Task,
    target: BrushTarget,
    number: int,
    request: Request,
    settings: Settings,
    served: set[str],
) -> bytes:
    source = task.data.get(target.data_key)
    where = f"task {number} (id {task.id})"
    if not isinstance(source, str) or not source:
        raise InvalidParameter(f"{where} has no image URL in data.{target.data_key}")
    if source[:5].lower() == "data:":
        return _data_uri(source, where, settings.max_upload_bytes)
    path = _own_sample(source, request, settings, served)
    if path is None:
        raise InvalidParameter(
            f"{where}: the image must be a data: URI or this server's /v1/samples/<model> URL; "
            "this server never fetches other URLs (SSRF), so give Label Studio tasks with "
            "data URIs"
        )
    if path.stat().st_size > settings.max_upload_bytes:
        raise InvalidParameter(f"{where}: the sample is over SEG_MAX_UPLOAD_BYTES")
    return path.read_bytes()


def _data_uri(uri: str, where: str, limit: int) -> bytes:
    header, comma, payload = uri.partition(",")
    if not comma:
        raise InvalidParameter(f"{where}: the data URI has no ','")
    try:
        if header.lower().endswith(";base64"):
            data = base64.b64decode(payload.strip(), validate=True)
        else:
            data = urllib.parse.unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        raise InvalidParameter(f"{where}: the data URI's base64 is invalid") from None
    if len(data) > limit:
        raise InvalidParameter(f"{where}: the image has {len(data)} bytes; limit {limit}")
    return data


def _own_sample(
    url: str, request: Request, settings: Settings, served: set[str]
) -> FilePath | None:
    """The sample file a /v1/samples/<model> URL of this server names, or None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme or parts.netloc:
        own = request.headers.get("host", "")
        if parts.scheme not in ("http", "https") or parts.netloc != own or parts.query:
            return None
    prefix = "/v1/samples/"
    if not parts.path.startswith(prefix):
        return None
    model = urllib.parse.unquote(parts.path[len(prefix) :])
    if model not in served:  # the name never reaches the file system unchecked
        return None
    return sample_file(settings, model)
