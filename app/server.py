"""uvicorn's server as segserve runs it: connection limits, and a drain phase on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from app.config import Settings
from app.connections import ConnectionGuard, guarded_protocol
from app.inference.registry import ModelRegistry
from app.inference.session import SessionFactory
from app.supervisor import ProcessRole, Supervisor, planned_processes

log = logging.getLogger("segserve.server")

# File descriptors kept for everything but client connections: the listener, model files,
# onnxruntime, logs, spooled uploads.
RESERVED_FDS = 128
# How long before uvicorn's shutdown timeout the waiting requests are answered: time to send
# their 503s.
DEADLINE_MARGIN_S = 0.5


class DrainingServer(uvicorn.Server):
    """SIGTERM first calls `on_drain` (readiness 503) and keeps serving for `delay` seconds,
    so load balancers stop sending; then uvicorn stops accepting and drains in-flight
    requests for up to SEG_SHUTDOWN_TIMEOUT_S. A second signal skips the delay.

    Just before that timeout `on_deadline` runs (inference still waiting answers 503 and
    stops), so that uvicorn need not cancel the requests: a cancelled request answers a bare
    500 and logs a traceback."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_drain: Callable[[], None],
        delay: float,
        on_deadline: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.on_drain = on_drain
        self.on_deadline = on_deadline
        self.delay = delay
        self.drain_started = False

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = None
        if self.on_deadline is not None and self.config.timeout_graceful_shutdown is not None:
            early = max(0.0, self.config.timeout_graceful_shutdown - DEADLINE_MARGIN_S)
            timer = asyncio.get_running_loop().call_later(early, self.on_deadline)
        try:
            await super().shutdown(sockets)
        finally:
            if timer is not None:
                timer.cancel()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_drain()
        if self.delay <= 0 or self.drain_started:
            super().handle_exit(sig, frame)
            return
        self.drain_started = True
        timer = threading.Timer(self.delay, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()


def connection_cap(wanted: int) -> int:
    """`wanted` connections, raising the soft limit on open files toward the hard one when it
    is too low for them; fewer, with a warning, when even the hard limit is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open file limit to %d: %s", target, exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        cap = max(1, soft - RESERVED_FDS)
        log.warning(
            "SEG_MAX_CONNECTIONS=%d does not fit the open file limit %d: capped at %d",
            wanted, soft, cap,
        )  # fmt: skip
        return cap
    return wanted


def server_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    guard = ConnectionGuard(connection_cap(settings.max_connections), settings.header_timeout_s)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # segserve logs one structured line per request itself
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        http=guarded_protocol(guard),
        ws="none",  # no WebSocket routes: an upgrade request is plain HTTP
    )


def serve(settings: Settings, session_factory: SessionFactory | None = None) -> None:
    """Run the service until SIGTERM or SIGINT (blocking); `session_factory` is for tests (a
    picklable one with several processes). With several worker processes (SEG_PROCESSES)
    this process supervises them (app/supervisor.py) and exits non-zero when they cannot
    start."""
    count = planned_processes(settings)
    if count != 1:
        status = Supervisor(settings, session_factory, count).run()
        if status != 0:
            raise SystemExit(status)
        return
    server, _ = worker_server(settings, ProcessRole(), session_factory)
    server.run()


def worker_server(
    settings: Settings, role: ProcessRole, session_factory: SessionFactory | None = None
) -> tuple[DrainingServer, ModelRegistry]:
    """The app as `role` runs it and the uvicorn server to run it with, and its registry."""
    from app.main import create_app

    app = (
        create_app(settings, role=role)
        if session_factory is None
        else create_app(settings, session_factory, role)
    )
    server = DrainingServer(
        server_config(app, settings),
        app.state.registry.start_draining,
        settings.drain_delay_s,
        app.state.admission.abort,
    )
    return server, app.state.registry
