"""OpenTelemetry set-up: a server span per HTTP request, and the exporters the standard
OTEL_* settings name.

Off unless those settings ask for traces (`enabled_by`) or the process already has a
configured global tracer provider (`opentelemetry-instrument`). OpenTelemetry's SDK and
exporters are imported only then, so the service runs without the `tracing` extra (FastAPI
itself needs only the API); untraced, no middleware is installed. The stage spans are
app/tracing.py's hooks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.main_info import SERVER_NAME, VERSION
from app.tracing import traced_request

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, TracerProvider

log = logging.getLogger("segserve")
OTLP_PROTOCOLS = ("http/protobuf", "grpc")
FLUSH_TIMEOUT_MS = 5000  # at shutdown, the longest wait for queued spans to be exported


class TracingMiddleware:
    """A SERVER span per HTTP request, joining the caller's trace when a W3C `traceparent`
    header (or another OTEL_PROPAGATORS format) comes in; at shutdown, the spans still
    queued are exported before the app reports it has stopped (uvicorn ends the process by
    its signal afterwards, so exit handlers never run)."""

    def __init__(
        self, app: ASGIApp, provider: TracerProvider, excluded: re.Pattern[str] | None
    ) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, StatusCode

        self.app, self.provider, self.excluded = app, provider, excluded
        self.tracer = provider.get_tracer(SERVER_NAME, VERSION)
        self.extract, self.use_span = propagate.extract, trace.use_span
        self.server_kind, self.error = SpanKind.SERVER, StatusCode.ERROR

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self.flushing(send))
            return
        if scope["type"] != "http" or (self.excluded and self.excluded.search(scope["path"])):
            await self.app(scope, receive, send)
            return
        outer = getattr(scope.get("fastapi.telemetry"), "span", None)
        if outer is not None and outer.is_recording():
            # FastAPI's own telemetry (a global tracer provider) made the server span: the
            # stages go under it, and no second server span is made.
            with traced_request(self.tracer, outer):
                await self.app(scope, receive, self.recording_request_id(outer, send))
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        if scope.get("client"):
            attributes["client.address"] = scope["client"][0]
        if "user-agent" in headers:
            attributes["user_agent.original"] = headers["user-agent"]
        request_span = self.tracer.start_span(
            method, context=self.extract(headers), kind=self.server_kind, attributes=attributes
        )
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            with traced_request(self.tracer, request_span), self.use_span(request_span):
                await self.app(scope, receive, self.recording_request_id(request_span, send_status))
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route:
                request_span.update_name(f"{method} {route}")
                request_span.set_attribute("http.route", route)
            request_span.set_attribute("http.response.status_code", status)
            if status >= 500:
                request_span.set_status(self.error, f"HTTP {status}")
            request_span.end()

    @staticmethod
    def recording_request_id(request_span: Span, send: Send) -> Send:
        """`send`, noting the X-Request-ID the app answers with on the request's span."""

        async def send_noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                for key, value in message.get("headers", []):
                    if key.lower() == b"x-request-id":
                        request_span.set_attribute("segserve.request_id", value.decode("latin-1"))
            await send(message)

        return send_noting

    def flushing(self, send: Send) -> Send:
        async def send_after_flush(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                flush = getattr(self.provider, "force_flush", None)  # the API's has none
                if flush is not None:
                    await asyncio.to_thread(flush, FLUSH_TIMEOUT_MS)
            await send(message)

        return send_after_flush


def enabled_by(environ: Mapping[str, str]) -> bool:
    """Whether the OTEL_* settings ask for traces: OTEL_SDK_DISABLED is not true, and
    OTEL_TRACES_EXPORTER names an exporter other than `none`, or an OTLP endpoint is set."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def _exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")]
    exporters: list[SpanExporter] = []
    for name in filter(None, names):
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = (
                environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            )
            if protocol == "grpc":  # needs opentelemetry-exporter-otlp-proto-grpc as well
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter as GrpcExporter,
                )

                exporters.append(GrpcExporter())
            elif protocol == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                exporters.append(OTLPSpanExporter())
            else:
                raise ValueError(f"OTLP protocol {protocol!r}: use one of {OTLP_PROTOCOLS}")
        elif name != "none":
            raise ValueError(f"OTEL_TRACES_EXPORTER {name!r}: use otlp, console or none")
    return exporters


def provider_from(environ: Mapping[str, str]) -> TracerProvider | None:
    """A tracer provider exporting as the OTEL_* settings say (exporters, endpoint, headers,
    sampler, batch settings, resource attributes, propagators), or None when they ask for
    no traces or cannot be honoured (logged: the service then runs untraced)."""
    if not enabled_by(environ):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        exporters = _exporters(environ)
    except ImportError as error:
        log.warning(
            "OTEL_* settings ask for traces but %s is missing (pip install 'segserve[tracing]'); "
            "serving without traces",
            error.name,
        )
        return None
    except ValueError as error:
        log.warning("tracing off: %s", error)
        return None
    resource = Resource.create({"service.version": VERSION})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVER_NAME}))
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* settings
    return provider


def excluded_paths(environ: Mapping[str, str]) -> re.Pattern[str] | None:
    """OTEL_PYTHON_EXCLUDED_URLS, as OpenTelemetry's Python instrumentations read it:
    comma-separated regular expressions; a request whose path matches one is not traced
    (e.g. `health/,metrics` for probes and scrapes)."""
    patterns = [p.strip() for p in environ.get("OTEL_PYTHON_EXCLUDED_URLS", "").split(",")]
    patterns = [p for p in patterns if p]
    try:
        return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
    except re.error as error:
        log.warning("OTEL_PYTHON_EXCLUDED_URLS ignored: %s", error)
        return None


def configured_global_provider() -> TracerProvider | None:
    """The global tracer provider, unless it is OpenTelemetry's unconfigured placeholder."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


def install_tracing(
    app: Any, provider: TracerProvider | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Trace `app`'s requests with `provider`; else with the global tracer provider when
    one is configured (`opentelemetry-instrument`, or the application's own set-up); else
    with one from the OTEL_* settings. Adds nothing (no cost) when none asks for traces.
    Call after the other middleware: the request span then covers them all."""
    environ = os.environ if environ is None else environ
    provider = provider or configured_global_provider() or provider_from(environ)
    if provider is None:
        return False
    app.add_middleware(TracingMiddleware, provider=provider, excluded=excluded_paths(environ))
    log.info("tracing on")
    return True
