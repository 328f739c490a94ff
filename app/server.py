"""uvicorn's server with a drain phase: on SIGTERM readiness turns 503 first."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import FrameType

import uvicorn


class DrainingServer(uvicorn.Server):
    """SIGTERM first calls `on_drain` (readiness 503) and keeps serving for `delay` seconds,
    so load balancers stop sending; then uvicorn stops accepting and drains in-flight
    requests for up to SEG_SHUTDOWN_TIMEOUT_S. A second signal skips the delay."""

    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None], delay: float) -> None:
        super().__init__(config)
        self.on_drain = on_drain
        self.delay = delay
        self.drain_started = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_drain()
        if self.delay <= 0 or self.drain_started:
            super().handle_exit(sig, frame)
            return
        self.drain_started = True
        timer = threading.Timer(self.delay, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()
