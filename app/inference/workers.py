"""The inference threads, sized from the providers the sessions really run on."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

log = logging.getLogger("segserve.workers")

P = ParamSpec("P")
T = TypeVar("T")


class InferencePool(Executor):
    """A thread pool whose size is decided at the first job rather than at start-up.

    Jobs come only for a ready model, so by then a session exists and `size()` can read the
    providers it really got: onnxruntime-gpu on a host without a GPU asks for CUDA and runs on
    CPU, where one inference already uses every core and a second one only competes for them.
    """

    def __init__(self, size: Callable[[], int], thread_name_prefix: str = "infer") -> None:
        self._size = size
        self._prefix = thread_name_prefix
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._shut_down = False
        self.workers: int | None = None  # known once the first job came

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self._threads().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut_down = True
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def _threads(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._pool is None:
                self.workers = self._size()
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=self._prefix)
                log.info("%d inference worker(s)", self.workers)
            return self._pool
