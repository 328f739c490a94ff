"""The Open Inference Protocol (KServe v2) over gRPC, beside REST, on SEG_GRPC_PORT.

`grpc_predict_v2.proto` defines the service; `scripts/gen_grpc.py` generates the
`*_pb2*.py` modules beside it (committed: the runtime needs grpcio and protobuf only).
The server shares the app's registry, executor, admission control, limits and API keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def with_grpc(lifespan: Lifespan) -> Lifespan:
    """`lifespan`, plus the gRPC server while the app runs when SEG_GRPC_PORT is set: started
    once the app's executor exists, stopped before it is shut down. Calls still running at
    shutdown get SEG_SHUTDOWN_TIMEOUT_S (those waiting past uvicorn's drain were already
    answered UNAVAILABLE by the admission's abort)."""

    @asynccontextmanager
    async def combined(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan(app):
            if app.state.settings.grpc_port is None:
                yield
                return
            from app.grpc_v2 import server  # grpc is imported only when it is on

            running = await server.start(app)
            try:
                yield
            finally:
                await server.stop(running, app.state.settings.shutdown_timeout_s)

    return combined
