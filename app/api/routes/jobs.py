"""Segmentation jobs over HTTP: submit, watch (JSON or server-sent events), fetch the
result (with range requests), cancel or delete, list. A job is visible only to the API
key that made it (everyone's, when no keys are set)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from app.api.body import save_image_upload
from app.api.deps import RegistryDep, SettingsDep
from app.api.routes.segment import REQUEST_BODY
from app.api.security import presented_key
from app.errors import (
    PROBLEM_CONTENT,
    PROBLEM_TYPE_BASE,
    InvalidParameter,
    JobNotReady,
    ProblemError,
)
from app.imaging.encode import rle_json_text, rle_text_bytes
from app.inference.pipeline import require_scores
from app.jobs.files import INPUT
from app.jobs.manager import JobManager
from app.jobs.store import Job, JobState
from app.service.budget import check_answer

ERRORS = {
    400: "Undecodable image or malformed body",
    404: "Unknown model or job",
    408: "The body did not arrive in time",
    409: "The job has no result",
    413: "Upload, image or answer above the limits",
    415: "Unsupported content type",
    422: "Invalid parameters; confidence or tta from a labels-only model",
    503: "Model not ready, or the job queue is full (Retry-After)",
    507: "Job disk quota reached",
}
router = APIRouter(
    tags=["jobs"],
    responses={code: {"description": text, **PROBLEM_CONTENT} for code, text in ERRORS.items()},
)


class JobNotFound(ProblemError):
    status, slug = 404, "job-not-found"


def get_jobs(request: Request) -> JobManager:
    manager: JobManager = request.app.state.jobs
    return manager


JobsDep = Annotated[JobManager, Depends(get_jobs)]


def caller(request: Request) -> str:
    """Who owns a job: a hash of the presented API key ("" when keys are off)."""
    if not request.app.state.settings.api_key_list:
        return ""
    key = presented_key(request) or ""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def own_job(manager: JobManager, request: Request, job_id: str) -> Job:
    job = manager.store.get(job_id)
    if job is None or job.owner != caller(request):
        raise JobNotFound(f"no job {job_id!r}")
    return job


def describe(job: Job) -> dict[str, Any]:
    now = time.time()
    elapsed = ((job.finished or now) - job.started) if job.started else 0.0
    eta = None
    if job.state is JobState.running and job.tiles_done and job.tiles_total:
        eta = round(elapsed / job.tiles_done * (job.tiles_total - job.tiles_done), 1)
    body: dict[str, Any] = {
        "id": job.id,
        "model": {"name": job.model, "version": job.model_version},
        "state": job.state.value,
        "width": job.width,
        "height": job.height,
        "tiles_done": job.tiles_done,
        "tiles_total": job.tiles_total,
        "elapsed_s": round(elapsed, 2),
        "eta_s": eta,
        "created": job.created,
        "options": job.options,
        "links": {"self": f"/v1/jobs/{job.id}", "events": f"/v1/jobs/{job.id}/events"},
    }
    if job.state is JobState.succeeded:
        body["links"]["result"] = f"/v1/jobs/{job.id}/result"
    if job.error is not None:
        body["error"] = {
            "type": PROBLEM_TYPE_BASE + job.error["type"],
            "title": "Job failed",
            "status": job.error["status"],
            "detail": job.error["detail"],
        }
    return body


@router.post(
    "/v1/models/{name}/jobs",
    status_code=202,
    summary="Segment one image as a job",
    description="Takes what /segment takes (the upload is streamed to disk, up to "
    "SEG_JOB_MAX_UPLOAD_BYTES and SEG_JOB_MAX_PIXELS) and answers 202 with Location: "
    "/v1/jobs/{id} at once; the class map is made in the background.",
    openapi_extra={"requestBody": REQUEST_BODY},
    responses={202: {"description": "Queued: the job's state, Location: /v1/jobs/{id}"}},
)
async def submit_job(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    jobs: JobsDep,
    name: Annotated[str, Path(description="Model name", examples=["unet-isbi"])],
    tile_size: Annotated[int | None, Query(ge=64, le=2048, description="Tile side")] = None,
    tile_overlap: Annotated[int | None, Query(ge=0, le=512, description="Context pixels")] = None,
    tta: Annotated[bool, Query(description="Average over the 8 flips/rotations")] = False,
    confidence: Annotated[
        bool, Query(description="Also keep the top-class probability (result format=confidence)")
    ] = False,
) -> JSONResponse:
    model = registry.get(name)
    require_scores(model.spec, confidence=confidence, tta=tta)  # labels-only models: 422
    jobs.check_capacity()  # before the upload: a full queue costs nobody a transfer
    job_id, folder = jobs.new_folder()
    try:
        await save_image_upload(
            request, folder / INPUT, settings.job_max_upload_bytes, settings.body_timeout_s
        )
    except BaseException:
        await asyncio.to_thread(jobs.discard_folder, job_id)
        raise
    options = {
        "tile_size": tile_size,
        "tile_overlap": tile_overlap,
        "tta": tta,
        "confidence": confidence,
    }
    job = await asyncio.to_thread(jobs.submit, job_id, caller(request), model, options)
    return JSONResponse(describe(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("/v1/jobs", summary="The caller's jobs")
async def list_jobs(request: Request, jobs: JobsDep) -> dict[str, Any]:
    return {"jobs": [describe(job) for job in jobs.store.find(owner=caller(request))]}


@router.get(
    "/v1/jobs/{job_id}",
    summary="A job's state and progress",
    responses={404: {"description": "Unknown job", **PROBLEM_CONTENT}},
)
async def job_status(request: Request, jobs: JobsDep, job_id: str) -> dict[str, Any]:
    return describe(own_job(jobs, request, job_id))


@router.get(
    "/v1/jobs/{job_id}/events",
    summary="A job's progress as server-sent events",
    response_class=StreamingResponse,
)
async def job_events(request: Request, jobs: JobsDep, job_id: str) -> StreamingResponse:
    own_job(jobs, request, job_id)

    async def events() -> AsyncIterator[bytes]:
        last = None
        while True:
            job = jobs.store.get(job_id)
            if job is None:
                yield b"event: deleted\ndata: {}\n\n"
                return
            state = describe(job)
            key = (state["state"], state["tiles_done"], state["tiles_total"])
            if key != last:
                last = key
                yield f"event: progress\ndata: {json.dumps(state)}\n\n".encode()
            if job.state.finished:
                yield f"event: {job.state.value}\ndata: {json.dumps(state)}\n\n".encode()
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.5)

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@router.get(
    "/v1/jobs/{job_id}/result",
    summary="A finished job's class map",
    description="png: the palette PNG of class indices (maps up to SEG_MAX_PIXELS); tiff: a "
    "tiled BigTIFF of class indices with the palette as its colour map and the input's "
    "georeferencing (TIFF inputs and larger maps); json: the run-length encoded map. All "
    "support HTTP range requests.",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The result file",
            "content": {
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/tiff": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object"}},
            },
        },
        206: {"description": "A byte range of the result file (Range requests)"},
        416: {"description": "The requested range is not satisfiable"},
    },
)
async def job_result(
    request: Request,
    jobs: JobsDep,
    job_id: str,
    format: Annotated[
        Literal["png", "tiff", "json", "confidence"] | None,
        Query(
            description="png, tiff or json (default: png, or tiff when there is no PNG); "
            "confidence: the top-class probability x 255 as a grey tiled TIFF (jobs submitted "
            "with confidence=true)"
        ),
    ] = None,
) -> FileResponse:
    job = own_job(jobs, request, job_id)
    if job.state is not JobState.succeeded:
        raise JobNotReady(f"job {job_id} is {job.state.value}; it has no result")
    if format is None:
        format = "png" if jobs.result_path(job, "png").exists() else "tiff"
    if format == "confidence":
        path = jobs.result_path(job, "confidence")
        if not path.exists():
            raise InvalidParameter(
                "this job kept no confidence map: submit it with confidence=true"
            )
        return FileResponse(path, media_type="image/tiff", filename=f"{job.id}.confidence.tif")
    if format in ("png", "tiff"):
        path = jobs.result_path(job, format)
        if not path.exists():
            other = "tiff" if format == "png" else "png"
            raise InvalidParameter(
                f"this job's result is kept as {other.upper()}, not {format.upper()} (PNG up "
                f"to SEG_MAX_PIXELS; TIFF for TIFF inputs and larger maps): use format={other}"
            )
        media = "image/png" if format == "png" else "image/tiff"
        suffix = "png" if format == "png" else "tif"
        return FileResponse(path, media_type=media, filename=f"{job.id}.{suffix}")
    if job.width * job.height > jobs.settings.max_pixels:
        raise InvalidParameter(
            "run-length JSON is kept for maps up to SEG_MAX_PIXELS; use format=tiff"
        )
    path = await asyncio.to_thread(json_result, jobs, job)
    return FileResponse(path, media_type="application/json", filename=f"{job.id}.json")


def json_result(jobs: JobManager, job: Job) -> Any:
    """The run-length JSON answer, written once beside the PNG and served from disk."""
    path = jobs.folder(job.id) / "result.json"
    if path.exists():
        return path
    labels = jobs.labels(job)
    check_answer(
        rle_text_bytes(labels),
        f"the run-length class map of {job.width}x{job.height}",
        jobs.limits(),
        "use format=png",
    )
    head = json.dumps(
        {
            "model": {"name": job.model, "version": job.model_version},
            "width": job.width,
            "height": job.height,
            "class_map": {"encoding": "rle", "order": "row-major"},
        }
    )
    partial = path.with_suffix(".part")
    with open(partial, "wb") as out:
        out.write(head[:-2].encode() + b', "counts": [')
        out.write(rle_json_text(labels))
        out.write(b"]}}")
    partial.replace(path)
    return path


@router.delete("/v1/jobs/{job_id}", status_code=204, summary="Cancel or delete a job")
async def delete_job(request: Request, jobs: JobsDep, job_id: str) -> Response:
    job = own_job(jobs, request, job_id)
    await asyncio.to_thread(jobs.cancel_or_delete, job)
    return Response(status_code=204)
