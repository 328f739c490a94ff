"""The gRPC server's life: started with the app (after its executor exists), stopped first."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from fastapi import FastAPI
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from app.config import Settings
from app.grpc_v2 import grpc_predict_v2_pb2 as pb
from app.grpc_v2.servicer import InferenceServicer, Malformed

log = logging.getLogger("segserve.grpc")
SERVICE = "GRPCInferenceService"
# Room for a response's framing beyond its tensors, which SEG_MAX_ANSWER_BYTES bounds.
ANSWER_OVERHEAD_BYTES = 64 * 1024


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Message limits: requests as SEG_MAX_UPLOAD_BYTES (RESOURCE_EXHAUSTED above, before
    the handler runs), answers as SEG_MAX_ANSWER_BYTES; connections kept alive as HTTP's."""
    return [
        ("grpc.max_receive_message_length", settings.max_upload_bytes),
        ("grpc.max_send_message_length", settings.max_answer_bytes + ANSWER_OVERHEAD_BYTES),
        ("grpc.max_concurrent_streams", 100),
        ("grpc.so_reuseport", 0),
    ]


async def start(app: FastAPI) -> grpc.aio.Server:
    """Listen on SEG_HOST:SEG_GRPC_PORT; fails (the app does not start) if the port is taken."""
    settings: Settings = app.state.settings
    assert settings.grpc_port is not None
    requests = Counter(
        "segserve_grpc_requests_total",
        "gRPC calls (Open Inference Protocol).",
        ["model", "method", "code"],
        registry=app.state.metrics.registry,
    )
    server = grpc.aio.server(options=server_options(settings))
    handlers = method_handlers(InferenceServicer(app.state, requests))
    name = pb.DESCRIPTOR.services_by_name[SERVICE].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    address = f"{host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot listen for gRPC on {address}")
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s", address)
    return server


def method_handlers(servicer: InferenceServicer) -> dict[str, Any]:
    """The service's methods, as protoc's `add_GRPCInferenceServiceServicer_to_server` makes
    them, except that a request that does not parse reaches the servicer as `Malformed`."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name[SERVICE].methods:
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_parser(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    return handlers


def _parser(message: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return Malformed(message.__name__, str(exc))

    return parse


async def stop(server: grpc.aio.Server, grace_s: float) -> None:
    """Refuse new calls and give those running `grace_s` seconds before cancelling them
    (their inference is told to stop)."""
    await server.stop(grace_s)
