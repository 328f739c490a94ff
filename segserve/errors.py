"""The client's exceptions: one base class, and the service's problem+json as attributes."""

from __future__ import annotations

import json
from typing import Any


class SegserveError(Exception):
    """Base class of every error the client raises."""


class InputError(SegserveError, ValueError):
    """The image given to the client cannot be sent (unreadable file, unsupported array)."""


class TransportError(SegserveError):
    """No answer: the connection failed, broke or timed out (after any retries)."""


class UnexpectedAnswer(SegserveError):
    """A 2xx answer that is not what the endpoint promises (not a PNG, not JSON)."""


class ServiceError(SegserveError):
    """A non-2xx answer, with its RFC 9457 problem details when the body is problem+json.

    `status`, `title`, `detail`, `request_id` and `type` come from the problem (the status
    line and the X-Request-ID header when the body is something else); `problem` is the
    whole parsed body, and `retry_after` the seconds of a Retry-After header, if any.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        request_id: str | None = None,
        type: str | None = None,
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status, self.title, self.detail = status, title, detail
        self.request_id, self.type = request_id, type
        self.problem: dict[str, Any] = problem or {}
        self.retry_after = retry_after
        text = f"{status} {title}: {detail}" if detail else f"{status} {title}"
        super().__init__(text + (f" (request {request_id})" if request_id else ""))


class BadRequest(ServiceError):
    """400: the image or the request cannot be read."""


class Unauthorized(ServiceError):
    """401: an API key is missing or not valid."""


class NotFound(ServiceError):
    """404: no such model (or path)."""


class PayloadTooLarge(ServiceError):
    """413: the upload, the image or the answer asked for is above the service's limits."""


class UnsupportedMediaType(ServiceError):
    """415: the service does not read this kind of file."""


class InvalidParameter(ServiceError):
    """422: a query parameter is out of range or unknown."""


class Unavailable(ServiceError):
    """503: models still loading, the service overloaded or shutting down."""


class GatewayTimeout(ServiceError):
    """504: no result within the service's (or a proxy's) time limit."""


BY_STATUS: dict[int, type[ServiceError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidParameter,
    503: Unavailable,
    504: GatewayTimeout,
}


def service_error(
    status: int,
    reason: str,
    body: bytes,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> ServiceError:
    """The typed error for a non-2xx answer: problem+json when the body is one (/v1), the
    Open Inference Protocol's {"error": ...} (/v2), else the first bytes of the body."""
    problem: dict[str, Any] = {}
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        problem = parsed
    title = str(problem.get("title") or reason or "Error")
    detail = problem.get("detail", problem.get("error"))
    if detail is None:
        detail = "" if problem else body[:200].decode("utf-8", errors="replace").strip()
    found_id = problem.get("request_id")
    error_type = problem.get("type")
    cls = BY_STATUS.get(status, ServiceError)
    return cls(
        status,
        title,
        str(detail),
        request_id=str(found_id) if found_id else request_id,
        type=str(error_type) if error_type else None,
        problem=problem,
        retry_after=retry_after,
    )
