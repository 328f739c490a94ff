"""Dynamic batching: callers get their own rows back, shapes never mix, errors reach
every caller of a batch, and a registry with batching on segments like one without."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Device, Settings
from app.inference.batching import DynamicBatcher
from app.inference.pipeline import segment
from app.inference.registry import ModelRegistry
from app.inference.runner import SessionRunner
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready
from tests.app.tiny_models import write_model


class Recorder:
    """A fake session run: doubles its input, remembers each batch's rows, and lets the
    test hold the first run until everyone has queued (so batches can form)."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.batch_rows: list[int] = []
        self.hold = hold

    def __call__(self, output: str, x: np.ndarray) -> np.ndarray:
        if self.hold is not None:
            self.hold.wait(10)
        self.batch_rows.append(len(x))
        return x * 2 if output == "double" else -x


@pytest.fixture
def batcher() -> Iterator[tuple[DynamicBatcher, Recorder, threading.Event]]:
    hold = threading.Event()
    recorder = Recorder(hold)
    batcher = DynamicBatcher(recorder, max_batch=4, max_delay_s=0.05, name="test")
    yield batcher, recorder, hold
    hold.set()
    batcher.close()


def submit_all(batcher: DynamicBatcher, items: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
    with ThreadPoolExecutor(len(items)) as pool:
        futures = [pool.submit(batcher.submit, output, x) for output, x in items]
        return [f.result(timeout=20) for f in futures]


def wait_queued(batcher: DynamicBatcher, n: int, taken: bool = False) -> None:
    """Until `n` requests wait (or, with `taken`, until no more than `n` do)."""
    for _ in range(2000):
        with batcher.changed:
            waiting = len(batcher.waiting)
        if (waiting <= n) if taken else (waiting >= n):
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"{n} requests never queued")


def submit_behind_held_first(
    batcher: DynamicBatcher, hold: threading.Event, items: list[tuple[str, np.ndarray]]
) -> list[np.ndarray]:
    """Submits the first item, waits until its run is held inside the recorder, queues the
    rest behind it, then releases the run: the rest must batch together."""
    with ThreadPoolExecutor(len(items)) as pool:
        futures = [pool.submit(batcher.submit, *items[0])]
        wait_queued(batcher, 1)
        wait_queued(batcher, 0, taken=True)
        futures += [pool.submit(batcher.submit, output, x) for output, x in items[1:]]
        wait_queued(batcher, len(items) - 1)
        hold.set()
        return [f.result(timeout=20) for f in futures]


def test_each_caller_gets_its_own_rows_and_batches_are_bounded(
    batcher: tuple[DynamicBatcher, Recorder, threading.Event],
) -> None:
    b, recorder, hold = batcher
    items = [("double", np.full((1, 1, 4, 4), i, np.float32)) for i in range(9)]
    results = submit_behind_held_first(b, hold, items)  # the 8 behind it wait together
    for (_, x), result in zip(items, results, strict=True):
        np.testing.assert_array_equal(result, x * 2)
    assert recorder.batch_rows == [4, 4, 4]  # the lone first padded; the 8 waiting: two full
    assert b.batches == 3 and b.rows == 9


def test_shapes_and_outputs_never_mix(
    batcher: tuple[DynamicBatcher, Recorder, threading.Event],
) -> None:
    b, _, hold = batcher
    hold.set()
    items = [
        ("double", np.ones((1, 1, 4, 4), np.float32)),
        ("double", np.ones((1, 1, 8, 4), np.float32)),
        ("negate", np.ones((1, 1, 4, 4), np.float32)),
        ("double", np.full((2, 1, 4, 4), 3, np.float32)),
    ]
    results = submit_all(b, items)
    for (output, x), got in zip(items, results, strict=True):
        np.testing.assert_array_equal(got, x * 2 if output == "double" else -x)


def test_an_error_reaches_every_caller_of_its_batch_and_the_batcher_goes_on() -> None:
    calls = []

    def failing_once(output: str, x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("session failed")
        return x

    b = DynamicBatcher(failing_once, max_batch=8, max_delay_s=0.2)
    try:
        with pytest.raises(RuntimeError, match="session failed"):
            b.submit("out", np.zeros((1, 1, 2, 2), np.float32))
        np.testing.assert_array_equal(b.submit("out", np.ones((1, 1, 2, 2))), np.ones((1, 1, 2, 2)))
    finally:
        b.close()


def test_an_input_larger_than_the_batch_runs_alone_and_close_refuses_new_work() -> None:
    recorder = Recorder()
    b = DynamicBatcher(recorder, max_batch=2, max_delay_s=0.0)
    x = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1)
    np.testing.assert_array_equal(b.submit("double", x), x * 2)
    assert recorder.batch_rows == [5]
    b.close()
    with pytest.raises(RuntimeError, match="closed"):
        b.submit("double", x)


def registry(directory: Path, **settings: object) -> ModelRegistry:
    r = ModelRegistry(
        Settings(model_dir=directory, device=Device.cpu, intra_op_threads=1, **settings)  # type: ignore[arg-type]
    )
    r.discover()
    r.load_all()
    return r


def test_batching_and_io_binding_give_the_same_class_maps(tmp_path: Path) -> None:
    write_model(tmp_path, "box", "box")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 40), np.uint8) for _ in range(12)]
    plain = registry(tmp_path)
    batched = registry(tmp_path, batch_max_size=4, batch_max_delay_ms=50)
    try:
        model, batched_model = plain.get("box"), batched.get("box")
        assert model.batcher is None and batched_model.batcher is not None
        want = [segment(model, image).labels for image in images]
        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(lambda image: segment(batched_model, image).labels, images))
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(w, g)
        assert batched_model.batcher.rows == 12
        assert batched_model.batcher.batches < 12  # some requests really shared a run
        # IO binding (output bound on the CPU here) answers like a plain run
        assert model.session is not None and model.spec is not None
        bound = SessionRunner(model.session, model.spec.input_name, bind_on="cpu")
        x = rng.standard_normal((2, 1, 24, 40)).astype(np.float32)
        for output in ("labels", "logits"):
            np.testing.assert_array_equal(bound(output, x), model.run(output, x))
    finally:
        plain.close()
        batched.close()


def test_batches_are_padded_to_one_shape(
    batcher: tuple[DynamicBatcher, Recorder, threading.Event],
) -> None:
    b, recorder, hold = batcher
    items = [("double", np.full((1, 1, 2, 2), i, np.float32)) for i in range(3)]
    results = submit_behind_held_first(b, hold, items)
    for (_, x), result in zip(items, results, strict=True):
        np.testing.assert_array_equal(result, x * 2)
    assert recorder.batch_rows == [4, 4]  # one request, then two, each run as four rows
    assert b.rows == 3 and b.batches == 2


def test_batched_requests_over_http_are_counted_in_metrics(tmp_path: Path) -> None:
    write_model(tmp_path, "threshold", "grey")
    settings = Settings(
        model_dir=tmp_path, device=Device.cpu, intra_op_threads=1, workers=4, batch_max_size=4
    )
    body = png_bytes(np.random.default_rng(1).integers(0, 256, (16, 24), np.uint8))
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        for _ in range(3):
            answer = client.post(
                "/v1/models/grey/segment", content=body, headers={"content-type": "image/png"}
            )
            assert answer.status_code == 200
        text = client.get("/metrics").text
    assert 'segserve_batched_requests_total{model="grey"} 3.0' in text
    runs = [line for line in text.splitlines() if line.startswith("segserve_batch_runs_total")]
    assert runs and 1 <= float(runs[0].split()[-1]) <= 3
