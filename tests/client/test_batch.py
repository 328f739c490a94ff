"""segment_many: order, one error per item, real concurrency, a bounded window."""

import threading
import time

import httpx
import numpy as np
import pytest

from segserve import BadRequest, InputError
from segserve.batch import run_batch
from tests.client.mock_service import Script, palette_png, problem


def test_results_in_input_order_with_errors_per_item(capsys: pytest.CaptureFixture[str]) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        value = int(request.content)
        if value == 3:
            return problem(400, "Bad Request", "the data is not an image")
        time.sleep(0.05 * (value % 3))  # later inputs finish first now and then
        labels = np.full((2, 2), value, np.uint8)
        return httpx.Response(200, content=palette_png(labels))

    inputs: list[bytes | str] = [str(i).encode() for i in range(8)]
    inputs.insert(5, "/no/such/file.png")
    with Script(answer).client() as client:
        items = client.segment_many(inputs, "m", concurrency=3, progress=False)
    assert [item.index for item in items] == list(range(9))
    assert [item.source for item in items] == inputs
    assert isinstance(items[3].error, BadRequest) and items[3].error.status == 400
    assert isinstance(items[5].error, InputError)
    for item in items:
        assert item.ok == (item.result is not None)
        if item.ok:
            assert item.result is not None
            assert np.array_equal(item.result, np.full((2, 2), int(item.source), np.uint8))
    assert capsys.readouterr().err == ""  # progress=False draws nothing


def test_runs_concurrently_up_to_the_limit() -> None:
    lock = threading.Lock()
    running, peak = 0, 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return httpx.Response(200, content=palette_png(np.zeros((1, 1), np.uint8)))

    with Script(answer).client() as client:
        items = client.segment_many([b"x"] * 12, "m", concurrency=4, progress=False)
    assert all(item.ok for item in items)
    assert peak == 4


def test_window_holds_a_bounded_number_of_inputs_in_flight() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(source: object) -> object:
        with lock:
            started.append(int(str(source)))
        return source

    batch = run_batch(work, [str(i) for i in range(100)], concurrency=2, progress=False)
    for consumed, _ in enumerate(batch, start=1):
        time.sleep(0.001)
        assert len(started) <= consumed + 2 * 2  # never far ahead of what was taken
    assert sorted(started) == list(range(100))


def test_concurrency_must_fit_the_pool() -> None:
    with Script(problem(400, "x", "y")).client() as client:
        with pytest.raises(ValueError, match="max_connections"):
            client.segment_many([b"x"], "m", concurrency=17)
        with pytest.raises(ValueError, match="at least 1"):
            client.segment_many([b"x"], "m", concurrency=0)


def test_a_bug_in_the_work_ends_the_batch() -> None:
    def work(source: object) -> object:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        list(run_batch(work, ["a", "b"], concurrency=2, progress=False))
