"""OpenTelemetry traces: spans in-process with the SDK's in-memory exporter, and a real
`segserve serve` process exporting over OTLP/HTTP to a receiver in the test, configured
only through OTEL_* variables."""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app import tracing, tracing_setup
from app.config import Settings
from app.main import create_app
from tests.app.conftest import png_bytes, running_server, wait_ready

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
TILED = "/v1/models/tiny-grey/segment?tiling=on&tile_size=64&tile_overlap=8"
STRIPES = np.tile(np.array([0, 255], np.uint8).repeat(5), (150, 20))  # 150 x 200


@pytest.fixture
def traced(model_dir: Path) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(
        model_dir=model_dir, intra_op_threads=1, tile_batch=2, whole_image_max_pixels=100_000
    )
    app = create_app(settings)
    assert tracing_setup.install_tracing(
        app, provider, {"OTEL_PYTHON_EXCLUDED_URLS": "^/health/,^/metrics$"}
    )
    with TestClient(app) as client:
        wait_ready(client)
        yield client, exporter


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def request_span(spans: tuple[ReadableSpan, ...]) -> ReadableSpan:
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    return server


@pytest.mark.parametrize("pipelined", [False, True], ids=["serial", "pipelined"])
def test_tiled_request_joins_the_callers_trace_with_a_span_per_stage(
    traced: tuple[TestClient, InMemorySpanExporter], pipelined: bool
) -> None:
    """Serial tiles (CPU), or the next batch prepared while one runs in another thread
    (CUDA): either way a span per tile batch, with its session run inside it."""
    client, exporter = traced
    for entry in client.app.state.registry.served():  # type: ignore[attr-defined]
        entry.pipelined_tiles = pipelined
    response = client.post(
        TILED,
        content=png_bytes(STRIPES),
        headers={"content-type": "image/png", "traceparent": TRACEPARENT},
    )
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    server = request_span(spans)
    assert server.name == "POST /v1/models/{name}/segment"
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CALLER_SPAN
    attributes = server.attributes or {}
    assert attributes["segserve.request_id"] == response.headers["x-request-id"]
    assert attributes["segserve.model.name"] == "tiny-grey"
    assert attributes["segserve.model.version"] == "0.0.1"
    assert attributes["http.route"] == "/v1/models/{name}/segment"
    assert attributes["http.response.status_code"] == 200
    assert attributes["http.request.method"] == "POST"

    tiles = int(response.headers["x-tiles"])
    assert tiles == 12  # 200 x 152 padded, 64-pixel tiles with 48-pixel cores: 4 x 3
    batches = by_name(spans, "tile_batch")
    assert len(batches) == math.ceil(tiles / 2)
    indices = [i for b in batches for i in (b.attributes or {})["segserve.tiles.indices"]]
    assert sorted(indices) == list(range(tiles))
    assert all((b.attributes or {})["segserve.tiles.count"] == 2 for b in batches)
    stages = [*by_name(spans, "decode"), *by_name(spans, "preprocess"), *batches]
    stages += by_name(spans, "encode")
    assert [s.name for s in sorted(stages, key=lambda s: s.start_time or 0)] == [
        "decode", "preprocess", *["tile_batch"] * len(batches), "encode",
    ]  # fmt: skip
    for stage in stages:
        assert stage.parent is not None and stage.parent.span_id == server.context.span_id
        assert stage.context.trace_id == server.context.trace_id
    decode = by_name(spans, "decode")[0].attributes or {}
    assert (decode["segserve.image.width"], decode["segserve.image.height"]) == (200, 150)
    assert by_name(spans, "session_run") == []  # a tile batch is one run: its span says it

    # With test-time augmentation, a batch is 8 session runs, each a span inside it (run in
    # the pipelined case by another thread, which the batch's context is handed to).
    exporter.clear()
    response = client.post(
        TILED + "&tta=true", content=png_bytes(STRIPES), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    batches = by_name(spans, "tile_batch")
    runs = by_name(spans, "session_run")
    assert len(runs) == 8 * len(batches) == 8 * math.ceil(tiles / 2)
    assert sorted(r.parent.span_id for r in runs if r.parent) == sorted(
        b.context.span_id for b in batches for _ in range(8)
    )


def test_a_request_without_traceparent_starts_a_trace_and_one_pass_has_one_session_run(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    response = client.post(
        "/v1/models/tiny-rgb/segment?format=json",
        content=png_bytes(np.zeros((20, 30, 3), np.uint8)),
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    server = request_span(spans)
    assert server.parent is None
    assert {s.name for s in spans if s is not server} == {
        "decode", "preprocess", "session_run", "encode",
    }  # fmt: skip
    assert (by_name(spans, "encode")[0].attributes or {})["segserve.format"] == "json"
    assert all(s.context.trace_id == server.context.trace_id for s in spans)


def test_errors_on_spans(traced: tuple[TestClient, InMemorySpanExporter]) -> None:
    """A bad image is the client's error: the decode span records it, the request span
    keeps an unset status with its 400 (server spans mark only 5xx as errors)."""
    client, exporter = traced
    response = client.post(
        "/v1/models/tiny-grey/segment", content=b"not a png", headers={"content-type": "image/png"}
    )
    assert response.status_code == 400
    spans = exporter.get_finished_spans()
    server = request_span(spans)
    assert (server.attributes or {})["http.response.status_code"] == 400
    assert server.status.status_code is StatusCode.UNSET
    (decode,) = by_name(spans, "decode")
    assert decode.status.status_code is StatusCode.ERROR
    assert [e.name for e in decode.events] == ["exception"]

    exporter.clear()
    assert client.get("/v1/models/nope").status_code == 404
    server = request_span(exporter.get_finished_spans())
    assert (server.attributes or {})["http.response.status_code"] == 404


def test_v2_tiled_request_is_traced(traced: tuple[TestClient, InMemorySpanExporter]) -> None:
    """/v2 with an encoded image (binary tensor data) above SEG_WHOLE_IMAGE_MAX_PIXELS."""
    client, exporter = traced
    image = png_bytes(np.tile(STRIPES, (4, 3)))  # 600 x 600: 2 x 2 tiles of 512
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 4 + len(image)},
                }
            ]
        }
    ).encode()
    response = client.post(
        "/v2/models/tiny-grey/infer",
        content=header + struct.pack("<I", len(image)) + image,
        headers={
            "inference-header-content-length": str(len(header)),
            "content-type": "application/octet-stream",
            "traceparent": TRACEPARENT,
        },
    )
    assert response.status_code == 200, response.text
    spans = exporter.get_finished_spans()
    server = request_span(spans)
    assert server.name == "POST /v2/models/{name}/infer"
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    attributes = server.attributes or {}
    assert attributes["segserve.model.name"] == "tiny-grey"
    assert attributes["segserve.model.version"] == "0.0.1"
    children = sorted(
        (s for s in spans if s.parent and s.parent.span_id == server.context.span_id),
        key=lambda s: s.start_time or 0,
    )
    assert [s.name for s in children] == [
        "parse", "decode", "preprocess", "tile_batch", "tile_batch", "encode",
    ]  # fmt: skip
    assert by_name(spans, "session_run") == []


def test_excluded_paths_are_not_traced(traced: tuple[TestClient, InMemorySpanExporter]) -> None:
    client, exporter = traced
    assert client.get("/health/ready").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert exporter.get_finished_spans() == ()  # nor were wait_ready's polls
    assert client.get("/v1/models").status_code == 200
    assert request_span(exporter.get_finished_spans()).name == "GET /v1/models"
    assert (
        tracing_setup.excluded_paths({"OTEL_PYTHON_EXCLUDED_URLS": "(unclosed"}) is None
    )  # logged


def test_off_unless_otel_settings_ask() -> None:
    assert not tracing_setup.enabled_by({})
    assert not tracing_setup.enabled_by({"OTEL_SERVICE_NAME": "x"})
    assert tracing_setup.enabled_by({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing_setup.enabled_by(
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}
    )
    assert tracing_setup.enabled_by({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_setup.enabled_by(
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}
    )
    assert not tracing_setup.enabled_by(
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    )
    assert tracing_setup.provider_from({}) is None
    assert tracing_setup.provider_from({"OTEL_TRACES_EXPORTER": "zipkin"}) is None  # logged, off
    assert tracing_setup.provider_from({"OTEL_TRACES_EXPORTER": "console"}) is not None


def test_untraced_app_has_no_middleware_and_no_spans(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    app = create_app(Settings(model_dir=model_dir, intra_op_threads=1))
    assert not any(m.cls is tracing_setup.TracingMiddleware for m in app.user_middleware)
    assert tracing.span("decode") is tracing.NOOP
    assert tracing.bind(len) is len


def test_missing_extra_leaves_tracing_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(logging.getLogger("segserve"), "propagate", True)  # into caplog
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails
    assert (
        tracing_setup.provider_from({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
        is None
    )
    assert "segserve[tracing]" in caplog.text


WITHOUT_EXTRA = """
import sys
if sys.argv[1] == "blocked":  # as if the tracing extra were not installed (FastAPI needs the API)
    sys.modules["opentelemetry.sdk"] = sys.modules["opentelemetry.exporter"] = None
import numpy as np
from fastapi.testclient import TestClient
from app.config import Settings
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready
with TestClient(create_app(Settings(model_dir=sys.argv[2], intra_op_threads=1))) as client:
    wait_ready(client)
    pixels = np.zeros((8, 8), np.uint8)
    response = client.post(
        "/v1/models/tiny-grey/segment", content=png_bytes(pixels),
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 200, response.text
extra = ("opentelemetry.sdk", "opentelemetry.exporter")
print("imported:", sorted(m for m, v in sys.modules.items() if v and m.startswith(extra)))
"""


@pytest.mark.parametrize("otel", ["unset", "blocked"])
def test_serves_without_opentelemetry_imported(
    model_dir: Path, otel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Untraced, OpenTelemetry's SDK is never imported; asked for traces without the extra,
    the service says so and serves untraced."""
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    if otel == "blocked":
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA, otel, str(model_dir)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "imported: []" in done.stdout
    assert ("segserve[tracing]" in done.stderr) == (otel == "blocked")


GLOBAL_PROVIDER = """
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from fastapi.testclient import TestClient
from app.config import Settings
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready
from tests.app.test_tracing import STRIPES, TILED, TRACEPARENT

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # as opentelemetry-instrument does
settings = Settings(model_dir=sys.argv[1], intra_op_threads=1, tile_batch=4)
with TestClient(create_app(settings)) as client:
    wait_ready(client)
    exporter.clear()
    response = client.post(
        TILED, content=png_bytes(STRIPES),
        headers={"content-type": "image/png", "traceparent": TRACEPARENT},
    )
    assert response.status_code == 200, response.text
spans = [
    {
        "name": s.name, "kind": s.kind.name, "id": s.context.span_id,
        "trace": f"{s.context.trace_id:032x}", "parent": s.parent and s.parent.span_id,
        "attributes": dict(s.attributes or {}),
    }
    for s in exporter.get_finished_spans()
]
print(json.dumps({"request_id": response.headers["x-request-id"], "spans": spans}))
"""


def test_a_configured_global_provider_is_used_without_a_second_server_span(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `opentelemetry-instrument` (a global SDK provider), FastAPI's own telemetry
    makes the server span: the stages go under it, with the request id and model on it."""
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER, str(model_dir)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    spans = result["spans"]
    assert {s["trace"] for s in spans} == {TRACE_ID}
    (server,) = [s for s in spans if s["kind"] == "SERVER"]
    assert server["parent"] == int(CALLER_SPAN, 16)
    assert server["attributes"]["segserve.request_id"] == result["request_id"]
    assert server["attributes"]["segserve.model.name"] == "tiny-grey"
    ids = {s["id"]: s for s in spans}

    def under_server(span: dict[str, Any]) -> bool:
        while span["parent"] in ids:
            span = ids[span["parent"]]
        return span is server

    stages = [s for s in spans if s["name"] in ("decode", "preprocess", "tile_batch", "encode")]
    assert sorted(s["name"] for s in stages) == [
        "decode", "encode", "preprocess", "tile_batch", "tile_batch", "tile_batch",
    ]  # fmt: skip
    assert all(under_server(s) for s in stages)


class Receiver(ThreadingHTTPServer):
    """A minimal OTLP/HTTP trace receiver: POST /v1/traces, protobuf bodies."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.exports: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        found = []
        for export in list(self.exports):
            for resource_spans in export.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    found += [(resource, span) for span in scope_spans.spans]
        return found


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.paths.append(self.path)
        if self.path != "/v1/traces" or self.headers["content-type"] != "application/x-protobuf":
            self.send_response(404)
            self.end_headers()
            return
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        self.server.exports.append(export)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_served_process_exports_the_tiled_trace_over_otlp(
    model_dir: Path, receiver: Receiver
) -> None:
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SDK_DISABLED": "false",  # whatever the environment running the tests says
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "segserve-under-test",
        "OTEL_PYTHON_EXCLUDED_URLS": "health/",  # running_server's readiness polls
        "SEG_TILE_BATCH": "4",
    }
    with running_server(model_dir, **env) as (base, _):
        response = httpx.post(
            base + TILED,
            content=png_bytes(STRIPES),
            headers={"content-type": "image/png", "traceparent": TRACEPARENT},
            timeout=30,
        )
        assert response.status_code == 200
        assert receiver.spans() == []  # batched: the SDK exports every 5 s, and at exit
    # The process stopped (SIGTERM) well within the export delay: spans are flushed at exit.
    assert set(receiver.paths) == {"/v1/traces"}
    ours = [(r, s) for r, s in receiver.spans() if s.trace_id.hex() == TRACE_ID]
    assert len(ours) == len(receiver.spans())  # the health polls were excluded
    assert ours, f"no span of trace {TRACE_ID} among {len(receiver.spans())}"
    assert {r["service.name"] for r, _ in ours} == {"segserve-under-test"}
    spans = [s for _, s in ours]
    (server,) = [s for s in spans if s.kind == s.SPAN_KIND_SERVER]
    assert server.parent_span_id.hex() == CALLER_SPAN
    assert server.name == "POST /v1/models/{name}/segment"
    attributes = {a.key: a.value for a in server.attributes}
    assert attributes["segserve.request_id"].string_value == response.headers["x-request-id"]
    assert attributes["segserve.model.name"].string_value == "tiny-grey"
    assert attributes["http.response.status_code"].int_value == 200
    children = [s.name for s in sorted(spans, key=lambda s: s.start_time_unix_nano)
                if s.parent_span_id == server.span_id]  # fmt: skip
    assert children == ["decode", "preprocess", "tile_batch", "tile_batch", "tile_batch", "encode"]
