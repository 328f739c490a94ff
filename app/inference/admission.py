"""Admission control and deadlines for inference work.

A bounded number of inferences may be running or waiting for a worker; past that a
request gets 503 with Retry-After at once instead of queueing without bound. Each
admitted request has a deadline: past it the client gets 504, and work that has not
started by then is skipped. The slot is released when the work really ends, so a timed
out request keeps counting until its thread is free again: the bound holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from app.errors import ProblemError

T = TypeVar("T")


class Overloaded(ProblemError):
    status, slug = 503, "overloaded"


class DeadlineExceeded(ProblemError):
    status, slug = 504, "deadline-exceeded"


class Admission:
    def __init__(self, limit: int, timeout_s: float, retry_after_s: int = 1) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.pending = 0  # touched on the event loop only
        self.rejected = 0
        self.timed_out = 0

    async def run(self, executor: Executor, fn: Callable[..., T], *args: Any) -> T:
        if self.pending >= self.limit:
            self.rejected += 1
            raise Overloaded(
                f"{self.pending} inferences are running or queued (SEG_MAX_PENDING="
                f"{self.limit}); retry later",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        deadline = time.monotonic() + self.timeout_s

        def guarded() -> T:
            if time.monotonic() > deadline:  # waited in the queue past the deadline: skip
                raise DeadlineExceeded("the request waited past its deadline")
            return fn(*args)

        loop = asyncio.get_running_loop()
        self.pending += 1
        future = loop.run_in_executor(executor, guarded)
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError:
            self.timed_out += 1
            raise DeadlineExceeded(
                f"no result within SEG_REQUEST_TIMEOUT_S={self.timeout_s:g} s"
            ) from None

    def _release(self, future: asyncio.Future[Any]) -> None:
        self.pending -= 1
        if not future.cancelled():
            future.exception()  # retrieved, so a skipped or abandoned job logs no warning
