"""Admission control (503 + Retry-After past SEG_MAX_PENDING) and deadlines (504)."""

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.errors import Abandoned, DeadlineExceeded, Overloaded
from app.inference.admission import Admission
from app.main import create_app
from tests.app.conftest import png_bytes, running_server, wait_ready


def test_bounded_pending_work_rejects_at_once_and_frees_slots() -> None:
    release = threading.Event()
    calls: list[int] = []

    def blocking(i: int) -> int:
        release.wait(10)
        calls.append(i)
        return i

    async def scenario() -> None:
        admission = Admission(limit=2, timeout_s=10, retry_after_s=3)
        with ThreadPoolExecutor(1) as executor:
            first = asyncio.create_task(admission.run(executor, blocking, 1))
            second = asyncio.create_task(admission.run(executor, blocking, 2))  # queued
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            with pytest.raises(Overloaded) as rejected:
                await admission.run(executor, blocking, 3)
            assert time.perf_counter() - started < 0.05  # no waiting for a slot
            assert rejected.value.headers == {"Retry-After": "3"}
            release.set()
            assert await first == 1 and await second == 2
            await asyncio.sleep(0.01)
            assert admission.pending == 0 and admission.rejected == 1
            assert await admission.run(executor, blocking, 4) == 4

    asyncio.run(scenario())
    assert calls == [1, 2, 4]


def test_deadline_gives_504_keeps_the_slot_until_the_work_ends_and_skips_stale_jobs() -> None:
    ran: list[str] = []

    def slow(tag: str) -> None:
        time.sleep(0.3)
        ran.append(tag)

    async def scenario() -> None:
        admission = Admission(limit=4, timeout_s=0.1)
        with ThreadPoolExecutor(1) as executor:
            running = asyncio.create_task(admission.run(executor, slow, "running"))
            queued = asyncio.create_task(admission.run(executor, slow, "queued"))
            for task in (running, queued):
                with pytest.raises(DeadlineExceeded):
                    await task
            assert admission.pending >= 1  # the running job still holds its slot
            await asyncio.sleep(0.5)
            assert admission.pending == 0 and admission.timed_out == 2

    asyncio.run(scenario())
    assert ran == ["running"]  # the queued job's deadline passed before it started: skipped


def test_http_deadline_is_a_504_problem(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, intra_op_threads=1, request_timeout_s=1e-6)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        image = png_bytes(np.zeros((300, 300), np.uint8))
        response = client.post(
            "/v1/models/tiny-grey/segment", content=image, headers={"content-type": "image/png"}
        )
        assert response.status_code == 504
        assert response.headers["content-type"] == "application/problem+json"
        assert client.get("/health/live").status_code == 200


def test_http_overload_answers_503_with_retry_after_and_serves_the_rest(model_dir: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (2500, 2500), np.uint8)
    body = png_bytes(pixels)
    with running_server(model_dir, SEG_MAX_PENDING="1", SEG_WORKERS="1") as (base, _):

        def post() -> httpx.Response:
            return httpx.post(
                f"{base}/v1/models/tiny-grey/segment",
                content=body,
                headers={"content-type": "image/png"},
                timeout=60,
            )

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: post(), range(8)))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 503}, statuses
        for response in responses:
            if response.status_code == 503:
                assert response.headers["retry-after"] == "1"
                assert response.json()["type"].endswith("/overloaded")
        assert post().status_code == 200  # and it goes on serving


def cooperative(stop: threading.Event, ran: list[int]) -> None:
    """One second of work in 50 steps that ends early once `stop` is set (like tiles)."""
    for step in range(50):
        if stop.is_set():
            return
        ran.append(step)
        time.sleep(0.02)


def test_deadline_tells_running_work_to_stop() -> None:
    ran: list[int] = []

    async def scenario() -> None:
        admission = Admission(limit=2, timeout_s=0.1)
        stop = threading.Event()
        with ThreadPoolExecutor(1) as executor:
            with pytest.raises(DeadlineExceeded):
                await admission.run(executor, cooperative, stop, ran, stop=stop)
            assert stop.is_set()
            await asyncio.sleep(0.15)
            assert admission.pending == 0  # stopped early, not after the full second

    asyncio.run(scenario())
    assert len(ran) < 20


def test_client_that_hangs_up_stops_the_work() -> None:
    ran: list[int] = []

    async def scenario() -> None:
        admission = Admission(limit=2, timeout_s=10)
        started = time.monotonic()

        async def disconnected() -> bool:
            return time.monotonic() - started > 0.2

        stop = threading.Event()
        with ThreadPoolExecutor(1) as executor:
            with pytest.raises(Abandoned):
                await admission.run(executor, cooperative, stop, ran, stop=stop,
                                    disconnected=disconnected)  # fmt: skip
            assert time.monotonic() - started < 1
            await asyncio.sleep(0.15)
            assert admission.pending == 0 and admission.abandoned == 1

    asyncio.run(scenario())
    assert len(ran) < 25


def test_abandoned_renders_as_a_499_problem_with_its_own_title() -> None:
    from fastapi import FastAPI

    from app.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/gone")
    async def gone() -> None:
        raise Abandoned("the client closed the connection")

    response = TestClient(app).get("/gone")
    assert response.status_code == 499
    assert response.json()["title"] == "Client Closed Request"
    assert response.json()["type"].endswith("/client-closed-request")


def test_a_cancelled_request_tells_its_work_to_stop_and_queued_work_is_skipped() -> None:
    """Shutdown past SEG_SHUTDOWN_TIMEOUT_S cancels the requests' tasks: their work must stop
    (tiled work between tiles, queued work not at all), or the executor runs it all first."""
    ran: list[int] = []
    queued_ran: list[int] = []

    async def scenario() -> None:
        admission = Admission(limit=4, timeout_s=10)
        running_stop, queued_stop = threading.Event(), threading.Event()
        with ThreadPoolExecutor(1) as executor:
            running = asyncio.create_task(
                admission.run(executor, cooperative, running_stop, ran, stop=running_stop)
            )
            queued = asyncio.create_task(
                admission.run(executor, cooperative, queued_stop, queued_ran, stop=queued_stop)
            )
            await asyncio.sleep(0.1)
            running.cancel()
            queued.cancel()
            for task in (running, queued):
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert running_stop.is_set() and queued_stop.is_set()
            started = time.monotonic()
            while admission.pending and time.monotonic() - started < 2:
                await asyncio.sleep(0.01)
            assert admission.pending == 0
            assert time.monotonic() - started < 0.5  # not the remaining second of work

    asyncio.run(scenario())
    assert len(ran) < 20 and queued_ran == []


def test_failed_jobs_leave_no_unretrieved_future_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every failed executor job used to log "Future exception was never retrieved" with a
    traceback when the shielded future was collected."""
    import gc

    def fails() -> None:
        raise ValueError("bad input")

    def slow_fail() -> None:
        time.sleep(0.2)
        raise ValueError("late")

    async def scenario() -> None:
        admission = Admission(limit=4, timeout_s=0.05)
        with ThreadPoolExecutor(1) as executor:
            with pytest.raises(ValueError):
                await admission.run(executor, fails)
            with pytest.raises(DeadlineExceeded):  # fails after its deadline: nobody awaits it
                await admission.run(executor, slow_fail)
            await asyncio.sleep(0.3)
            task = asyncio.create_task(admission.run(executor, slow_fail))
            await asyncio.sleep(0.01)
            task.cancel()  # fails after its request was cancelled
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.3)
        gc.collect()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(scenario())
        gc.collect()
    never = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert never == []


def test_abort_answers_waiting_requests_503_stops_their_work_and_refuses_new_ones() -> None:
    """Shutdown calls `abort` just before uvicorn's graceful timeout: requests end with a
    503 problem instead of being cancelled into a bare 500 with a traceback."""
    from app.errors import ShuttingDown

    ran: list[int] = []

    async def scenario() -> None:
        admission = Admission(limit=4, timeout_s=10)
        stops = [threading.Event(), threading.Event()]
        with ThreadPoolExecutor(1) as executor:
            tasks = [
                asyncio.create_task(admission.run(executor, cooperative, stop, ran, stop=stop))
                for stop in stops
            ]
            await asyncio.sleep(0.1)
            admission.abort()
            for task in tasks:
                with pytest.raises(ShuttingDown):
                    await task
            assert all(stop.is_set() for stop in stops)
            with pytest.raises(ShuttingDown):
                await admission.run(executor, cooperative, threading.Event(), ran)
            await asyncio.sleep(0.1)
            assert admission.pending == 0

    asyncio.run(scenario())
    assert len(ran) < 15
