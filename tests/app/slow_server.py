"""The real server (`app.server.serve`, as `segserve serve` runs it) with sessions that sleep
before every run, so that tests can hold work in flight and in the queue.

`python -m tests.app.slow_server MODEL_DIR PORT SECONDS_PER_RUN` (other settings: SEG_* env).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnxruntime as ort

from tests.app.conftest import server_process


class SlowSession:
    """An onnxruntime session whose `run` first sleeps `delay` seconds."""

    def __init__(self, session: ort.InferenceSession, delay: float) -> None:
        self._session, self._delay = session, delay

    def run(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._delay)
        return self._session.run(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class SlowFactory:
    """A session factory making `SlowSession`s; picklable, for worker processes
    (SEG_PROCESSES)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __call__(self, path: str, options: ort.SessionOptions, providers: list[Any]) -> Any:
        return SlowSession(ort.InferenceSession(path, options, providers=providers), self.delay)


@contextlib.contextmanager
def slow_server(
    model_dir: Path, seconds_per_run: float, **env: str
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Like conftest's `running_server`: yields (base URL, process) once ready."""
    script = ["-m", "tests.app.slow_server", str(model_dir)]
    with server_process(lambda port: [*script, str(port), str(seconds_per_run)], env,
                        kill=True) as started:  # fmt: skip
        yield started


def main() -> None:
    from app.config import Settings
    from app.server import serve

    model_dir, port, delay = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    serve(Settings(model_dir=model_dir, port=port), SlowFactory(delay))


if __name__ == "__main__":
    main()
