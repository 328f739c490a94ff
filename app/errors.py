"""One error model: RFC 9457 problem details (`application/problem+json`) for every failure."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://segserve.dev/problems/"
log = logging.getLogger("segserve.errors")


class ProblemError(Exception):
    """An error the client can act on; rendered as problem+json with `status`."""

    status: int = 400
    slug: str = "bad-request"
    title: str | None = None  # default: the status's standard phrase

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadInferenceRequest(ProblemError):
    status, slug = 400, "bad-inference-request"


class InvalidImage(ProblemError):
    status, slug = 400, "invalid-image"


class ModelNotFound(ProblemError):
    status, slug = 404, "model-not-found"


class RepositoryOff(ProblemError):
    """The repository API without SEG_ADMIN_KEYS: as if the routes were not there."""

    status, slug = 404, "not-found"


class AdminKeyRequired(ProblemError):
    status, slug = 401, "unauthorized"


class LoadFailed(ProblemError):
    status, slug = 400, "load-failed"


class PayloadTooLarge(ProblemError):
    status, slug = 413, "payload-too-large"


class RequestTimeout(ProblemError):
    """The request body did not arrive in time (SEG_BODY_TIMEOUT_S)."""

    status, slug = 408, "request-timeout"


class AnswerTooLarge(ProblemError):
    """The answer asked for would pass SEG_MAX_ANSWER_BYTES: a smaller image or another
    format (binary tensors, PNG instead of an overlay) fits."""

    status, slug, title = 413, "answer-too-large", "Answer Too Large"


class InsufficientStorage(ProblemError):
    """The job disk quota (SEG_JOB_DISK_BYTES) cannot hold another job now."""

    status, slug = 507, "insufficient-storage"


class JobNotReady(ProblemError):
    """The job has no result (yet): it is queued, running, failed or cancelled."""

    status, slug = 409, "job-not-finished"


class UnsupportedMediaType(ProblemError):
    status, slug = 415, "unsupported-media-type"


class InvalidParameter(ProblemError):
    status, slug = 422, "invalid-parameter"


class ScoresUnavailable(ProblemError):
    """The model answers class labels only (its graph has no scores output), and the request
    asks for something made from per-class scores: probabilities, confidence, TTA."""

    status, slug, title = 422, "scores-unavailable", "Scores Unavailable"


class ModelNotReady(ProblemError):
    status, slug = 503, "model-not-ready"


class Overloaded(ProblemError):
    status, slug = 503, "overloaded"


class ShuttingDown(ProblemError):
    """The server stops before this request's inference ended (SEG_SHUTDOWN_TIMEOUT_S)."""

    status, slug = 503, "shutting-down"


class DeadlineExceeded(ProblemError):
    status, slug = 504, "deadline-exceeded"


class Abandoned(ProblemError):
    """The client went away; nobody reads this answer, it only ends the handler."""

    # nginx's "client closed request": not a standard status, so it names its own title.
    status, slug, title = 499, "client-closed-request", "Client Closed Request"


V2_PREFIX = "/v2"

# OpenAPI response entries: problem+json for /v1 and the rest, {"error": ...} for /v2.
PROBLEM_CONTENT: dict[str, Any] = {"content": {PROBLEM_MEDIA_TYPE: {}}}
V2_ERROR_CONTENT: dict[str, Any] = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    }
}


def problem(
    status: int,
    detail: str,
    slug: str | None = None,
    request: Request | None = None,
    title: str | None = None,
    **extra: Any,
) -> JSONResponse:
    if request is not None and request.url.path.startswith(V2_PREFIX):
        # The Open Inference Protocol has its own error shape.
        return JSONResponse({"error": detail}, status_code=status)
    title = title or HTTPStatus(status).phrase
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + (slug or title.lower().replace(" ", "-")),
        "title": title,
        "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.url.path
        request_id = getattr(request.state, "request_id", None)
        if request_id:
            body["request_id"] = request_id
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        response = problem(exc.status, exc.detail, exc.slug, request, exc.title)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return problem(422, detail, "invalid-parameter", request, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route for {request.method} {request.url.path}"
        response = problem(exc.status_code, detail, None, request)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(ClientDisconnect)
    async def _disconnected(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client hung up while sending its body: not a server error. Nobody reads this
        # answer; the access log records it as 499, with no traceback.
        return problem(499, "the client closed the connection", "client-closed-request",
                       request, "Client Closed Request")  # fmt: skip

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never leak internals (paths, stack traces) to the client; the log has them.
        log.exception(
            "unhandled error", extra={"request_id": getattr(request.state, "request_id", "")}
        )
        return problem(500, "internal error; see the server log for this request id", None, request)
