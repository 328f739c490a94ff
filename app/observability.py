"""Prometheus metrics and one structured log line per request, with a request id.

With several worker processes (SEG_PROCESSES) the supervisor sets PROMETHEUS_MULTIPROC_DIR
before any worker imports prometheus_client: every process then writes its samples to files
there, and /metrics, whichever process answers, adds up those of all processes (counters and
histograms of exited processes included; the in-flight gauge counts live processes only)."""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.tracing import log_fields

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
log = logging.getLogger("segserve.access")


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BatchCounts = Callable[[], list[tuple[str, int, int]]]  # (model, session runs, requests)


def multiprocess_dir() -> str | None:
    """The folder of the worker processes' metric files, when there are several processes."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """Per-app registry so that tests can build many apps in one process. `batch_counts`
    reads the dynamic batchers' counts."""

    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self, batch_counts: BatchCounts | None = None) -> None:
        self.registry = CollectorRegistry()
        self.shared_dir = multiprocess_dir()
        self.batch_counts = batch_counts
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
            "segserve_in_flight_requests",
            "Requests being handled.",
            registry=self.registry,
            multiprocess_mode="livesum",  # all live processes' together
        )
        self._synced: dict[tuple[str, str], int] = {}
        if self.shared_dir is None:
            if batch_counts is not None:
                self.registry.register(BatchCollector(batch_counts))
            return
        # Several processes: a collector read at scrape time would see one process only, so
        # the batchers' counts go into counters (`sync`), and each live process shows itself.
        self.batch_runs = Counter(
            "segserve_batch_runs",
            "Session runs of dynamic batches.",
            ["model"],
            registry=self.registry,
        )
        self.batched_requests = Counter(
            "segserve_batched_requests",
            "Requests run in dynamic batches.",
            ["model"],
            registry=self.registry,
        )
        Gauge(
            "segserve_process_start_time_seconds",
            "Start time of each live worker process (label pid), seconds since the epoch.",
            registry=self.registry,
            multiprocess_mode="liveall",
        ).set(time.time())

    def sync(self) -> None:
        """Several processes: add the batchers' counts since the last call to the counters
        (called after every request and before every scrape). On the event loop."""
        if self.shared_dir is None or self.batch_counts is None:
            return
        for model, batches, rows in self.batch_counts():
            for counter, kind, value in (
                (self.batch_runs, "runs", batches),
                (self.batched_requests, "rows", rows),
            ):
                before = self._synced.get((model, kind), 0)
                if value < before:  # a new batcher (the model was loaded again) counts from 0
                    before = 0
                if value > before:
                    counter.labels(model).inc(value - before)
                self._synced[(model, kind)] = value

    def exposition(self) -> bytes:
        """The text /metrics answers: this app's registry, or with several processes the sum
        of every process's samples."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        self.sync()
        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=self.shared_dir)  # type: ignore[no-untyped-call]
        return generate_latest(combined)


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
    def __init__(self) -> None:
        super().__init__()
        self.with_pid = multiprocess_dir() is not None  # several processes: which one logged

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.with_pid:
            entry["pid"] = record.process
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
            self.metrics.sync()
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
