"""Several worker processes on one port (SEG_PROCESSES, app/supervisor.py): both answer,
/metrics adds them up whichever answers, a killed worker is replaced, SIGTERM drains them
all, the job worker and gRPC run in one, and a worker failing at the start stops the
service."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from app.config import Device, Settings
from app.jobs.manager import JobManager
from app.jobs.store import JobState
from app.main import create_app
from app.supervisor import (
    ProcessRole,
    available_cores,
    cuda_processes,
    planned_processes,
    worker_settings,
)
from tests.app.conftest import free_port, png_bytes, running_server, server_output, wait_ready
from tests.app.slow_server import slow_server
from tests.app.test_api import expected_grey, grey_pattern, read_png
from tests.app.test_jobs import manager_for, noise, queue, settings_for

SEGMENT_ROUTE = "/v1/models/{name}/segment"
PNG = {"content-type": "image/png"}


def live_pids(base: str) -> set[int]:
    """The worker processes /metrics shows alive."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {int(p) for p in re.findall(r'segserve_process_start_time_seconds\{pid="(\d+)"\}', text)}


def two_workers(base: str, gone: int | None = None) -> set[int] | None:
    """The two live workers' pids, once there are two (and `gone` is not one of them)."""
    pids = live_pids(base)
    return pids if len(pids) == 2 and gone not in pids else None


def metric_total(base: str, name: str, label: str) -> float:
    """The sum of the samples of `name` with `label` (all other labels), as /metrics says."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def segment_count(base: str) -> float:
    """segserve_requests_total of the segment route, all statuses."""
    return metric_total(base, "segserve_requests_total", f'route="{SEGMENT_ROUTE}"')


def batched_count(base: str) -> float:
    """Segment requests run in dynamic batches, all workers' together."""
    return metric_total(base, "segserve_batched_requests_total", 'model="tiny-grey"')


def answered_by(process: subprocess.Popen[str] | str) -> list[int]:
    """The pid of the worker that logged each segment request, in order (from the server's
    log, or its text)."""
    text = process if isinstance(process, str) else server_output(process)
    pids = []
    for line in text.splitlines():
        if line.startswith("{") and SEGMENT_ROUTE in line:
            pids.append(int(json.loads(line)["pid"]))
    return pids


def segment(base: str, pixels: np.ndarray) -> int:
    """One request on a connection of its own (so the workers take turns accepting)."""
    response = httpx.post(
        f"{base}/v1/models/tiny-grey/segment", content=png_bytes(pixels), headers=PNG, timeout=60
    )
    if response.status_code == 200:
        assert np.array_equal(read_png(response.content), expected_grey(pixels))
    return response.status_code


def wait_for(condition: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_two_workers_answer_metrics_add_up_and_a_killed_worker_is_replaced(
    model_dir: Path,
) -> None:
    batching = {"SEG_BATCH_MAX_SIZE": "4", "SEG_WORKERS": "4"}  # counted in each worker
    with running_server(model_dir, SEG_PROCESSES="2", **batching) as (base, process):
        workers = wait_for(lambda: two_workers(base))
        assert process.pid not in workers  # the supervisor serves nothing itself
        pixels = grey_pattern(33, 47)
        sent = 0
        with ThreadPoolExecutor(4) as pool:
            # Until both workers have answered (at most 400 requests).
            while set(answered_by(process)) != workers and sent < 400:
                assert set(pool.map(lambda _: segment(base, pixels), range(20))) == {200}
                sent += 20
        assert set(answered_by(process)) == workers, server_output(process)
        # Every scrape, whichever worker answers it, counts every request.
        for _ in range(8):
            assert segment_count(base) == sent
            assert batched_count(base) == sent

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(lambda: two_workers(base, gone=victim))
        assert len(replaced & workers) == 1
        assert "exited (signal SIGKILL)" in server_output(process)
        # The killed worker's requests still count; the replacement serves once loaded.
        assert segment_count(base) == sent
        with ThreadPoolExecutor(4) as pool:
            while not set(answered_by(process)) & (replaced - workers) and sent < 800:
                assert set(pool.map(lambda _: segment(base, pixels), range(20))) == {200}
                sent += 20
        assert set(answered_by(process)) & (replaced - workers), server_output(process)
        assert segment_count(base) == sent
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, server_output(process)
    for pid in replaced:  # the workers went with the supervisor
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_sigterm_drains_every_worker_and_then_the_supervisor_exits(model_dir: Path) -> None:
    # 12 requests on connections of their own: each worker gets some, but for a chance of
    # 2 in 4096 (the kernel spreads connections by a hash).
    env = {"SEG_PROCESSES": "2", "SEG_DRAIN_DELAY_S": "1", "SEG_WORKERS": "4"}
    with slow_server(model_dir, 1.5, **env) as (base, process):
        workers = wait_for(lambda: two_workers(base))
        pixels = grey_pattern(20, 24)
        with ThreadPoolExecutor(12) as pool:
            in_flight = [pool.submit(segment, base, pixels) for _ in range(12)]
            time.sleep(0.5)  # accepted, running or queued in both workers
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            ready = httpx.get(f"{base}/health/ready", timeout=5)
            assert ready.status_code == 503 and "shutting down" in ready.json()["problem"]
            assert [f.result(timeout=60) for f in in_flight] == [200] * 12
        assert process.wait(timeout=60) == 0, server_output(process)
        output = server_output(process)
    assert len(set(answered_by(output))) == 2, output  # both had requests to finish
    assert output.count("Application shutdown complete") == 2
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health/live", timeout=2)


def test_grpc_and_the_job_worker_run_in_one_process_jobs_queue_in_any(
    model_dir: Path, tmp_path: Path
) -> None:
    grpc_port = free_port()
    env = {
        "SEG_PROCESSES": "2",
        "SEG_GRPC_PORT": str(grpc_port),
        "SEG_JOB_DIR": str(tmp_path / "jobs"),
    }
    with running_server(model_dir, **env) as (base, process):
        workers = wait_for(lambda: two_workers(base))
        # /metrics lists a worker from its start, before its lifespan has opened the gRPC
        # port: wait for the port as a client would.
        with triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            assert wait_for(lambda: grpc_ready(client))
        assert server_output(process).count("gRPC (Open Inference Protocol) on") == 1

        def submit_and_check(seed: int) -> None:
            pixels = noise(40, 30 + seed % 7, seed=seed)
            answer = httpx.post(
                f"{base}/v1/models/tiny-grey/jobs", content=png_bytes(pixels), headers=PNG
            )
            assert answer.status_code == 202, answer.text
            location = f"{base}{answer.headers['Location']}"
            state = wait_for(lambda: finished(location), timeout=60)
            assert state["state"] == "succeeded", state
            result = httpx.get(f"{location}/result")
            assert np.array_equal(read_png(result.content), expected_grey(pixels))

        # Jobs submitted on fresh connections to whichever worker accepts, until both have
        # taken some: the first worker runs them all.
        seed = 0
        with ThreadPoolExecutor(4) as pool:
            while submitters(process) != workers and seed < 40:
                list(pool.map(submit_and_check, range(seed, seed + 4)))
                seed += 4
        assert submitters(process) == workers, server_output(process)

        # A second service on the same port fails, as a single process would (SO_REUSEPORT
        # would let it share the port).
        second = subprocess.run(
            [sys.executable, "-m", "app.cli", "serve", "--model-dir", str(model_dir), "--port",
             base.rsplit(":", 1)[1]],
            env={**os.environ, "SEG_DEVICE": "cpu", "SEG_PROCESSES": "2"},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 1 and "already serves" in second.stderr, second.stderr

        # A killed supervisor leaves no worker serving on.
        process.kill()
        process.wait(timeout=10)
        wait_for(lambda: not any(alive(pid) for pid in workers), timeout=60)


def grpc_ready(client: triton.InferenceServerClient) -> bool:
    """ServerReady over gRPC; False while nothing listens yet."""
    try:
        return bool(client.is_server_ready())
    except InferenceServerException as exc:
        if "UNAVAILABLE" not in str(exc):
            raise
        return False


def alive(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie has)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def finished(location: str) -> dict[str, Any] | None:
    state: dict[str, Any] = httpx.get(location).json()
    return state if state["state"] not in ("queued", "running") else None


def submitters(process: subprocess.Popen[str]) -> set[int]:
    """The workers that took job submissions."""
    return {
        int(json.loads(line)["pid"])
        for line in server_output(process).splitlines()
        if line.startswith("{") and '"route": "/v1/models/{name}/jobs"' in line
    }


@pytest.mark.parametrize(("index", "runs_jobs"), [(0, True), (1, False)])
def test_only_the_first_worker_runs_the_job_worker(
    tmp_path: Path, index: int, runs_jobs: bool
) -> None:
    role = ProcessRole(index=index, count=2, supervised=True)
    with TestClient(create_app(settings_for(tmp_path), role=role)) as client:
        wait_ready(client)
        jobs: JobManager = client.app.state.jobs  # type: ignore[attr-defined]
        assert (jobs.thread is not None) is runs_jobs
        assert jobs.idle_poll_s < 1  # jobs other workers queue are found soon


def test_a_cancel_asked_in_another_process_stops_the_running_job(tmp_path: Path) -> None:
    runner = manager_for(tmp_path)
    other = JobManager(runner.settings, runner.registry)  # another worker's, same store
    job_id = queue(runner, noise(260, 230, seed=5))
    batches = []

    def cancel_elsewhere_after_two() -> None:
        batches.append(1)
        if len(batches) == 2:
            job = other.store.get(job_id)
            assert job is not None
            other.cancel_or_delete(job)  # sets the store's flag: no event in `runner`

    runner.run(runner.store.find()[0], on_batch=cancel_elsewhere_after_two)
    job = runner.store.get(job_id)
    assert job is not None and job.state is JobState.cancelled
    assert len(batches) == 3 < job.tiles_total  # seen at the next batch's progress


def test_a_worker_failing_at_the_start_stops_the_service(model_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            **os.environ,
            "SEG_DEVICE": "cpu",
            "SEG_INTRA_OP_THREADS": "1",
            "SEG_PROCESSES": "2",
            "SEG_GRPC_PORT": str(taken.getsockname()[1]),  # the first worker cannot listen
        }
        command = [sys.executable, "-m", "app.cli", "serve", "--model-dir", str(model_dir)]
        command += ["--port", str(free_port())]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "failed to start" in done.stderr


def test_how_many_processes() -> None:
    cpu = Settings(device=Device.cpu)
    assert planned_processes(cpu) == 1  # auto on CPU: no supervisor
    assert planned_processes(Settings(device=Device.cpu, processes=3)) == 3
    assert planned_processes(Settings(device=Device.cuda)) is None  # decided after loading
    assert [cuda_processes(c) for c in (1, 2, 4, 16, 64)] == [2, 2, 2, 8, 8]
    cores = available_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert worker_settings(cpu, 2).intra_op_threads == max(1, cores // 2)
    pinned = Settings(device=Device.cpu, intra_op_threads=3)
    assert worker_settings(pinned, 2).intra_op_threads == 3
    with pytest.raises(ValueError):
        Settings(processes=0)
