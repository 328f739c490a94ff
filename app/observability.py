"""Prometheus metrics and one structured log line per request, with a request id."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.tracing import log_fields

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
log = logging.getLogger("segserve.access")


class Metrics:
    """Per-app registry so that tests can build many apps in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "segserve_requests_total",
            "HTTP requests.",
            ["model", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "segserve_request_seconds",
            "HTTP request latency.",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.inference = Histogram(
            "segserve_inference_seconds",
            "Session run time per image.",
            ["model"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "segserve_in_flight_requests", "Requests being handled.", registry=self.registry
        )


BatchCounts = Callable[[], list[tuple[str, int, int]]]  # (model, session runs, requests)


class BatchCollector(Collector):
    """Dynamic batching counts, read from the batchers when scraped: requests over runs is
    the mean batch fill."""

    def __init__(self, counts: BatchCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        runs = CounterMetricFamily(
            "segserve_batch_runs", "Session runs of dynamic batches.", labels=["model"]
        )
        requests = CounterMetricFamily(
            "segserve_batched_requests", "Requests run in dynamic batches.", labels=["model"]
        )
        for model, batches, rows in self.counts():
            runs.add_metric([model], batches)
            requests.add_metric([model], rows)
        yield runs
        yield requests


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("segserve")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class RequestContextMiddleware:
    """Request id in and out, in-flight gauge, latency and count metrics, access log."""

    def __init__(self, app: ASGIApp, metrics: Metrics, known_models: Any) -> None:
        self.app, self.metrics, self.known_models = app, metrics, known_models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SANE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append(
                    (REQUEST_ID_HEADER.lower().encode(), request_id.encode())
                )
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            name = scope.get("path_params", {}).get("name")
            model = name if name in self.known_models() else ("" if name is None else "unknown")
            self.metrics.requests.labels(model, route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            log.info(
                "request",
                extra={
                    "fields": {
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "model": model,
                        "duration_ms": round(elapsed * 1000, 2),
                        **log_fields(),  # trace and span ids when the request is traced
                    }
                },
            )
