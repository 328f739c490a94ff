"""`segserve segment | models | health` against a live server process."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from tests.app.conftest import free_port, png_bytes, running_server
from tests.app.test_api import expected_grey, grey_pattern, read_png


def segserve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "app.cli", *args]
    environment = {**os.environ, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)


def test_segment_folder_writes_maps_and_fails_on_the_bad_file(
    model_dir: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    patterns = {f"img{i}": grey_pattern(20 + i, 31) for i in range(4)}
    for stem, pixels in patterns.items():
        (images / f"{stem}.png").write_bytes(png_bytes(pixels))
    (images / "broken.png").write_bytes(b"this is not a png")
    (images / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    with running_server(model_dir) as (base, _):
        result = segserve(
            "segment", str(images), "--model", "tiny-grey", "--url", base,
            "-o", str(out), "--concurrency", "3",
        )  # fmt: skip
        as_json = segserve(
            "segment", str(images / "img0.png"), "--model", "tiny-grey", "--url", base,
            "-o", str(out), "--format", "json",
        )  # fmt: skip
    assert result.returncode == 1
    assert "4 of 5 images segmented" in result.stdout
    assert "FAILED" in result.stderr and "broken.png" in result.stderr
    assert "400" in result.stderr  # the problem+json status and title reach the user
    assert "5/5" in result.stderr and "1 failed" in result.stderr  # the progress bar
    for stem, pixels in patterns.items():
        assert np.array_equal(read_png((out / f"{stem}.png").read_bytes()), expected_grey(pixels))
    assert as_json.returncode == 0
    assert json.loads((out / "img0.json").read_text())["model"]["name"] == "tiny-grey"


def test_segment_unknown_model_and_empty_input_fail(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes(grey_pattern(8, 8)))
    with running_server(model_dir) as (base, _):
        unknown = segserve("segment", str(tmp_path / "a.png"), "--model", "nope", "--url", base,
                           "-o", str(tmp_path / "o"))  # fmt: skip
    assert unknown.returncode == 1 and "404" in unknown.stderr
    empty = segserve("segment", str(tmp_path / "o"), "--model", "tiny-grey")
    assert empty.returncode == 2
    started = time.monotonic()
    nowhere = f"http://127.0.0.1:{free_port()}"
    down = segserve("segment", str(tmp_path / "a.png"), "--model", "tiny-grey",
                    "--url", nowhere, "-o", str(tmp_path / "down"))  # fmt: skip
    assert down.returncode == 1 and "Connection refused" in down.stderr
    assert time.monotonic() - started < 20  # one refused check, not retries per image
    assert not (tmp_path / "down").exists()


def test_segment_several_files_with_an_api_key_from_the_environment(
    model_dir: Path, tmp_path: Path
) -> None:
    first, second = tmp_path / "a.png", tmp_path / "b.tif"
    first.write_bytes(png_bytes(grey_pattern(16, 24)))
    second.write_bytes(png_bytes(grey_pattern(24, 16)))  # a PNG named .tif: the server sniffs
    out = tmp_path / "out"
    with running_server(model_dir, SEG_API_KEYS="k-one") as (base, _):
        keyed = segserve("segment", str(first), str(second), "--model", "tiny-grey", "--url", base,
                         "-o", str(out), "--format", "confidence", "-q",
                         env={"SEGSERVE_API_KEY": "k-one"})  # fmt: skip
        unkeyed = segserve("segment", str(first), "--model", "tiny-grey", "--url", base,
                           "-o", str(out), "-q")  # fmt: skip
    assert keyed.returncode == 0, keyed.stderr
    assert keyed.stderr == ""  # -q: no progress bar
    assert read_png((out / "a.confidence.png").read_bytes()).shape == (16, 24)
    assert read_png((out / "b.confidence.png").read_bytes()).shape == (24, 16)
    assert unkeyed.returncode == 1 and "401" in unkeyed.stderr and "API key" in unkeyed.stderr


def test_segment_refuses_two_inputs_with_one_output_name(tmp_path: Path) -> None:
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.png").write_bytes(png_bytes(grey_pattern(8, 8)))
    both = segserve("segment", str(tmp_path / "x"), str(tmp_path / "y"), "--model", "m",
                    "-o", str(tmp_path / "out"))  # fmt: skip
    assert both.returncode == 2 and "would both be written to" in both.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was sent or written


def test_models_and_health_exit_codes(model_dir: Path) -> None:
    with running_server(model_dir) as (base, _):
        models = segserve("models", "--url", base)
        health = segserve("health", "--url", base)
    assert models.returncode == 0
    assert "tiny-grey" in models.stdout and "CPUExecutionProvider" in models.stdout
    assert health.returncode == 0 and health.stdout.startswith("ready")
    down = segserve("health", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert down.returncode == 1 and "unreachable" in down.stderr


def test_health_is_1_and_names_the_reason_while_a_model_failed(model_dir: Path) -> None:
    (model_dir / "corrupt.onnx").write_bytes(b"not onnx")
    port = free_port()
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port),
               "--model-dir", str(model_dir), "--device", "cpu"]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # live, and every model settled (ready or failed)
            try:
                report = httpx.get(f"{base}/health/ready", timeout=1).json()
                if all(m["state"] != "loading" for m in report["models"]):
                    break
            except (httpx.TransportError, ValueError):
                pass
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.2)
        health = segserve("health", "--url", base)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert health.returncode == 1
    assert "not ready (503)" in health.stdout
    assert "corrupt: failed" in health.stdout and "tiny-grey: ready" in health.stdout
