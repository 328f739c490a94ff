"""The app factory: `uvicorn app.main:create_app --factory` or `segserve serve`."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.api.routes import health, labelstudio, metrics, models, segment, v2, web
from app.api.routes import jobs as jobs_routes
from app.api.security import install_security
from app.config import Settings
from app.errors import install_error_handlers
from app.grpc_v2 import with_grpc
from app.inference.admission import Admission
from app.inference.registry import ModelRegistry
from app.inference.session import SessionFactory, default_workers, ort_session
from app.inference.workers import InferencePool
from app.jobs.manager import JobManager
from app.main_info import SERVER_NAME, VERSION
from app.observability import Metrics, RequestContextMiddleware, configure_logging
from app.supervisor import ProcessRole
from app.tracing_setup import install_tracing

log = logging.getLogger("segserve")

# After uvicorn's drain (SEG_SHUTDOWN_TIMEOUT_S), the seconds given to inference that was told
# to stop: tiled work ends at its next tile, queued work is dropped. A single session run
# still going then is left to end with the process.
STOP_GRACE_S = 1.0
# With several processes, how often the job worker looks for jobs other processes queued.
SHARED_JOB_POLL_S = 0.5


def create_app(
    settings: Settings | None = None,
    session_factory: SessionFactory = ort_session,
    role: ProcessRole | None = None,
) -> FastAPI:
    """The app; `role` places it among SEG_PROCESSES worker processes (app/supervisor.py):
    only the first runs the job worker and the gRPC server."""
    settings = settings or Settings()
    role = role or ProcessRole()
    if not role.primary:
        settings = settings.model_copy(update={"grpc_port": None})
    configure_logging(settings.log_level)
    registry = ModelRegistry(settings, session_factory)
    app_metrics = Metrics(
        lambda: [
            (e.name, e.batcher.batches, e.batcher.rows)
            for e in registry.served()
            if e.batcher is not None
        ]
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Sized at the first job, from the providers the ready model's session really got.
        executor = InferencePool(
            lambda: settings.workers or default_workers(registry.providers_in_use())
        )
        app.state.executor = executor
        registry.discover()
        # Load and warm up off the event loop: /health/live answers meanwhile and
        # /health/ready says 503 until every model is warm. A daemon thread, not asyncio's
        # default executor, whose threads the interpreter would wait for on exit.
        threading.Thread(target=registry.load_all, name="load-models", daemon=True).start()
        # Resumes the jobs a stop or a crash interrupted; runs them on the same workers and
        # pixel budget as synchronous requests.
        jobs = JobManager(
            settings,
            registry,
            executor,
            app.state.admission,
            idle_poll_s=SHARED_JOB_POLL_S if role.supervised else None,
        )
        app.state.jobs = jobs
        if role.primary:
            jobs.start()
        log.info(
            "models from %s, device=%s, %s worker(s) x %d onnxruntime thread(s), %d cores%s",
            settings.resolved_model_dir,
            settings.device.value,
            settings.workers or "auto",
            settings.intra_op_threads,
            os.cpu_count() or 1,
            f", process {role.index + 1} of {role.count}" if role.count > 1 else "",
        )
        try:
            if not role.accepts_while_loading:
                # It listens only after this (app/supervisor.py): connections go to the
                # workers already serving meanwhile. A stop signal ends the wait.
                await _wait_until(lambda: registry.loaded.is_set() or registry.draining, None)
            yield
        finally:
            # Requests still running were cancelled, and with them told to stop. Drop what
            # is queued, give the rest a moment, and never wait on a session run unboundedly.
            admission: Admission = app.state.admission
            jobs.pause()  # first: a job must not see the workers go and count that a failure
            executor.shutdown(wait=False, cancel_futures=True)
            await asyncio.to_thread(jobs.stop, STOP_GRACE_S)  # a running job pauses to resume
            await _wait_until(lambda: admission.pending == 0, STOP_GRACE_S)
            closing = threading.Thread(target=registry.close, name="close-models", daemon=True)
            closing.start()
            await _wait_until(lambda: not closing.is_alive(), STOP_GRACE_S)

    app = FastAPI(
        title=SERVER_NAME,
        version=VERSION,
        summary="Semantic segmentation over HTTP: U-Net and dilated networks on onnxruntime.",
        lifespan=with_grpc(lifespan),  # plus gRPC (KServe v2) when SEG_GRPC_PORT is set
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = app_metrics
    app.state.admission = Admission(
        settings.max_pending, settings.request_timeout_s, pixel_limit=settings.max_pending_pixels
    )
    install_error_handlers(app)
    install_security(app, settings)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=app_metrics,
        known_models=lambda: {e.name for e in registry.served()},
    )
    install_tracing(app)  # outermost: the request span covers every middleware; off unless OTEL_*
    for module in (health, models, segment, jobs_routes, labelstudio, metrics, v2, web):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    return app


async def _wait_until(condition: Callable[[], bool], timeout_s: float | None) -> None:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not condition() and (deadline is None or time.monotonic() < deadline):
        await asyncio.sleep(0.02)
