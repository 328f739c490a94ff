"""A progress bar for batches: tqdm's when it is installed, else one line on stderr."""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO


class Progress(Protocol):
    def update(self, failed: bool) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    def update(self, failed: bool) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """`[#####.....] 5/10 done, 1 failed`, redrawn at most 10 times a second."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.width = total, width
        self.stream = stream if stream is not None else sys.stderr
        self.done = self.failed = 0
        self.drawn_at = 0.0
        self.draw()

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        now = time.monotonic()
        if now - self.drawn_at >= 0.1 or self.done == self.total:
            self.draw()

    def draw(self) -> None:
        self.drawn_at = time.monotonic()
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} done, {self.failed} failed")
        self.stream.flush()

    def close(self) -> None:
        self.draw()
        self.stream.write("\n")
        self.stream.flush()


class TqdmProgress:
    def __init__(self, total: int, tqdm: Any) -> None:
        self.bar = tqdm(total=total, unit="img", desc="segmenting")
        self.failed = 0

    def update(self, failed: bool) -> None:
        if failed:
            self.failed += 1
            self.bar.set_postfix_str(f"{self.failed} failed", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def make_progress(enabled: bool, total: int) -> Progress:
    if not enabled:
        return NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return LineProgress(total)
    return TqdmProgress(total, tqdm)
