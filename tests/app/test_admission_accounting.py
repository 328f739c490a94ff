"""Admission's accounting at its edges: every refusal, timeout and hang-up counted once, the
pixel budget summed over what is held (and nothing held by a request without pixels), the
slot and pixels given back when the executor refuses the work, no stale waiter left behind,
and each refusal's detail naming the setting to change. (test_admission.py covers the
timing behaviour; these are in-process and take well under a second.)"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import pytest

from app.errors import Abandoned, DeadlineExceeded, Overloaded, ShuttingDown
from app.inference.admission import Admission


def test_every_refusal_is_counted() -> None:
    admission = Admission(limit=0, timeout_s=10, retry_after_s=7)
    for _ in range(3):
        with pytest.raises(Overloaded) as refused:
            admission.check_capacity()
    assert admission.rejected == 3
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "7"}
    assert "SEG_MAX_PENDING=0" in refused.value.detail

    budget = Admission(limit=4, timeout_s=10, retry_after_s=5, pixel_limit=10)
    budget.hold_pixels(6)
    for _ in range(2):
        with pytest.raises(Overloaded) as over:
            budget.hold_pixels(5)
    assert budget.rejected == 2 and budget.pixels_held == 6
    assert over.value.headers == {"Retry-After": "5"}
    assert "6 pixels" in over.value.detail and "SEG_MAX_PENDING_PIXELS=10" in over.value.detail


def test_the_budget_sums_what_is_held() -> None:
    admission = Admission(limit=4, timeout_s=10, pixel_limit=10)
    admission.hold_pixels(3)
    admission.hold_pixels(4)
    assert admission.pixels_held == 7
    with pytest.raises(Overloaded):  # 7 + 4 > 10
        admission.hold_pixels(4)
    admission.hold_pixels(3)  # 7 + 3 = 10: exactly the limit
    admission.release_pixels(4)
    assert admission.pixels_held == 6


def test_one_held_pixel_is_enough_to_refuse_an_image_as_large_as_the_budget() -> None:
    admission = Admission(limit=4, timeout_s=10, pixel_limit=10)
    admission.hold_pixels(10)  # alone: admitted
    admission.release_pixels(9)
    with pytest.raises(Overloaded):  # 1 + 10 > 10
        admission.hold_pixels(10)
    unlimited = Admission(limit=4, timeout_s=10)
    unlimited.hold_pixels(10**12)
    unlimited.hold_pixels(10**12)
    assert unlimited.pixels_held == 2 * 10**12


def test_work_without_pixels_holds_none_of_the_budget() -> None:
    release = threading.Event()

    async def scenario() -> None:
        admission = Admission(limit=4, timeout_s=10, pixel_limit=10)
        with ThreadPoolExecutor(1) as executor:
            running = asyncio.create_task(admission.run(executor, release.wait, 5))
            try:
                await asyncio.sleep(0.05)
                assert admission.pixels_held == 0 and admission.pending == 1
                admission.hold_pixels(10)  # the whole budget is still free
                admission.release_pixels(10)
                holding = asyncio.create_task(admission.run(executor, lambda: 1, pixels=4))
                await asyncio.sleep(0.05)
                assert admission.pixels_held == 4
            finally:
                release.set()
            assert await running is True and await holding == 1
            await asyncio.sleep(0.01)
            assert admission.pixels_held == 0 and admission.pending == 0

    asyncio.run(scenario())


def test_an_executor_that_refuses_the_work_gives_back_the_slot_and_the_pixels() -> None:
    async def scenario() -> None:
        admission = Admission(limit=4, timeout_s=10, pixel_limit=100)
        executor = ThreadPoolExecutor(1)
        executor.shutdown()
        with pytest.raises(RuntimeError):
            await admission.run(executor, lambda: None, pixels=30)
        assert admission.pending == 0 and admission.pixels_held == 0
        assert admission.waiting == {}

    asyncio.run(scenario())


def test_timeouts_and_hang_ups_are_counted_and_named() -> None:
    async def never() -> bool:
        return False

    started = threading.Event()
    busy = threading.Event()  # work that ignores its stop: the watcher ends first

    def work() -> None:
        started.set()
        busy.wait(2)

    async def gone() -> bool:  # the client hangs up once its work has started
        return started.is_set()

    async def scenario() -> None:
        admission = Admission(limit=8, timeout_s=0.05)
        stops = [threading.Event() for _ in range(4)]
        with ThreadPoolExecutor(2) as executor:
            for stop in stops[:2]:
                with pytest.raises(DeadlineExceeded) as late:
                    await admission.run(executor, stop.wait, 1, stop=stop, disconnected=never)
            assert admission.timed_out == 2
            assert late.value.status == 504
            assert "SEG_REQUEST_TIMEOUT_S=0.05 s" in late.value.detail
            patient = Admission(limit=8, timeout_s=10)
            try:
                for stop in stops[2:]:
                    started.clear()
                    with pytest.raises(Abandoned) as hung_up:
                        await patient.run(executor, work, stop=stop, disconnected=gone)
            finally:
                busy.set()
            assert patient.abandoned == 2 and patient.timed_out == 0
            assert hung_up.value.status == 499 and "closed the connection" in hung_up.value.detail
            assert all(stop.is_set() for stop in stops)
            await asyncio.sleep(0.05)
            assert admission.waiting == {} and patient.waiting == {}
            assert admission.pending == 0 and patient.pending == 0

    asyncio.run(scenario())


def test_work_whose_stop_is_already_set_never_runs() -> None:
    ran: list[int] = []

    async def scenario() -> None:
        admission = Admission(limit=4, timeout_s=10)
        stop = threading.Event()
        stop.set()
        with ThreadPoolExecutor(1) as executor, pytest.raises(Abandoned, match="before it"):
            await admission.run(executor, ran.append, 1, stop=stop)
        assert admission.pending == 0

    asyncio.run(scenario())
    assert ran == []


def test_no_stale_waiter_or_logged_callback_error_after_requests_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def never() -> bool:
        return False

    async def scenario() -> None:
        admission = Admission(limit=4, timeout_s=10)
        with ThreadPoolExecutor(1) as executor:
            for value in range(3):
                assert await admission.run(executor, int, value, disconnected=never) == value
            await asyncio.sleep(0.05)  # the cancelled watchers' callbacks run
            assert admission.waiting == {} and admission.pending == 0

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_shutting_down_is_a_503_that_says_to_retry_elsewhere() -> None:
    release = threading.Event()

    async def scenario() -> None:
        admission = Admission(limit=4, timeout_s=10)
        with ThreadPoolExecutor(1) as executor:
            waiting = asyncio.create_task(admission.run(executor, release.wait, 5))
            await asyncio.sleep(0.05)
            admission.abort()  # a request that waits for its work answers at once
            try:
                with pytest.raises(ShuttingDown) as aborted:
                    await waiting
            finally:
                release.set()
            with pytest.raises(ShuttingDown) as refused:  # and a later one is refused
                await admission.run(executor, int, 1)
        for problem in (aborted.value, refused.value):
            assert problem.status == 503 and "shutting down" in problem.detail
        await asyncio.sleep(0.05)  # the finished work's slot comes back on the loop
        assert admission.pending == 0 and admission.rejected == 0

    asyncio.run(scenario())


class LateExecutor(Executor):
    """Starts each job only after `delay` seconds, inside submit: a job that waited in a
    queue past its request's deadline."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        time.sleep(self.delay)
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the awaiting request
            future.set_exception(exc)
        return future


def test_work_that_starts_past_its_deadline_is_skipped() -> None:
    ran: list[int] = []

    async def scenario() -> None:
        admission = Admission(limit=4, timeout_s=0.05)
        with pytest.raises(DeadlineExceeded, match="waited past its deadline"):
            await admission.run(LateExecutor(0.08), ran.append, 1)
        assert admission.pending == 0
        assert await Admission(limit=4, timeout_s=10).run(LateExecutor(0), int, 7) == 7

    asyncio.run(scenario())
    assert ran == []
