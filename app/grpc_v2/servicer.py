"""The GRPCInferenceService: the same models, limits, admission and keys as REST /v2.

Errors are gRPC status codes with the same messages REST gives: INVALID_ARGUMENT (400,
415, 422), NOT_FOUND (404), RESOURCE_EXHAUSTED (413: pixels, batch, answer size),
UNAVAILABLE (503: model not ready, overloaded with `retry-after` in the trailing
metadata, shutting down), DEADLINE_EXCEEDED (504), UNAUTHENTICATED (401). When the client
cancels or its deadline passes, gRPC cancels the handler and the inference's stop event is
set, so queued work is skipped and tiled work stops at its next tile.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from prometheus_client import Counter
from starlette.datastructures import State

from app.api.security import key_matches
from app.config import Settings
from app.errors import BadInferenceRequest, ModelNotReady, ProblemError
from app.grpc_v2 import grpc_predict_v2_pb2 as pb
from app.grpc_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from app.grpc_v2.tensors import infer_response, input_tensors, wanted_outputs
from app.inference.admission import Admission
from app.inference.pipeline import Stopped
from app.inference.registry import ModelEntry, ModelRegistry
from app.main_info import SERVER_NAME, VERSION
from app.service import v2_infer

log = logging.getLogger("segserve.access")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
# grpc.aio.ServicerContext (grpc ships no type information, so it is Any to mypy).
Context = Any

STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
OPEN_HEALTH = ("ServerLive", "ServerReady")  # as /v2/health/*, open under SEG_OPEN_HEALTH
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Unauthorized(ProblemError):
    """No API key, or not one of SEG_API_KEYS (REST answers these in its middleware)."""

    status, slug = 401, "unauthorized"


class Malformed:
    """A request whose bytes are not a valid message (what the server's deserializer gives
    instead of raising, which gRPC would answer UNKNOWN): answered INVALID_ARGUMENT."""

    def __init__(self, message_type: str, reason: str) -> None:
        self.message_type, self.reason = message_type, reason


def grpc_code(error: ProblemError) -> grpc.StatusCode:
    return STATUS_CODES.get(error.status, grpc.StatusCode.INVALID_ARGUMENT)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Reads the app's shared objects at each call (the executor exists once it started)."""

    def __init__(self, state: State, requests: Counter) -> None:
        self.state = state
        self.requests = requests
        settings: Settings = state.settings
        self.settings = settings
        self.keys = settings.api_key_list

    @property
    def registry(self) -> ModelRegistry:
        registry: ModelRegistry = self.state.registry
        return registry

    async def _call(
        self,
        method: str,
        request: Req,
        context: Context,
        handle: Callable[[Req, Context], Awaitable[Resp]],
        model: str = "",
    ) -> Resp:
        """Authenticate, handle, map errors to status codes, count and log the call."""
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        incoming = metadata.get("x-request-id", "")
        request_id = incoming if _SANE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        await context.send_initial_metadata((("x-request-id", request_id),))
        started = time.perf_counter()
        code, detail = grpc.StatusCode.OK, ""
        trailing: tuple[tuple[str, str], ...] = ()
        try:
            if self.keys and not (method in OPEN_HEALTH and self.settings.open_health):
                self._authenticate(metadata)
            if isinstance(request, Malformed):
                raise BadInferenceRequest(
                    f"the request is not a valid {request.message_type} message: {request.reason}"
                )
            return await handle(request, context)
        except ProblemError as error:
            code, detail = grpc_code(error), error.detail
            trailing = tuple((k.lower(), v) for k, v in error.headers.items())
        except Stopped as error:  # the work stopped because nobody waits for it
            code, detail = grpc.StatusCode.CANCELLED, str(error)
        except asyncio.CancelledError:  # cancelled by the client or past its deadline
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
            code = grpc.StatusCode.INTERNAL
            detail = "internal error; see the server log for this request id"
        finally:
            self._record(method, model, code, request_id, started)
        await context.abort(code, detail, trailing_metadata=trailing)
        raise AssertionError("unreachable: abort raises")

    def _authenticate(self, metadata: dict[str, str]) -> None:
        scheme, _, token = metadata.get("authorization", "").partition(" ")
        candidate = token.strip() if scheme.lower() == "bearer" and token else None
        candidate = candidate or metadata.get("x-api-key")
        if candidate is None:
            raise Unauthorized(
                "an API key is required: metadata authorization: Bearer <key> or x-api-key: <key>"
            )
        if not key_matches(candidate, self.keys):
            raise Unauthorized("the API key is not valid")

    def _record(
        self, method: str, model: str, code: grpc.StatusCode, request_id: str, started: float
    ) -> None:
        known = {e.name for e in self.registry.served()}
        model = model if model in known else ("" if not model else "unknown")
        self.requests.labels(model, method, code.name).inc()
        fields = {
            "request_id": request_id, "rpc": method, "model": model, "code": code.name,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        }  # fmt: skip
        log.info("rpc", extra={"fields": fields})

    def _entry(self, name: str, version: str) -> ModelEntry:
        return self.registry.get(name, version or None)

    # The protocol's RPCs.

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        async def handle(_: Any, __: Context) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._call("ServerLive", request, context, handle)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        async def handle(_: Any, __: Context) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.registry.ready)

        return await self._call("ServerReady", request, context, handle)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        async def handle(r: pb.ModelReadyRequest, _: Context) -> pb.ModelReadyResponse:
            try:
                self._entry(r.name, r.version)
            except ModelNotReady:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._call("ModelReady", request, context, handle, _name(request))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        async def handle(_: Any, __: Context) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=VERSION, extensions=[])

        return await self._call("ServerMetadata", request, context, handle)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        async def handle(r: pb.ModelMetadataRequest, _: Context) -> pb.ModelMetadataResponse:
            entry = self._entry(r.name, r.version)
            versions = [e.version for e in self.registry.versions(entry.name)]
            meta = v2_infer.model_metadata(entry, versions)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[tensor(**t) for t in meta["inputs"]],
                outputs=[tensor(**t) for t in meta["outputs"]],
            )

        return await self._call("ModelMetadata", request, context, handle, _name(request))

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> Any:
        model = getattr(request, "model_name", "")
        return await self._call("ModelInfer", request, context, self._infer, model)

    async def _infer(self, request: pb.ModelInferRequest, context: Context) -> Any:
        entry = self._entry(request.model_name, request.model_version)
        admission: Admission = self.state.admission
        admission.check_capacity()
        wanted = wanted_outputs(request)
        # Typed contents are unpacked element by element: off the event loop.
        tensors = await asyncio.to_thread(input_tensors, request, self.settings)
        settings, spec, request_id = self.settings, entry.spec, request.id

        def work(stop: threading.Event) -> tuple[pb.ModelInferResponse, float]:
            images = v2_infer.request_images(tensors, settings)
            result = v2_infer.infer_images(entry, images, wanted, settings, stop)
            response = infer_response(spec.name, spec.version, request_id, result.arrays, wanted)
            return response, result.inference_ms

        async def gone() -> bool:
            return bool(context.cancelled())

        stop = threading.Event()
        pixels = await asyncio.to_thread(v2_infer.tensor_pixels, tensors)
        response, inference_ms = await admission.run(
            self.state.executor, work, stop, stop=stop, disconnected=gone, pixels=pixels
        )
        self.state.metrics.inference.labels(entry.name).observe(inference_ms / 1000)
        return response


def _name(request: Any) -> str:
    return str(getattr(request, "name", ""))
