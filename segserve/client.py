"""`Client`: the segserve HTTP API from Python, on one httpx connection pool."""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeAlias, overload

import httpx
import numpy as np
from numpy.typing import NDArray

from segserve.batch import Item, run_batch
from segserve.errors import TransportError, UnexpectedAnswer, service_error
from segserve.images import ImageInput, class_map, image_body
from segserve.jobs import Jobs
from segserve.retry import RetryPolicy, parse_retry_after

DEFAULT_URL = "http://127.0.0.1:8000"
Format: TypeAlias = Literal["png", "json", "overlay", "confidence", "coco", "geojson"]
JsonFormat: TypeAlias = Literal["json", "coco", "geojson"]
BytesFormat: TypeAlias = Literal["overlay", "confidence"]
ParamValue: TypeAlias = str | int | float | bool | None
ClassMap: TypeAlias = NDArray[np.uint8]


@dataclass(frozen=True)
class Answer:
    """A segmentation answer as it came: the body's bytes and what the headers say."""

    body: bytes
    media_type: str
    model: str | None  # X-Model-Name
    version: str | None  # X-Model-Version
    request_id: str | None
    headers: Mapping[str, str]


def query(format: str, params: Mapping[str, ParamValue]) -> dict[str, str]:
    """Query parameters as the service reads them (booleans as true/false, None left out)."""
    out = {"format": format}
    for key, value in params.items():
        if value is not None:
            out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def decode(answer: Answer, format: str) -> Any:
    if format == "png":
        return class_map(answer.body)
    if format in ("overlay", "confidence"):
        return answer.body
    try:
        return json.loads(answer.body)
    except ValueError as exc:
        raise UnexpectedAnswer(f"format={format} answered {answer.media_type}, not JSON") from exc


class Client:
    """One service at `url`; thread-safe, and meant to be reused (a context manager).

    `api_key` goes out as `Authorization: Bearer`. Each call's attempts together stop after
    `deadline_s`; each attempt waits at most `timeout` seconds for the answer. 503 is retried
    after its Retry-After, 502/504 and broken connections after a backoff, `retries` times
    at most (see RetryPolicy).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 300.0,
        connect_timeout: float = 10.0,
        retries: int = 3,
        deadline_s: float | None = 600.0,
        max_connections: int = 16,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.policy = RetryPolicy(retries=retries, deadline_s=deadline_s)
        self.max_connections = max_connections
        headers = {"user-agent": "segserve-client"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self.http = httpx.Client(
            base_url=self.url,
            headers=headers,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool = True,
        retry: bool = True,
        accept: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """One call, retried by the policy; a 2xx (or a status in `accept`) answer or an
        error. The same X-Request-ID goes out on every attempt, so they share a log line id."""
        request_id = uuid.uuid4().hex
        sent = {**(headers or {}), "x-request-id": request_id}
        started = time.monotonic()
        deadline = self.policy.deadline_s
        attempt = 0
        while True:
            timeout = self.attempt_timeout(started)
            error: Exception
            try:
                response = self.http.request(
                    method, path, content=content, headers=sent, params=params, timeout=timeout
                )
            except httpx.TransportError as exc:
                wait = self.policy.wait_for_failure(exc, attempt, idempotent) if retry else None
                error = TransportError(f"{method} {self.url}{path}: {exc or type(exc).__name__}")
                error.__cause__ = exc
            else:
                if response.is_success or response.status_code in accept:
                    return response
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                error = service_error(
                    response.status_code,
                    response.reason_phrase,
                    response.content,
                    response.headers.get("x-request-id", request_id),
                    retry_after,
                )
                wait = (
                    self.policy.wait_for_status(response.status_code, retry_after, attempt)
                    if retry
                    else None
                )
            elapsed = time.monotonic() - started
            if wait is None or (deadline is not None and elapsed + wait >= deadline):
                raise error
            time.sleep(wait)
            attempt += 1

    def attempt_timeout(self, started: float) -> httpx.Timeout:
        """The per-attempt timeouts, shortened to what is left of the deadline."""
        read, connect = self.timeout, self.connect_timeout
        if self.policy.deadline_s is not None:
            left = max(0.001, self.policy.deadline_s - (time.monotonic() - started))
            read, connect = min(read, left), min(connect, left)
        return httpx.Timeout(read, connect=connect)

    def segment_raw(
        self, image: ImageInput, model: str, format: str = "png", **params: ParamValue
    ) -> Answer:
        """POST the image to /v1/models/{model}/segment; the answer undecoded."""
        body, content_type = image_body(image)
        response = self.send(
            "POST",
            f"/v1/models/{urllib.parse.quote(model, safe='')}/segment",
            content=body,
            headers={"content-type": content_type},
            params=query(format, params),
        )
        headers = response.headers
        return Answer(
            response.content,
            headers.get("content-type", "").split(";")[0].strip(),
            headers.get("x-model-name"),
            headers.get("x-model-version"),
            headers.get("x-request-id"),
            dict(headers),
        )

    @overload
    def segment(
        self, image: ImageInput, model: str, format: Literal["png"] = ..., **params: ParamValue
    ) -> ClassMap: ...
    @overload
    def segment(
        self, image: ImageInput, model: str, format: JsonFormat, **params: ParamValue
    ) -> Any: ...
    @overload
    def segment(
        self, image: ImageInput, model: str, format: BytesFormat, **params: ParamValue
    ) -> bytes: ...
    def segment(
        self, image: ImageInput, model: str, format: Format = "png", **params: ParamValue
    ) -> Any:
        """Segment one image: a path, the encoded file's bytes, or a numpy array (sent as
        PNG). `png` gives the (H, W) uint8 class map; `json`, `coco` and `geojson` the parsed
        JSON; `overlay` and `confidence` the PNG's bytes. `params` are the endpoint's query
        parameters (alpha, tiling, tile_size, tile_overlap, tta, encoding, ...)."""
        return decode(self.segment_raw(image, model, format, **params), format)

    @overload
    def segment_many(
        self, images: Iterable[ImageInput], model: str, format: Literal["png"] = ...,
        *, concurrency: int = ..., progress: bool = ..., **params: ParamValue,
    ) -> list[Item[ClassMap]]: ...  # fmt: skip
    @overload
    def segment_many(
        self, images: Iterable[ImageInput], model: str, format: JsonFormat,
        *, concurrency: int = ..., progress: bool = ..., **params: ParamValue,
    ) -> list[Item[Any]]: ...  # fmt: skip
    @overload
    def segment_many(
        self, images: Iterable[ImageInput], model: str, format: BytesFormat,
        *, concurrency: int = ..., progress: bool = ..., **params: ParamValue,
    ) -> list[Item[bytes]]: ...  # fmt: skip
    def segment_many(
        self,
        images: Iterable[ImageInput],
        model: str,
        format: Format = "png",
        *,
        concurrency: int = 4,
        progress: bool = True,
        **params: ParamValue,
    ) -> list[Item[Any]]:
        """Segment every image, `concurrency` at a time over the shared pool, with a progress
        bar on stderr. One Item per input, in the inputs' order: a failed image has its
        `error` (a SegserveError) and the others still run."""
        if concurrency > self.max_connections:
            raise ValueError(
                f"concurrency {concurrency} is above the client's max_connections "
                f"({self.max_connections}); create the Client with a larger pool"
            )

        def work(image: ImageInput) -> Any:
            return self.segment(image, model, format, **params)

        items = list(run_batch(work, list(images), concurrency, progress))
        return sorted(items, key=lambda item: item.index)

    @property
    def jobs(self) -> Jobs:
        """Jobs: submit, wait with a progress bar, fetch results (segserve.jobs)."""
        return Jobs(self)

    def models(self) -> list[dict[str, Any]]:
        """The served models with their metadata (GET /v1/models)."""
        listing = self.get_json("/v1/models")
        if not isinstance(listing, dict) or not isinstance(listing.get("models"), list):
            raise UnexpectedAnswer("GET /v1/models did not answer a model list")
        models: list[dict[str, Any]] = listing["models"]
        return models

    def model(self, name: str) -> dict[str, Any]:
        """One model's metadata and providers (GET /v1/models/{name}); NotFound if unknown."""
        info = self.get_json(f"/v1/models/{urllib.parse.quote(name, safe='')}")
        if not isinstance(info, dict):
            raise UnexpectedAnswer(f"GET /v1/models/{name} did not answer an object")
        return info

    def health(self) -> dict[str, Any]:
        """The readiness report (GET /health/ready), asked once: `ready` is False while a
        model is loading or failed. Raises TransportError when the service is unreachable."""
        response = self.send("GET", "/health/ready", retry=False, accept=frozenset({503}))
        try:
            report = response.json()
        except ValueError:
            report = None
        if not isinstance(report, dict) or not isinstance(report.get("ready"), bool):
            if response.is_success:
                raise UnexpectedAnswer("GET /health/ready did not answer a readiness report")
            raise service_error(response.status_code, response.reason_phrase, response.content)
        return report

    def get_json(self, path: str) -> Any:
        response = self.send("GET", path)
        try:
            return response.json()
        except ValueError as exc:
            raise UnexpectedAnswer(f"GET {path} did not answer JSON") from exc


__all__ = ["DEFAULT_URL", "Answer", "ClassMap", "Client", "Format", "ParamValue"]
