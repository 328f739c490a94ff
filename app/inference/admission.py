"""Admission control and deadlines for inference work.

A bounded number of inferences may be running or waiting for a worker; past that a
request gets 503 with Retry-After at once instead of queueing without bound. Each
admitted request has a deadline: past it the client gets 504, and work that has not
started by then is skipped. The slot is released when the work really ends, so a timed
out request keeps counting until its thread is free again: the bound holds.

Work that nobody waits for any more (deadline passed, or the client hung up) is told to
stop through a `threading.Event`: queued work is skipped, tiled work stops between tiles.
A single session run cannot be interrupted, so a one-pass image finishes its run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any, TypeVar

from app.errors import Abandoned, DeadlineExceeded, Overloaded, ShuttingDown
from app.inference.pipeline import Stopped

T = TypeVar("T")


class Admission:
    def __init__(
        self,
        limit: int,
        timeout_s: float,
        retry_after_s: int = 1,
        pixel_limit: int | None = None,
    ) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        # One budget in pixels for synchronous requests (their images, from admission until
        # their work ends) and jobs (each tile batch while it waits for and holds a worker).
        self.pixel_limit = pixel_limit
        self.pixels_held = 0
        self.pixel_condition = threading.Condition()
        self.pending = 0  # touched on the event loop only
        self.rejected = 0
        self.timed_out = 0
        self.abandoned = 0
        # Each waiting request's stop event and a future that `abort` completes.
        self.waiting: dict[threading.Event, asyncio.Future[None]] = {}
        self.aborted = False  # after `abort`, new requests are refused too

    def check_capacity(self) -> None:
        """503 with Retry-After when no inference can be admitted now; routes ask before
        reading a body, so a full queue costs no upload."""
        if self.pending >= self.limit:
            self.rejected += 1
            raise Overloaded(
                f"{self.pending} inferences are running or queued (SEG_MAX_PENDING="
                f"{self.limit}); retry later",
                headers={"Retry-After": str(self.retry_after_s)},
            )

    def _over_budget(self, pixels: int) -> bool:
        # A single image larger than the budget is admitted when nothing else holds any.
        return (
            self.pixel_limit is not None
            and self.pixels_held > 0
            and self.pixels_held + pixels > self.pixel_limit
        )

    def hold_pixels(self, pixels: int) -> None:
        """Take `pixels` of the budget for a synchronous request, or 503 at once."""
        with self.pixel_condition:
            if self._over_budget(pixels):
                self.rejected += 1
                raise Overloaded(
                    f"{self.pixels_held} pixels are being segmented or queued "
                    f"(SEG_MAX_PENDING_PIXELS={self.pixel_limit}); retry later",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            self.pixels_held += pixels

    def release_pixels(self, pixels: int) -> None:
        with self.pixel_condition:
            self.pixels_held -= pixels
            self.pixel_condition.notify_all()

    @contextmanager
    def pixels_for_background(self, pixels: int, should_stop: Callable[[], bool]) -> Iterator[None]:
        """For background work (a job's tile batch): wait, rather than fail, until `pixels`
        fit the budget; give them back when done. Raises Stopped once `should_stop` says so."""
        with self.pixel_condition:
            while self._over_budget(pixels):
                if should_stop():
                    raise Stopped("stopped while waiting for the pixel budget")
                self.pixel_condition.wait(0.1)
            self.pixels_held += pixels
        try:
            yield
        finally:
            self.release_pixels(pixels)

    async def run(
        self,
        executor: Executor,
        fn: Callable[..., T],
        *args: Any,
        stop: threading.Event | None = None,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
        pixels: int = 0,
    ) -> T:
        """`fn(*args)` in the executor. `stop` is set when the answer is no longer wanted;
        `disconnected` is polled while waiting (Starlette's `request.is_disconnected`);
        `pixels` (the image's) are held in the pixel budget until the work ends."""
        if self.aborted:
            raise ShuttingDown("the service is shutting down; retry on another instance")
        self.check_capacity()
        self.hold_pixels(pixels)
        deadline = time.monotonic() + self.timeout_s
        stop = stop or threading.Event()

        def guarded() -> T:
            if stop.is_set():  # abandoned while queued: skip
                raise Abandoned("the request was abandoned before it started")
            if time.monotonic() > deadline:  # waited in the queue past the deadline: skip
                raise DeadlineExceeded("the request waited past its deadline")
            return fn(*args)

        loop = asyncio.get_running_loop()
        self.pending += 1
        try:
            future = loop.run_in_executor(executor, guarded)
        except BaseException:
            self.pending -= 1
            self.release_pixels(pixels)
            raise
        future.add_done_callback(self._release)
        future.add_done_callback(lambda _: self.release_pixels(pixels))
        watcher = asyncio.create_task(self._watch(disconnected, stop)) if disconnected else None
        aborted: asyncio.Future[None] = loop.create_future()
        self.waiting[stop] = aborted
        try:
            # No shield: asyncio.wait never cancels what it waits for, and a shield's outer
            # future would hold the job's exception unretrieved ("Future exception was never
            # retrieved" on stderr for every failed job).
            waiters: set[asyncio.Future[Any]] = {future, aborted}
            if watcher is not None:
                waiters.add(watcher)
            done, _ = await asyncio.wait(
                waiters, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                stop.set()
                self.timed_out += 1
                raise DeadlineExceeded(
                    f"no result within SEG_REQUEST_TIMEOUT_S={self.timeout_s:g} s"
                )
            if future.done():
                return future.result()
            if aborted.done():
                raise ShuttingDown("the service is shutting down; retry on another instance")
            self.abandoned += 1  # the watcher finished first: the client is gone
            raise Abandoned("the client closed the connection")
        except asyncio.CancelledError:
            # The request's task was cancelled (shutdown past SEG_SHUTDOWN_TIMEOUT_S): nobody
            # waits for this answer, so queued work is skipped and tiled work stops.
            stop.set()
            raise
        finally:
            self.waiting.pop(stop, None)
            aborted.cancel()
            if watcher is not None:
                watcher.cancel()
                watcher.add_done_callback(_retrieve)

    def abort(self) -> None:
        """Shutdown: every waiting request answers 503 at once and its work stops (queued work
        is skipped, tiled work stops between tiles), and later ones are refused. On the event
        loop."""
        self.aborted = True
        for stop, aborted in list(self.waiting.items()):
            stop.set()
            if not aborted.done():
                aborted.set_result(None)

    @staticmethod
    async def _watch(disconnected: Callable[[], Awaitable[bool]], stop: threading.Event) -> None:
        while not await disconnected():
            await asyncio.sleep(0.1)
        stop.set()

    def _release(self, future: asyncio.Future[Any]) -> None:
        self.pending -= 1
        _retrieve(future)  # so a skipped, abandoned or failed job logs no warning


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
