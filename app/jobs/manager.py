"""The job worker: runs queued jobs one at a time through the service's tiled path,
writing the class map into a file-backed array and recording finished tiles, so a job
interrupted by a restart or a crash resumes from its last finished tile batch."""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from app.config import Settings
from app.errors import (
    InsufficientStorage,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    ProblemError,
)
from app.imaging.decode import decode_image
from app.imaging.tiff_regions import TiffRegions
from app.inference.admission import Admission
from app.inference.pipeline import Stopped
from app.inference.registry import ModelEntry, ModelRegistry
from app.jobs.execute import segment_job, shared_model
from app.jobs.files import (
    CONFIDENCE,
    INPUT,
    LABELS,
    RESULT_CONFIDENCE,
    RESULT_PNG,
    RESULT_TIFF,
    input_is_tiff,
    probe_image,
    probe_tiff,
)
from app.jobs.store import Job, JobState, JobStore
from app.service.budget import Limits, check_image

log = logging.getLogger("segserve.jobs")

SWEEP_EVERY_S = 60.0
IDLE_POLL_S = 5.0  # a submission in this process wakes the worker at once


class JobManager:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        executor: Executor | None = None,
        admission: Admission | None = None,
        idle_poll_s: float | None = None,
    ) -> None:
        """With `executor` and `admission` (the service's), every session run of a job goes
        through the same inference workers as synchronous requests, and its tile batch holds
        its pixels in the same budget (SEG_MAX_PENDING_PIXELS) while it waits and runs.

        With several worker processes only one runs `start` (the worker); the others queue
        and cancel jobs in the shared store: the worker looks for new jobs every
        `idle_poll_s` and for a cancel after every tile batch."""
        self.settings = settings
        self.idle_poll_s = IDLE_POLL_S if idle_poll_s is None else idle_poll_s
        self.registry = registry
        self.executor, self.admission = executor, admission
        self.root = settings.job_dir.expanduser().resolve()
        self.store = JobStore(self.root / "jobs.sqlite3")
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.cancels: dict[str, threading.Event] = {}
        self.thread: threading.Thread | None = None
        self.last_sweep = 0.0

    # -- API side -------------------------------------------------------------------------

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def check_capacity(self) -> None:
        """503 when SEG_JOB_MAX_QUEUED jobs are already queued or running."""
        active = self.store.count((JobState.queued, JobState.running))
        if active >= self.settings.job_max_queued:
            raise Overloaded(
                f"{active} jobs are queued or running (SEG_JOB_MAX_QUEUED="
                f"{self.settings.job_max_queued}); retry later",
                headers={"Retry-After": "10"},
            )

    def new_folder(self) -> tuple[str, Path]:
        job_id = secrets.token_hex(12)
        folder = self.folder(job_id)
        folder.mkdir(parents=True)
        return job_id, folder

    def discard_folder(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def submit(self, job_id: str, owner: str, model: ModelEntry, options: dict[str, Any]) -> Job:
        """Queue the job whose upload is in its folder; 4xx (and the folder removed) when the
        image is unusable, too large or over the disk quota."""
        folder = self.folder(job_id)
        try:
            tiff = input_is_tiff(folder / INPUT)
            width, height = probe_tiff(folder / INPUT) if tiff else probe_image(folder / INPUT)
            limit, setting = (
                (self.settings.job_max_tiff_pixels, "SEG_JOB_MAX_TIFF_PIXELS")
                if tiff
                else (self.settings.job_max_pixels, "SEG_JOB_MAX_PIXELS")
            )
            if width * height > limit:
                hint = (
                    "" if tiff else "; TIFF is read region by region, up to SEG_JOB_MAX_TIFF_PIXELS"
                )
                raise PayloadTooLarge(
                    f"the image has {width}x{height} pixels; jobs take at most {limit} "
                    f"({setting}{hint})"
                )
            check_image(model.spec, height, width, self.limits(limit))
            # The input, the class map on disk and its PNG or TIFF (at most the map's size).
            maps = 2 if options.get("confidence") else 1  # class map, and confidence if asked
            disk = (folder / INPUT).stat().st_size + 2 * maps * width * height
            if self.store.disk_bytes() + disk > self.settings.job_disk_bytes:
                raise InsufficientStorage(
                    f"the job needs about {disk} bytes and the job disk quota "
                    f"(SEG_JOB_DISK_BYTES={self.settings.job_disk_bytes}) would be passed"
                )
            self.check_capacity()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        job = Job(
            id=job_id,
            owner=owner,
            model=model.spec.name,
            model_version=model.spec.version,
            state=JobState.queued,
            options=options,
            width=width,
            height=height,
            created=time.time(),
            disk_bytes=disk,
        )
        self.store.add(job)
        self.wake.set()
        return job

    def cancel_or_delete(self, job: Job) -> None:
        """Cancel a queued or running job (a running one stops between tile batches), or
        delete a finished one with its files."""
        if job.state.finished:
            self.store.delete(job.id)
            shutil.rmtree(self.folder(job.id), ignore_errors=True)
            return
        self.store.update(job.id, cancel_requested=True)
        event = self.cancels.get(job.id)
        if event is not None:
            event.set()
        if job.state is JobState.queued:
            self._finish(job.id, JobState.cancelled)

    def limits(self, max_pixels: int | None = None) -> Limits:
        return Limits(
            max_pixels or self.settings.job_max_tiff_pixels,
            self.settings.whole_image_max_pixels,
            self.settings.max_answer_bytes,
        )

    # -- worker side ----------------------------------------------------------------------

    def start(self) -> None:
        # A job left running by a stop or a crash resumes from its finished tiles.
        for job in self.store.find(states=(JobState.running,)):
            log.info(
                "job %s resumes after a restart at tile %d of %d",
                job.id,
                job.tiles_done,
                job.tiles_total,
            )
            self.store.update(job.id, state=JobState.queued)
        self.thread = threading.Thread(target=self._loop, name="jobs", daemon=True)
        self.thread.start()

    def pause(self) -> None:
        """Shutdown begins: the running job stops at its next tile batch and stays to resume."""
        self.stopping.set()
        self.wake.set()

    def stop(self, timeout: float) -> None:
        self.pause()
        for event in list(self.cancels.values()):
            event.set()
        if self.thread is not None:
            self.thread.join(timeout)
        self.store.close()

    def _loop(self) -> None:
        self.registry.loaded.wait()
        while not self.stopping.is_set():
            if time.monotonic() - self.last_sweep > SWEEP_EVERY_S:
                self.sweep()
            queued = self.store.find(states=(JobState.queued,))
            if not queued:
                self.wake.wait(self.idle_poll_s)
                self.wake.clear()
                continue
            self.run(queued[0])

    def sweep(self) -> None:
        """Delete finished jobs past SEG_JOB_TTL_S, with their files."""
        self.last_sweep = time.monotonic()
        for job in self.store.expired(self.settings.job_ttl_s):
            self.store.delete(job.id)
            shutil.rmtree(self.folder(job.id), ignore_errors=True)

    def run(self, job: Job, on_batch: Callable[[], None] | None = None) -> None:
        """Run one job to a finished state; a stop for shutdown leaves it to resume."""
        cancel = self.cancels.setdefault(job.id, threading.Event())
        if job.cancel_requested:
            cancel.set()
        self.store.update(job.id, state=JobState.running, started=job.started or time.time())
        try:
            self._run(job, cancel, on_batch)
        except Stopped:
            if self.stopping.is_set() and not self.store_job(job.id).cancel_requested:
                log.info("job %s paused for shutdown; it resumes on the next start", job.id)
                return
            self._finish(job.id, JobState.cancelled)
        except ProblemError as exc:
            self._finish(job.id, JobState.failed, _problem(exc.status, exc.slug, exc.detail))
        except Exception as exc:  # the job fails; the worker goes on with the next one
            if self.stopping.is_set() and not self.store_job(job.id).cancel_requested:
                # Shutting down (the workers may be gone already): not the job's fault.
                log.info(
                    "job %s paused for shutdown (%s); it resumes on the next start",
                    job.id,
                    type(exc).__name__,
                )
                return
            log.exception("job %s failed", job.id)
            detail = f"the job failed: {type(exc).__name__}"
            self._finish(job.id, JobState.failed, _problem(500, "job-failed", detail))
        else:
            self._finish(job.id, JobState.succeeded)
        finally:
            self.cancels.pop(job.id, None)

    def store_job(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        assert job is not None
        return job

    def _run(self, job: Job, cancel: threading.Event, on_batch: Callable[[], None] | None) -> None:
        try:
            model = self.registry.get(job.model, job.model_version)
        except ModelNotFound:
            raise ModelNotFound(
                f"model {job.model} {job.model_version} is no longer served"
            ) from None
        folder = self.folder(job.id)
        tiff = input_is_tiff(folder / INPUT)
        source: np.ndarray | TiffRegions
        if tiff:
            source = TiffRegions(folder / INPUT)
        else:
            with open(folder / INPUT, "rb") as file:
                source = decode_image(file, self.settings.job_max_pixels).pixels
        try:
            self._segment(job, model, source, cancel, on_batch)
        finally:
            if isinstance(source, TiffRegions):
                source.close()

    def _segment(
        self,
        job: Job,
        model: ModelEntry,
        source: np.ndarray | TiffRegions,
        cancel: threading.Event,
        on_batch: Callable[[], None] | None,
    ) -> None:
        def stop() -> bool:
            return cancel.is_set() or self.stopping.is_set()

        def progress(done: int, total: int) -> None:
            self.store.update(job.id, tiles_done=done, tiles_total=total)
            stored = self.store.get(job.id)
            if stored is None or stored.cancel_requested:  # asked in another process
                cancel.set()
            if on_batch is not None:
                on_batch()

        if self.executor is not None and self.admission is not None:
            model = shared_model(model, self.executor, self.admission, stop)
        segment_job(
            model,
            source,
            self.folder(job.id),
            job.options,
            job.tiles_done,
            self.settings,
            stop,
            progress,
        )

    def _finish(self, job_id: str, state: JobState, error: dict[str, Any] | None = None) -> None:
        self.store.update(job_id, state=state, finished=time.time(), error=error)
        if state is not JobState.succeeded:
            folder = self.folder(job_id)
            for name in (INPUT, LABELS, RESULT_PNG, RESULT_TIFF, CONFIDENCE, RESULT_CONFIDENCE):
                (folder / name).unlink(missing_ok=True)

    def result_path(self, job: Job, format: str = "png") -> Path:
        names = {"tiff": RESULT_TIFF, "confidence": RESULT_CONFIDENCE}
        return self.folder(job.id) / names.get(format, RESULT_PNG)

    def labels(self, job: Job) -> np.ndarray:
        return np.memmap(self.folder(job.id) / LABELS, np.uint8, "r", shape=(job.height, job.width))


def _problem(status: int, slug: str, detail: str) -> dict[str, Any]:
    return {"status": status, "type": slug, "detail": detail}
