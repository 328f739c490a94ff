"""A cap on open connections and a header timeout for the served HTTP server.

uvicorn times a connection out only between requests (its keep-alive timer, armed after an
answer and cancelled by the next byte): a connection that sends nothing, or part of a request
line or headers, is held forever, and `limit_concurrency` acts only once a request's headers
are complete. 20,000 half-sent requests used every file descriptor and /health/live stopped
answering. `guarded_protocol` wraps uvicorn's HTTP protocol so that:

- a connection with no request in progress (just opened, or between requests) must complete
  a request's headers within SEG_HEADER_TIMEOUT_S; past that it is closed, with a 408 when it
  had sent part of a request;
- more than MAX_HEADER_BYTES before the headers are complete is answered 431 (httptools, the
  parser uvicorn prefers, has no limit of its own);
- at SEG_MAX_CONNECTIONS open connections a new one closes the connection that has waited
  longest without a request in progress, so idle or half-sent connections can never lock out a
  health probe; when every connection has a request in progress, the new one gets a 503 and
  is closed.

The body of a request, once its headers are complete, is the request handler's business.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("segserve.connections")

MAX_HEADER_BYTES = 64 * 1024  # request line and headers; h11's own default is 16 KiB
WARN_EVERY_S = 60.0  # at most one warning a minute about the cap or the timeout

TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain\r\n"
    b"content-length: 43\r\n\r\nthe request headers took too long to arrive"
)
TOO_LARGE_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n"
    b"content-type: text/plain\r\ncontent-length: 33\r\n\r\nthe request headers are too large"
)
FULL_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\n"
    b"content-type: text/plain\r\ncontent-length: 35\r\n\r\ntoo many open connections; retry later"
)


class ConnectionGuard:
    """What every connection of one server shares: the limits, the connections waiting for a
    request's headers (oldest first), and counts of what was closed."""

    def __init__(
        self,
        max_connections: int,
        header_timeout_s: float,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        self.waiting: OrderedDict[GuardedMixin, None] = OrderedDict()
        self.open = 0
        self.timed_out = 0
        self.evicted = 0
        self.refused = 0
        self.too_large = 0
        self._warned_at: dict[str, float] = {}

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned_at.get(kind, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned_at[kind] = now
            log.warning(message, *args)


class GuardedMixin:
    """The guard's hooks around a uvicorn HTTP protocol (put it first among the bases)."""

    guard: ConnectionGuard  # set on the class `guarded_protocol` makes
    if TYPE_CHECKING:  # from the uvicorn protocol this is mixed into
        transport: asyncio.Transport
        cycle: Any
        loop: asyncio.AbstractEventLoop

    _timer: asyncio.TimerHandle | None = None
    _header_bytes = 0
    _counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        guard = self.guard
        if guard.open >= guard.max_connections and not self._make_room():
            guard.refused += 1
            guard.warn("full", "SEG_MAX_CONNECTIONS=%d reached: refusing", guard.max_connections)
            self.transport.write(FULL_503)
            self.transport.close()
            return
        guard.open += 1
        self._counted = True
        self._start_waiting()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self.transport.is_closing():
            return
        if self._in_progress():
            self._stop_waiting()
            return
        if self._timer is None:  # data after an answer: the next request has begun
            self._start_waiting()
        self._header_bytes += len(data)
        if self._header_bytes > self.guard.max_header_bytes:
            self.guard.too_large += 1
            self._stop_waiting()
            self.transport.write(TOO_LARGE_431)
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing() and not self._in_progress():
            self._start_waiting()  # a kept-alive connection waits for its next request

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        if self._counted:
            self._counted = False
            self.guard.open -= 1
        super().connection_lost(exc)  # type: ignore[misc]

    def _in_progress(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _start_waiting(self) -> None:
        self._stop_waiting()
        self._header_bytes = 0
        self.guard.waiting[self] = None
        self._timer = self.loop.call_later(self.guard.header_timeout_s, self._header_timeout)

    def _stop_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.guard.waiting.pop(self, None)

    def _header_timeout(self) -> None:
        self._timer = None
        self._stop_waiting()
        if self.transport.is_closing():
            return
        self.guard.timed_out += 1
        self.guard.warn(
            "timeout", "closing connections that sent no complete request headers within "
            "SEG_HEADER_TIMEOUT_S=%g s", self.guard.header_timeout_s,
        )  # fmt: skip
        if self._header_bytes:
            self.transport.write(TIMEOUT_408)
        self.transport.close()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for a request; False if none waits."""
        if not self.guard.waiting:
            return False
        oldest = next(iter(self.guard.waiting))
        oldest._stop_waiting()
        oldest.transport.close()
        self.guard.evicted += 1
        self.guard.warn(
            "evict", "SEG_MAX_CONNECTIONS=%d reached: closing the connections that waited "
            "longest without a request", self.guard.max_connections,
        )  # fmt: skip
        return True


class GuardedH11Protocol(GuardedMixin, H11Protocol):
    pass


def _protocol_base() -> type[GuardedMixin]:
    """The guarded form of the protocol uvicorn's `http="auto"` picks: httptools if present."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn falls back to h11 too
        return GuardedH11Protocol

    class GuardedHttpToolsProtocol(GuardedMixin, HttpToolsProtocol):
        pass

    return GuardedHttpToolsProtocol


def guarded_protocol(guard: ConnectionGuard, base: type[GuardedMixin] | None = None) -> type[Any]:
    """A protocol class for `uvicorn.Config(http=...)` whose connections share `guard`."""
    base = base or _protocol_base()
    return type(base.__name__, (base,), {"guard": guard})
