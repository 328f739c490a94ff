"""The app factory: `uvicorn app.main:create_app --factory` or `segserve serve`."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import onnxruntime as ort
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.api.routes import health, metrics, models, segment, v2, web
from app.api.security import install_security
from app.config import Settings
from app.errors import install_error_handlers
from app.inference.admission import Admission
from app.inference.registry import ModelRegistry
from app.inference.session import SessionFactory, _ort_session, default_workers
from app.main_info import SERVER_NAME, VERSION
from app.observability import (
    BatchCollector,
    Metrics,
    RequestContextMiddleware,
    configure_logging,
)

log = logging.getLogger("segserve")


def create_app(
    settings: Settings | None = None, session_factory: SessionFactory = _ort_session
) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    registry = ModelRegistry(settings, session_factory)
    app_metrics = Metrics()
    app_metrics.registry.register(
        BatchCollector(
            lambda: [
                (e.name, e.batcher.batches, e.batcher.rows)
                for e in registry.served()
                if e.batcher is not None
            ]
        )
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workers = settings.workers or default_workers(
            settings.device, ort.get_available_providers()
        )
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer")
        app.state.executor = executor
        registry.discover()
        # Load and warm up off the event loop: /health/live answers meanwhile and
        # /health/ready says 503 until every model is warm.
        loading = asyncio.create_task(asyncio.to_thread(registry.load_all))
        log.info(
            "models from %s, device=%s, %d worker(s) x %d onnxruntime thread(s), %d cores",
            settings.resolved_model_dir,
            settings.device.value,
            workers,
            settings.intra_op_threads,
            os.cpu_count() or 1,
        )
        try:
            yield
        finally:
            if not loading.done():
                await asyncio.wait({loading}, timeout=settings.shutdown_timeout_s)
            executor.shutdown(wait=True, cancel_futures=False)
            registry.close()

    app = FastAPI(
        title=SERVER_NAME,
        version=VERSION,
        summary="Semantic segmentation over HTTP: U-Net and dilated networks on onnxruntime.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = app_metrics
    app.state.admission = Admission(settings.max_pending, settings.request_timeout_s)
    install_error_handlers(app)
    install_security(app, settings)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=app_metrics,
        known_models=lambda: {e.name for e in registry.served()},
    )
    for module in (health, models, segment, metrics, v2, web):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    return app
