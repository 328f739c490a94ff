"""`segserve segment` through jobs, and `segserve job wait|status|list|cancel`, against a
live server; the Python client's Jobs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.client_jobs import needs_job, wait_and_fetch
from segserve import Client, JobFailed
from tests.app.conftest import png_bytes, running_server
from tests.app.test_api import expected_grey, grey_pattern, read_png
from tests.app.test_client import segserve


def test_segment_sends_files_as_jobs_and_writes_their_results(
    model_dir: Path, tmp_path: Path
) -> None:
    pixels = grey_pattern(300, 260)
    (tmp_path / "a.png").write_bytes(png_bytes(pixels))
    tifffile.imwrite(tmp_path / "b.tif", pixels, tile=(128, 128), compression="zlib")
    out = tmp_path / "out"
    with running_server(model_dir, SEG_JOB_DIR=str(tmp_path / "jobs")) as (base, _):
        as_png = segserve(
            "segment",
            str(tmp_path / "a.png"),
            "--model",
            "tiny-grey",
            "--url",
            base,
            "-o",
            str(out),
            "--job",
        )
        assert as_png.returncode == 0, as_png.stderr
        assert "job " in as_png.stderr and "tiles" in as_png.stderr  # the progress bar
        assert np.array_equal(read_png((out / "a.png").read_bytes()), expected_grey(pixels))
        as_tiff = segserve(
            "segment",
            str(tmp_path / "b.tif"),
            "--model",
            "tiny-grey",
            "--url",
            base,
            "-o",
            str(out),
            "--format",
            "tiff",
            "-q",
        )
        assert as_tiff.returncode == 0, as_tiff.stderr
        assert np.array_equal(tifffile.imread(out / "b.tif"), expected_grey(pixels))
        listed = segserve("job", "list", "--url", base)
        assert listed.returncode == 0 and listed.stdout.count("succeeded") == 2
        overlay = segserve(
            "segment",
            str(tmp_path / "a.png"),
            "--model",
            "tiny-grey",
            "--url",
            base,
            "-o",
            str(out),
            "--job",
            "--format",
            "overlay",
        )
        assert overlay.returncode == 2 and "need a job" in overlay.stderr


def test_waiting_resumes_by_id_after_an_interrupt(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pixels = grey_pattern(200, 210)
    with (
        running_server(model_dir, SEG_JOB_DIR=str(tmp_path / "jobs")) as (base, _),
        Client(base) as client,
    ):
        job = client.jobs.submit(png_bytes(pixels), "tiny-grey")

        def interrupted(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt

        original = client.jobs.__class__.wait
        client.jobs.__class__.wait = interrupted  # type: ignore[method-assign, assignment]
        try:
            with pytest.raises(KeyboardInterrupt):
                wait_and_fetch(client, job["id"], tmp_path / "r.png", "png", quiet=True)
        finally:
            client.jobs.__class__.wait = original  # type: ignore[method-assign]
        assert f"segserve job wait {job['id']}" in capsys.readouterr().err
        resumed = segserve("job", "wait", job["id"], "--url", base, "-o", str(tmp_path / "r.png"))
        assert resumed.returncode == 0, resumed.stderr
        assert np.array_equal(read_png((tmp_path / "r.png").read_bytes()), expected_grey(pixels))
        status = segserve("job", "status", job["id"], "--url", base)
        assert '"state": "succeeded"' in status.stdout
        # The library: the result as a class map and as JSON; a failed job raises.
        assert np.array_equal(client.jobs.result(job["id"]), expected_grey(pixels))
        assert client.jobs.result(job["id"], "json")["width"] == 210
        bad = client.jobs.submit(png_bytes(pixels)[:-40], "tiny-grey")  # truncated after the header
        with pytest.raises(JobFailed, match="failed"):
            client.jobs.wait(bad["id"], progress=False, poll_s=0.1)
        assert segserve("job", "cancel", job["id"], "--url", base).returncode == 0
        assert segserve("job", "status", job["id"], "--url", base).returncode == 1


def test_which_files_need_a_job(tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    small.write_bytes(png_bytes(grey_pattern(20, 20)))
    assert not needs_job(small)
    huge = tmp_path / "huge.png"  # declares 9000 x 9000 in a few KB
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buffer, "PNG")
    huge.write_bytes(buffer.getvalue())
    assert needs_job(huge)
