"""Many requests at once on one client: a bounded window of threads, one error per item."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

from segserve.errors import SegserveError
from segserve.images import ImageInput
from segserve.progress import make_progress

R = TypeVar("R")


@dataclass(frozen=True)
class Item(Generic[R]):
    """One input's outcome: `result` when it succeeded, else `error` (never both)."""

    index: int  # position in the inputs
    source: ImageInput
    result: R | None = None
    error: SegserveError | None = None
    seconds: float = 0.0  # from sending the request to its answer, retries included

    @property
    def ok(self) -> bool:
        return self.error is None


def run_batch(
    work: Callable[[ImageInput], R],
    inputs: Sequence[ImageInput],
    concurrency: int = 4,
    progress: bool = True,
) -> Iterator[Item[R]]:
    """`work` on every input from `concurrency` threads, yielding items as they finish.

    At most 2 x `concurrency` inputs are in flight or finished-but-not-yet-yielded, so a
    caller that writes each result away holds only a few in memory. A SegserveError is its
    item's error; any other exception is a bug and ends the batch.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    bar = make_progress(progress, len(inputs))

    def one(index: int) -> Item[R]:
        started = time.perf_counter()
        source = inputs[index]
        try:
            result = work(source)
        except SegserveError as exc:
            return Item(index, source, error=exc, seconds=time.perf_counter() - started)
        return Item(index, source, result, seconds=time.perf_counter() - started)

    pending: set[Future[Item[R]]] = set()
    upcoming = iter(range(len(inputs)))
    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="segserve") as pool:
            try:
                while True:
                    for index in upcoming:
                        pending.add(pool.submit(one, index))
                        if len(pending) >= 2 * concurrency:
                            break
                    if not pending:
                        return
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        item = future.result()
                        bar.update(failed=not item.ok)
                        yield item
            finally:  # the caller stopped early or an error ends the batch: drop the rest
                for future in pending:
                    future.cancel()
    finally:
        bar.close()
