"""Several worker processes on one port (SEG_PROCESSES).

The supervisor (the process `segserve serve` starts) holds the port and starts the worker
processes (`spawn`: fresh interpreters, each with its own onnxruntime sessions, on the same
GPU on CUDA). Each worker listens on the port with its own SO_REUSEPORT socket, and the
kernel spreads new connections over the workers listening, by a hash of their addresses.
(One listening socket shared by every worker, as gunicorn does, was tried first: the
worker woken first accepts every connection waiting, so kept-alive clients that connect
at once can all land on one worker; 208 of 216 requests did, from 4 clients, in one
round of bench/processes_benchmark.py.) A worker listens only once its models are loaded,
so connections never wait on one that is loading. The supervisor serves nothing
itself:

- SIGTERM or SIGINT: it forwards SIGTERM to every worker, which drains as a single process
  does (readiness 503, SEG_DRAIN_DELAY_S, in-flight requests finished within
  SEG_SHUTDOWN_TIMEOUT_S); it exits once they all have (workers still running well past
  that are killed). A second signal is forwarded too: the workers
  then skip the drain delay.
- A worker that exits on its own is logged and replaced by a new one (after 0.5 s, doubling
  up to 30 s while replacements keep failing within a minute). A worker that fails before it
  ever served, at the service's start, stops the service instead (exit status 1): a bad
  setting, a gRPC port in use.
- Metrics: every worker writes its samples to files in a folder made for this start
  (PROMETHEUS_MULTIPROC_DIR); /metrics in any worker adds them all up.
- Only the first worker runs the job worker and the gRPC server (`ProcessRole`).

`SEG_PROCESSES=auto` (the default) serves in one process, with no supervisor, when the
sessions cannot run on CUDA (SEG_DEVICE=cpu, or onnxruntime has no CUDA provider). Otherwise
the first worker starts alone and reports the providers its sessions really got: on CUDA the
supervisor starts the others (`cuda_processes`), on CPU it keeps that one.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from app.config import Device, Settings

if TYPE_CHECKING:
    from app.inference.session import SessionFactory

log = logging.getLogger("segserve.processes")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # as app.observability reads it
CUDA_PROVIDER = "CUDAExecutionProvider"
MAX_AUTO_PROCESSES = 8
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
STABLE_S = 60.0  # a worker that served this long counts as healthy: the backoff resets
STOP_MARGIN_S = 10.0  # past the drain's own bounds, before the workers left are killed
POLL_S = 0.2
STARTUP_FAILURE = 3  # uvicorn's exit status when the app's startup fails


@dataclass(frozen=True)
class ProcessRole:
    """An app's place among the worker processes. The first alone runs the job worker and
    the gRPC server; every process takes HTTP requests, job submissions included (the job
    store is shared)."""

    index: int = 0
    count: int = 1
    first_start: bool = True  # False when it replaces a worker that exited
    supervised: bool = False  # one of the supervisor's workers (even if alone)

    @property
    def primary(self) -> bool:
        return self.index == 0

    @property
    def accepts_while_loading(self) -> bool:
        """The first worker, at the service's start, answers at once (/health/live 200,
        /health/ready 503 until its models are warm); the others, and any replacement, take
        connections only once their models are loaded, so they never turn away requests
        that the workers already serving would answer."""
        return self.primary and self.first_start


def cuda_processes(cores: int) -> int:
    """SEG_PROCESSES=auto on CUDA: one worker per two cores (one for the event loop, HTTP and
    decoding; one for encoding and onnxruntime's own threads), at least 2 and at most 8 (each
    holds its own CUDA context and copy of the models). Not yet measured on a GPU: set a
    number to tune."""
    return max(2, min(MAX_AUTO_PROCESSES, cores // 2))


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, within a cgroup v2 CPU quota (a
    container's limit) when there is one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def cuda_possible(settings: Settings) -> bool:
    """Whether the sessions might run on CUDA: not SEG_DEVICE=cpu, and a CUDA provider
    installed (whether it really initialises only a loaded session tells)."""
    if settings.device is Device.cpu:
        return False
    if settings.device is Device.cuda:
        return True
    import onnxruntime as ort

    return CUDA_PROVIDER in ort.get_available_providers()


def planned_processes(settings: Settings) -> int | None:
    """How many workers to start: SEG_PROCESSES, or for auto 1 when CUDA is out of the
    question, else None (decided once the first worker's sessions are loaded)."""
    if settings.processes != "auto":
        return settings.processes
    return None if cuda_possible(settings) else 1


def worker_settings(settings: Settings, count: int) -> Settings:
    """The workers share the cores: SEG_INTRA_OP_THREADS, when not set, is the cores this
    process may use divided among them."""
    if "intra_op_threads" in settings.model_fields_set:
        return settings
    cores = available_cores()
    return settings.model_copy(update={"intra_op_threads": max(1, cores // count)})


def port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` with SO_REUSEPORT, not yet listening. The supervisor
    holds one (never listening: it gets no connections, but no process without
    SO_REUSEPORT can take the port); each worker listens on one of its own."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serving_already(host: str, port: int) -> bool:
    """Whether something accepts connections on `host`:`port`. SO_REUSEPORT would let a second
    segserve (same user) share the port silently: it must fail as a single process does."""
    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=1.0):
            return True
    except OSError:
        return False


def describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


@dataclass
class Worker:
    role: ProcessRole
    process: BaseProcess
    reports: Connection  # the worker says "serving", then "loaded" with its providers
    started_at: float
    serving: bool = False


class Supervisor:
    def __init__(
        self, settings: Settings, session_factory: SessionFactory | None, count: int | None
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.auto = count is None
        self.count = count or 1  # auto: 1 until the first worker's providers are known
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, Worker] = {}
        self.restart_at: dict[int, float] = {}
        self.backoff: dict[int, float] = {}
        self.signals = 0
        self.forwarded = 0
        self.stopping_since: float | None = None
        self.failed = False
        self.killed = False  # the workers left after the stop budget
        self.metrics_dir = ""
        self.port: socket.socket | None = None

    def run(self) -> int:
        """Serve until a stop signal and every worker has drained; the exit status."""
        from app.observability import configure_logging

        self.metrics_dir = tempfile.mkdtemp(prefix="segserve-metrics-")
        os.environ[MULTIPROC_ENV] = self.metrics_dir  # before any worker imports prometheus
        configure_logging(self.settings.log_level)
        host, port = self.settings.host, self.settings.port
        try:
            if serving_already(host, port):
                raise OSError(f"something already serves on {host}:{port}")
            self.port = port_socket(host, port)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", host, port, exc)
            self._clean_up()
            return 1
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info(
                "serving http://%s:%d with %s",
                host,
                port,
                "one worker process, more if its sessions run on CUDA (SEG_PROCESSES=auto)"
                if self.auto
                else f"{self.count} worker processes",
            )
            for index in range(self.count):
                self._start(index, first_start=True)
            return self._supervise()
        finally:
            for worker in self.workers.values():  # only after an unexpected error here
                worker.process.kill()
            for number, handler in previous.items():
                signal.signal(number, handler)
            self._clean_up()

    def _clean_up(self) -> None:
        if self.port is not None:
            self.port.close()
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        self.signals += 1

    def _start(self, index: int, first_start: bool) -> None:
        role = ProcessRole(index, self.count, first_start, supervised=True)
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=worker_main,
            args=(
                worker_settings(self.settings, self.count),
                role,
                writer,
                self.session_factory,
            ),
            name=f"segserve-worker-{index}",
        )
        process.start()
        writer.close()
        self.workers[index] = Worker(role, process, reader, time.monotonic())

    def _supervise(self) -> int:
        while True:
            if self.signals > self.forwarded:
                self._stop()
            if self.stopping_since is not None:
                if not self.workers:
                    return 1 if self.failed else 0
                if time.monotonic() - self.stopping_since > self._stop_budget() and not self.killed:
                    self.killed = True
                    for worker in self.workers.values():
                        log.error(
                            "worker %d (pid %s) did not stop in time: killed",
                            worker.role.index + 1,
                            worker.process.pid,
                        )
                        worker.process.kill()
            else:
                now = time.monotonic()
                for index, due in list(self.restart_at.items()):
                    if now >= due:
                        del self.restart_at[index]
                        self._start(index, first_start=False)
            waitables: list[Any] = [w.reports for w in self.workers.values()]
            waitables += [w.process.sentinel for w in self.workers.values()]
            wait(waitables, timeout=POLL_S)
            for worker in list(self.workers.values()):
                self._read_reports(worker)
                if worker.process.exitcode is not None:
                    self._exited(worker)

    def _stop_budget(self) -> float:
        # From uvicorn's drain delay and timeout, and app.main's grace after it.
        return self.settings.drain_delay_s + self.settings.shutdown_timeout_s + STOP_MARGIN_S

    def _stop(self) -> None:
        first = self.stopping_since is None
        if first:
            self.stopping_since = time.monotonic()
            self.restart_at.clear()
            log.info("stopping: %d worker(s) drain", len(self.workers))
        self.forwarded = self.signals
        for worker in self.workers.values():
            if worker.process.pid is not None and worker.process.exitcode is None:
                os.kill(worker.process.pid, signal.SIGTERM)

    def _read_reports(self, worker: Worker) -> None:
        while True:
            try:
                if not worker.reports.poll():
                    return
                kind, value = worker.reports.recv()
            except (EOFError, OSError):
                return
            if kind == "serving":
                worker.serving = True
                log.info(
                    "worker %d of %d (pid %s) serving",
                    worker.role.index + 1,
                    self.count,
                    worker.process.pid,
                )
            elif kind == "loaded":
                self._loaded(worker, list(value))

    def _loaded(self, worker: Worker, providers: list[str]) -> None:
        if not self.auto or worker.role.index != 0 or self.stopping_since is not None:
            return
        self.auto = False  # decided once
        if CUDA_PROVIDER not in providers:
            log.info("SEG_PROCESSES=auto: the sessions run on %s: one worker", providers)
            return
        self.count = cuda_processes(available_cores())
        log.info("SEG_PROCESSES=auto: the sessions run on CUDA: %d workers", self.count)
        for index in range(1, self.count):
            self._start(index, first_start=True)

    def _exited(self, worker: Worker) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        index, pid = worker.role.index, worker.process.pid
        del self.workers[index]
        worker.reports.close()
        if pid is not None:
            mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        how = describe_exit(worker.process.exitcode)
        if self.stopping_since is not None:
            log.info("worker %d (pid %s) stopped: %s", index + 1, pid, how)
            return
        if worker.role.first_start and not worker.serving:
            log.error(
                "worker %d (pid %s) failed to start (%s): stopping the service",
                index + 1,
                pid,
                how,
            )
            self.failed = True
            self.signals += 1  # stop the others as on SIGTERM
            return
        lived = time.monotonic() - worker.started_at
        delay = (
            RESTART_FIRST_S
            if lived > STABLE_S
            else min(RESTART_MAX_S, 2 * self.backoff.get(index, RESTART_FIRST_S / 2))
        )
        self.backoff[index] = delay
        self.restart_at[index] = time.monotonic() + delay
        log.warning(
            "worker %d (pid %s) exited (%s) after %.0f s: a new one starts in %.1f s",
            index + 1,
            pid,
            how,
            lived,
            delay,
        )


def worker_main(
    settings: Settings,
    role: ProcessRole,
    reports: Connection,
    session_factory: SessionFactory | None,
) -> None:
    """A worker process: the app on a socket of its own for the port, until SIGTERM."""
    import sys

    from app.server import worker_server

    parent = os.getppid()
    server, registry = worker_server(settings, role, session_factory)
    threading.Thread(
        target=_report, args=(server, registry, reports), name="report", daemon=True
    ).start()
    threading.Thread(
        target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True
    ).start()
    # Bound now, so that a port taken stops the start; it listens (joins the ones the kernel
    # spreads connections over) once uvicorn starts serving, after the app's startup.
    listener = port_socket(settings.host, settings.port)
    server.run(sockets=[listener])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _report(server: Any, registry: Any, reports: Connection) -> None:
    """Tell the supervisor when this worker serves, and then the providers its sessions got."""
    try:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.05)
        reports.send(("serving", None))
        registry.loaded.wait()
        reports.send(("loaded", sorted(registry.providers_in_use())))
    except OSError:  # the supervisor is gone
        pass


def _exit_with_parent(parent: int) -> None:
    """A worker whose supervisor died (killed) stops as on SIGTERM instead of serving on."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
