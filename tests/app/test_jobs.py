"""Segmentation jobs: submit, progress, events, results with ranges, owners, cancel,
limits, and resume after a stop."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Device, Settings
from app.inference.registry import ModelRegistry
from app.jobs.files import INPUT
from app.jobs.manager import JobManager
from app.jobs.store import JobState
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready
from tests.app.test_api import expected_grey
from tests.app.tiny_models import write_model

PNG = {"content-type": "image/png"}


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    models = tmp_path / "models"
    if not models.exists():
        models.mkdir(parents=True)
        write_model(models, "threshold", "tiny-grey", size_multiple=8)
        write_model(models, "box", "tiny-box")
    values: dict[str, Any] = {
        "model_dir": models,
        "device": Device.cpu,
        "intra_op_threads": 1,
        "job_dir": tmp_path / "jobs",
        "whole_image_max_pixels": 64 * 64,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tmp_path))) as test_client:
        wait_ready(test_client)
        yield test_client


def wait_done(client: TestClient, location: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state: dict[str, Any] = client.get(location).json()
        if state["state"] in ("succeeded", "failed", "cancelled"):
            return state
        time.sleep(0.05)
    raise AssertionError(f"job not finished: {client.get(location).json()}")


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def test_a_job_gives_the_same_map_as_segment(client: TestClient) -> None:
    pixels = noise(300, 250)
    submitted = client.post(
        "/v1/models/tiny-box/jobs?tile_size=128&tile_overlap=16",
        content=png_bytes(pixels),
        headers=PNG,
    )
    assert submitted.status_code == 202, submitted.text
    location = submitted.headers["Location"]
    assert location == f"/v1/jobs/{submitted.json()['id']}"
    state = wait_done(client, location)
    assert state["state"] == "succeeded", state
    assert state["tiles_done"] == state["tiles_total"] > 1
    direct = client.post(
        "/v1/models/tiny-box/segment?tile_size=128&tile_overlap=16",
        content=png_bytes(pixels),
        headers=PNG,
    )
    result = client.get(f"{location}/result")
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    assert result.content == direct.content
    # JSON: the run-length map, from the same labels.
    body = client.get(f"{location}/result?format=json").json()
    counts = body["class_map"]["counts"]
    labels = np.repeat(counts[0::2], counts[1::2]).reshape(300, 250)
    assert np.array_equal(labels, np.asarray(Image.open(io.BytesIO(direct.content))))
    # Range requests on the result.
    part = client.get(f"{location}/result", headers={"Range": "bytes=0-7"})
    assert part.status_code == 206 and part.content == direct.content[:8]


def test_multipart_upload_and_listing(client: TestClient) -> None:
    pixels = noise(40, 50, seed=1)
    submitted = client.post(
        "/v1/models/tiny-grey/jobs", files={"image": ("a.png", png_bytes(pixels), "image/png")}
    )
    assert submitted.status_code == 202
    state = wait_done(client, submitted.headers["Location"])
    assert state["state"] == "succeeded" and state["tiles_total"] == 1
    result = client.get(f"{submitted.headers['Location']}/result")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(result.content))), expected_grey(pixels))
    listed = client.get("/v1/jobs").json()["jobs"]
    assert [job["id"] for job in listed] == [submitted.json()["id"]]


def test_events_stream_progress_until_the_end(client: TestClient) -> None:
    submitted = client.post(
        "/v1/models/tiny-box/jobs?tile_size=64&tile_overlap=8",
        content=png_bytes(noise(200, 200, seed=2)),
        headers=PNG,
    )
    events = []
    with client.stream("GET", f"{submitted.headers['Location']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
    assert events[-1] == "succeeded" and "progress" in events


def test_bad_uploads_are_refused_at_once_and_leave_nothing(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, job_max_pixels=100 * 100, job_max_queued=1)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        bad = client.post("/v1/models/tiny-grey/jobs", content=b"not an image", headers=PNG)
        assert bad.status_code == 400
        assert bad.headers["content-type"] == "application/problem+json"
        big = client.post(
            "/v1/models/tiny-grey/jobs", content=png_bytes(noise(101, 100)), headers=PNG
        )
        assert big.status_code == 413 and "SEG_JOB_MAX_PIXELS" in big.json()["detail"]
        assert (
            client.post(
                "/v1/models/nope/jobs", content=png_bytes(noise(8, 8)), headers=PNG
            ).status_code
            == 404
        )
        # No job folder is left behind: only the database's files.
        assert all(p.name.startswith("jobs.sqlite3") for p in (tmp_path / "jobs").iterdir())


def test_queue_full_and_disk_quota(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, job_max_queued=1, job_disk_bytes=30_000)
    app = create_app(settings)
    with TestClient(app) as client:
        wait_ready(client)
        jobs: JobManager = app.state.jobs
        jobs.stopping.set()  # the worker takes nothing: queued jobs stay queued
        jobs.wake.set()
        time.sleep(0.1)
        first = client.post(
            "/v1/models/tiny-grey/jobs", content=png_bytes(noise(60, 60)), headers=PNG
        )
        assert first.status_code == 202
        full = client.post(
            "/v1/models/tiny-grey/jobs", content=png_bytes(noise(60, 60)), headers=PNG
        )
        assert full.status_code == 503 and full.headers["Retry-After"] == "10"
        client.delete(first.headers["Location"])  # cancelled: the queue has room again
        quota = client.post(
            "/v1/models/tiny-grey/jobs", content=png_bytes(noise(120, 120)), headers=PNG
        )
        assert quota.status_code == 507


def test_jobs_belong_to_their_key(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tmp_path, api_keys="alpha,beta"))) as client:
        alpha, beta = {"X-API-Key": "alpha"}, {"Authorization": "Bearer beta"}
        deadline = time.monotonic() + 20
        while client.get("/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        submitted = client.post(
            "/v1/models/tiny-grey/jobs", content=png_bytes(noise(20, 20)), headers={**PNG, **alpha}
        )
        location = submitted.headers["Location"]
        assert client.get(location, headers=alpha).status_code == 200
        assert client.get(location, headers=beta).status_code == 404
        assert client.get(f"{location}/result", headers=beta).status_code == 404
        assert client.delete(location, headers=beta).status_code == 404
        assert client.get("/v1/jobs", headers=beta).json()["jobs"] == []
        assert len(client.get("/v1/jobs", headers=alpha).json()["jobs"]) == 1
        assert client.get(location).status_code == 401


def test_result_of_an_unfinished_job_is_409_and_delete_removes_it(client: TestClient) -> None:
    jobs: JobManager = client.app.state.jobs  # type: ignore[attr-defined]
    submitted = client.post(
        "/v1/models/tiny-grey/jobs", content=png_bytes(noise(30, 30)), headers=PNG
    )
    location = submitted.headers["Location"]
    wait_done(client, location)
    job_id = submitted.json()["id"]
    jobs.store.update(job_id, state=JobState.running)
    assert client.get(f"{location}/result").status_code == 409
    jobs.store.update(job_id, state=JobState.succeeded)
    assert client.delete(location).status_code == 204
    assert client.get(location).status_code == 404
    assert not jobs.folder(job_id).exists()


# -- the worker, driven directly ---------------------------------------------------------


def manager_for(tmp_path: Path) -> JobManager:
    settings = settings_for(tmp_path)
    registry = ModelRegistry(settings)
    registry.discover()
    registry.load_all()
    return JobManager(settings, registry)


def queue(manager: JobManager, pixels: np.ndarray, **options: Any) -> str:
    job_id, folder = manager.new_folder()
    (folder / INPUT).write_bytes(png_bytes(pixels))
    model = manager.registry.get("tiny-box")
    options = {"tile_size": 64, "tile_overlap": 8, "tta": False, **options}
    return manager.submit(job_id, "", model, options).id


def test_a_job_stopped_for_shutdown_resumes_from_its_finished_tiles(tmp_path: Path) -> None:
    pixels = noise(260, 230, seed=4)
    first = manager_for(tmp_path)
    job_id = queue(first, pixels)
    batches = []

    def shut_down_after_three() -> None:
        batches.append(1)
        if len(batches) == 3:
            first.stopping.set()

    first.run(first.store.find()[0], on_batch=shut_down_after_three)
    paused = first.store.get(job_id)
    assert paused is not None and paused.state is JobState.running
    assert paused.tiles_done == 3 < paused.tiles_total
    first.store.close()

    # A new process: the job is queued again and only the remaining tiles run.
    second = manager_for(tmp_path)
    entry = second.registry.get("tiny-box")
    runner, runs = entry.runner, []
    entry.runner = lambda output, x: runs.append(1) or runner(output, x)  # type: ignore[assignment, func-returns-value]
    for job in second.store.find(states=(JobState.running,)):
        second.store.update(job.id, state=JobState.queued)
    second.run(second.store.find()[0])
    done = second.store.get(job_id)
    assert done is not None and done.state is JobState.succeeded
    assert len(runs) == done.tiles_total - 3
    reference = manager_for(tmp_path / "ref")
    ref_id = queue(reference, pixels)
    reference.run(reference.store.find()[0])
    ours = np.asarray(Image.open(second.result_path(done)))
    theirs = np.asarray(Image.open(reference.result_path(reference.store.get(ref_id))))  # type: ignore[arg-type]
    assert np.array_equal(ours, theirs)


def test_cancel_stops_a_running_job_between_batches(tmp_path: Path) -> None:
    manager = manager_for(tmp_path)
    job_id = queue(manager, noise(260, 230, seed=5))
    batches = []

    def cancel_after_two() -> None:
        batches.append(1)
        if len(batches) == 2:
            job = manager.store.get(job_id)
            assert job is not None
            manager.cancel_or_delete(job)

    manager.run(manager.store.find()[0], on_batch=cancel_after_two)
    job = manager.store.get(job_id)
    assert job is not None and job.state is JobState.cancelled and len(batches) == 2
    assert not (manager.folder(job_id) / INPUT).exists()


def test_a_failed_job_reports_its_problem(tmp_path: Path) -> None:
    manager = manager_for(tmp_path)
    job_id, folder = manager.new_folder()
    (folder / INPUT).write_bytes(png_bytes(noise(20, 20)))
    manager.submit(job_id, "", manager.registry.get("tiny-box"), {})
    (folder / INPUT).write_bytes(png_bytes(noise(20, 20))[:60])  # truncated after submit
    manager.run(manager.store.find()[0])
    job = manager.store.get(job_id)
    assert job is not None and job.state is JobState.failed
    assert job.error is not None and job.error["status"] == 400


def test_finished_jobs_expire_after_the_ttl(tmp_path: Path) -> None:
    manager = manager_for(tmp_path)
    job_id = queue(manager, noise(20, 20))
    manager.run(manager.store.find()[0])
    manager.store.update(job_id, finished=time.time() - manager.settings.job_ttl_s - 1)
    manager.sweep()
    assert manager.store.get(job_id) is None and not manager.folder(job_id).exists()


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_a_real_server_killed_mid_job_finishes_it_after_a_restart(
    tmp_path: Path, signal_name: str
) -> None:
    import signal

    import httpx

    from tests.app.slow_server import slow_server

    models = tmp_path / "models"
    models.mkdir()
    write_model(models, "box", "tiny-box")
    env = {
        "SEG_JOB_DIR": str(tmp_path / "jobs"),
        "SEG_WHOLE_IMAGE_MAX_PIXELS": "4096",
        "SEG_SHUTDOWN_TIMEOUT_S": "2",
    }
    pixels = noise(300, 300, seed=6)
    with slow_server(models, 0.05, **env) as (base, process):
        submitted = httpx.post(
            f"{base}/v1/models/tiny-box/jobs?tile_size=64&tile_overlap=8",
            content=png_bytes(pixels),
            headers=PNG,
        )
        location = base + submitted.headers["Location"]
        deadline = time.monotonic() + 20
        while httpx.get(location).json()["tiles_done"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(getattr(signal, signal_name))
        process.wait(timeout=20)
    from app.jobs.store import JobStore

    store = JobStore(tmp_path / "jobs" / "jobs.sqlite3")
    left = store.get(submitted.json()["id"])
    store.close()
    # Stopped or killed mid-way, the job is left to resume: never failed or cancelled.
    assert left is not None and left.state in (JobState.running, JobState.queued), left
    assert 0 < left.tiles_done < left.tiles_total
    with slow_server(models, 0.0, **env) as (base, _):
        location = base + submitted.headers["Location"]
        deadline = time.monotonic() + 30
        while (state := httpx.get(location).json())["state"] != "succeeded":
            assert state["state"] in ("queued", "running") and time.monotonic() < deadline, state
            time.sleep(0.05)
        result = httpx.get(f"{location}/result")
        direct = httpx.post(
            f"{base}/v1/models/tiny-box/segment?tile_size=64&tile_overlap=8",
            content=png_bytes(pixels),
            headers=PNG,
        )
        assert np.array_equal(
            np.asarray(Image.open(io.BytesIO(result.content))),
            np.asarray(Image.open(io.BytesIO(direct.content))),
        )


def test_a_tiff_job_is_read_by_regions_and_answers_a_tiff(
    client: TestClient, tmp_path: Path
) -> None:
    import tifffile

    image = np.random.default_rng(7).integers(0, 65536, (420, 380), dtype=np.uint16)
    path = tmp_path / "scene.tif"
    geo = [(33550, 12, 3, (2.0, 2.0, 0.0), True), (33922, 12, 6, (0, 0, 0, 5e5, 4e6, 0), True)]
    tifffile.imwrite(path, image, tile=(128, 128), compression="zlib", extratags=geo)
    query = "tile_size=128&tile_overlap=16"
    submitted = client.post(
        f"/v1/models/tiny-box/jobs?{query}",
        content=path.read_bytes(),
        headers={"content-type": "image/tiff"},
    )
    assert submitted.status_code == 202, submitted.text
    state = wait_done(client, submitted.headers["Location"])
    assert state["state"] == "succeeded", state
    result = client.get(f"{submitted.headers['Location']}/result?format=tiff")
    assert result.status_code == 200 and result.headers["content-type"] == "image/tiff"
    (tmp_path / "map.tif").write_bytes(result.content)
    direct = client.post(
        f"/v1/models/tiny-box/segment?{query}",
        content=path.read_bytes(),
        headers={"content-type": "image/tiff"},
    )
    expected = np.asarray(Image.open(io.BytesIO(direct.content)))
    with tifffile.TiffFile(tmp_path / "map.tif") as tif:
        page = tif.pages[0]
        assert np.array_equal(page.asarray(), expected)
        assert page.photometric == 3 and page.is_tiled
        assert page.tags[33550].value == (2.0, 2.0, 0.0)
        assert page.tags[33922].value[3:5] == (5e5, 4e6)
    assert client.get(f"{submitted.headers['Location']}/result").status_code == 200  # PNG too


def test_a_job_keeps_a_confidence_map_when_asked(client: TestClient, tmp_path: Path) -> None:
    import tifffile

    pixels = noise(260, 300, seed=8)
    query = "tile_size=128&tile_overlap=16"
    submitted = client.post(
        f"/v1/models/tiny-box/jobs?{query}&confidence=true", content=png_bytes(pixels), headers=PNG
    )
    location = submitted.headers["Location"]
    assert wait_done(client, location)["state"] == "succeeded"
    kept = client.get(f"{location}/result?format=confidence")
    assert kept.status_code == 200 and kept.headers["content-type"] == "image/tiff"
    (tmp_path / "c.tif").write_bytes(kept.content)
    direct = client.post(
        f"/v1/models/tiny-box/segment?{query}&format=confidence",
        content=png_bytes(pixels),
        headers=PNG,
    )
    assert np.array_equal(
        tifffile.imread(tmp_path / "c.tif"), np.asarray(Image.open(io.BytesIO(direct.content)))
    )
    plain = client.post("/v1/models/tiny-box/jobs", content=png_bytes(pixels), headers=PNG)
    wait_done(client, plain.headers["Location"])
    refused = client.get(f"{plain.headers['Location']}/result?format=confidence")
    assert refused.status_code == 422 and "confidence=true" in refused.json()["detail"]


def test_workers_gone_at_shutdown_pause_a_job_instead_of_failing_it(tmp_path: Path) -> None:
    from concurrent.futures import Future, ThreadPoolExecutor

    from app.inference.admission import Admission

    class ClosingPool(ThreadPoolExecutor):
        """Shuts down under the job, as the service's pool does at shutdown."""

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            manager.pause()
            raise RuntimeError("cannot schedule new futures after shutdown")

    manager = manager_for(tmp_path)
    manager.executor, manager.admission = ClosingPool(1), Admission(16, 10)
    job_id = queue(manager, noise(200, 200, seed=9))
    manager.run(manager.store.find()[0])
    paused = manager.store.get(job_id)
    assert paused is not None and paused.state is JobState.running  # resumes on next start
    # The same failure outside a shutdown is the job's: failed, with its problem.
    manager.stopping.clear()
    manager.executor = ThreadPoolExecutor(1)
    manager.executor.shutdown()
    manager.run(manager.store.find()[0])
    failed = manager.store.get(job_id)
    assert failed is not None and failed.state is JobState.failed
