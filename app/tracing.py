"""Tracing hooks for the request path: child spans of the request's span for its stages.

Tracing is set up by app/tracing_setup.py, and only when the OTEL_* settings ask for it.
Until a traced request sets its span here, every hook is one context-variable read
returning a shared no-op object, and OpenTelemetry is never imported.

The request span lives in a context variable set by `TracingMiddleware`; the stage hooks
(`span`, `span_queue`) open children of whatever span is current. Inference runs in
executor threads, which do not inherit context variables: routes hand their work over
through `bind`, which carries the caller's context (and so its current span) along.
"""

from __future__ import annotations

import contextvars
import functools
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

T = TypeVar("T")
Attributes = Mapping[str, Any]


class _NoopSpan:
    """What every hook returns while tracing is off: a span and a context manager that
    does nothing."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


NOOP = _NoopSpan()


@dataclass(frozen=True)
class _Active:
    tracer: Tracer
    request_span: Span


_ACTIVE: contextvars.ContextVar[_Active | None] = contextvars.ContextVar(
    "segserve_tracing", default=None
)


@contextmanager
def traced_request(tracer: Tracer, request_span: Span) -> Iterator[None]:
    """The hooks' parent for a request's work (`TracingMiddleware` opens it)."""
    token = _ACTIVE.set(_Active(tracer, request_span))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def span(name: str, attributes: Attributes | None = None) -> Any:
    """A child of the current span for a `with` block (the no-op outside traced requests)."""
    active = _ACTIVE.get()
    if active is None:
        return NOOP
    return active.tracer.start_as_current_span(name, attributes=attributes)


def bind(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` carrying the caller's context (its current span) into another thread."""
    if _ACTIVE.get() is None:
        return fn
    return functools.partial(contextvars.copy_context().run, fn)


class SpanQueue:
    """Spans of work items that may overlap (tile batches, the next prepared while one
    runs): started in order, ended oldest first; those still open on exit are ended."""

    def __init__(self, active: _Active | None) -> None:
        self.active = active
        self.open: deque[Span] = deque()

    def start(
        self, name: str, attributes: Callable[..., Attributes] | None = None, *args: Any
    ) -> None:
        """Start a span; its attributes are `attributes(*args)`, computed only if traced."""
        if self.active is not None:
            values = attributes(*args) if attributes is not None else None
            self.open.append(self.active.tracer.start_span(name, attributes=values))

    def bind(self, fn: Callable[..., T]) -> Callable[..., T]:
        """`fn` run, in any thread, with the newest started span current."""
        if self.active is None or not self.open:
            return fn
        return functools.partial(contextvars.copy_context().run, _within, self.open[-1], fn)

    def end_oldest(self) -> None:
        if self.open:
            self.open.popleft().end()

    def __enter__(self) -> SpanQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        while self.open:
            self.end_oldest()


_IDLE_QUEUE = SpanQueue(None)  # untraced: shared, it never holds a span


def _within(current: Span, fn: Callable[..., T], *args: Any) -> T:
    from opentelemetry import trace

    with trace.use_span(current, end_on_exit=False):
        return fn(*args)


def span_queue() -> SpanQueue:
    active = _ACTIVE.get()
    return _IDLE_QUEUE if active is None else SpanQueue(active)


def annotate(attributes: Attributes) -> None:
    """Attributes for the request's span (model name and version, once a route knows them)."""
    active = _ACTIVE.get()
    if active is not None:
        active.request_span.set_attributes(attributes)


def annotate_model(name: str, version: str | None) -> None:
    """The model a request is for, on its span."""
    if _ACTIVE.get() is not None:
        annotate({"segserve.model.name": name, "segserve.model.version": version or ""})


def log_fields() -> dict[str, str]:
    """The current trace and span ids for a log line, empty when not traced."""
    active = _ACTIVE.get()
    if active is None:
        return {}
    context = active.request_span.get_span_context()
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
