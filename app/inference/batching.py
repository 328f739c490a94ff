"""Dynamic batching: same-shape inputs from concurrent requests share one session run.

Worker threads call `submit` and block; one batching thread takes the oldest waiting
input, waits up to `max_delay_s` for more inputs of the same shape and output, joins up
to `max_batch` rows into one batch, runs it and hands each caller its rows back. Inputs
of another shape wait for a later batch, in arrival order.

Every batch is padded (with copies of its last row) to `max_batch` rows, so the session
always sees one shape per image size: measured on an H200 (`bench/batching_probe.py`),
batches of varying size cost 37-100 ms each, about what the first run of a new shape
costs, while 8-row batches of one shape ran in 8 ms.

It pays where one run of a batch costs much less than the runs of its parts (a GPU);
on a CPU a batch costs about the sum of its images, and the wait only adds latency.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

RunFn = Callable[[str, np.ndarray], np.ndarray]  # (output name, NCHW batch) -> output batch


@dataclass(eq=False)  # identity: deque.remove must not compare arrays
class _Request:
    output: str
    x: np.ndarray  # (n, C, H, W)
    result: Future[np.ndarray] = field(default_factory=Future)

    @property
    def key(self) -> tuple[str, tuple[int, ...], np.dtype]:
        return self.output, self.x.shape[1:], self.x.dtype


class BatcherClosed(RuntimeError):
    """The batcher stopped (its model was replaced or unloaded): run the rows directly."""


class DynamicBatcher:
    def __init__(self, run: RunFn, max_batch: int, max_delay_s: float, name: str = "") -> None:
        self.run = run
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.waiting: deque[_Request] = deque()
        self.changed = threading.Condition()
        self.closed = False
        self.batches = 0  # session runs made, for metrics and tests
        self.rows = 0  # rows run in them
        self.thread = threading.Thread(target=self._loop, name=f"batch-{name}", daemon=True)
        self.thread.start()

    def submit(self, output: str, x: np.ndarray) -> np.ndarray:
        """Blocks until the rows of `x` have run; raises what the run raised."""
        request = _Request(output, x)
        with self.changed:
            if self.closed:
                raise BatcherClosed("the batcher is closed")
            self.waiting.append(request)
            self.changed.notify_all()
        return request.result.result()

    def close(self) -> None:
        """Runs what is waiting, then stops the batching thread."""
        with self.changed:
            self.closed = True
            self.changed.notify_all()
        self.thread.join()

    def _take_batch(self) -> list[_Request] | None:
        with self.changed:
            while not self.waiting:
                if self.closed:
                    return None
                self.changed.wait()
            first = self.waiting[0]
            deadline = time.monotonic() + self.max_delay_s
            while True:
                batch = self._matching(first)
                rows = sum(len(r.x) for r in batch)
                remaining = deadline - time.monotonic()
                if rows >= self.max_batch or remaining <= 0 or self.closed:
                    break
                self.changed.wait(remaining)
            for request in batch:
                self.waiting.remove(request)
            return batch

    def _matching(self, first: _Request) -> list[_Request]:
        """The oldest waiting request and the later ones of its key that fit beside it."""
        batch, rows = [first], len(first.x)
        for request in self.waiting:
            if request is first or request.key != first.key:
                continue
            if rows + len(request.x) > self.max_batch:
                break
            batch.append(request)
            rows += len(request.x)
        return batch

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        try:
            x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch])
            if len(x) < self.max_batch:
                x = np.concatenate([x, np.repeat(x[-1:], self.max_batch - len(x), axis=0)])
            out = self.run(batch[0].output, x)
        except BaseException as exc:  # every caller of this batch gets the error
            for request in batch:
                request.result.set_exception(exc)
            return
        self.batches += 1
        self.rows += sum(len(r.x) for r in batch)
        start = 0
        for request in batch:
            n = len(request.x)
            request.result.set_result(out[start : start + n])
            start += n
