"""Reloading the model directory: SEG_MODEL_POLL_S and the repository API
(/v2/repository/...). New versions are warm before they serve, requests in flight finish on
the old one, and a broken file is reported while what it would replace keeps serving."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Device, Settings
from app.errors import ModelNotFound
from app.inference.registry import ModelRegistry, ModelState
from app.main import create_app
from tests.app.conftest import png_bytes, running_server, wait_ready
from tests.app.test_repository import labels_of, repo_model

BRIGHT_DOT = np.zeros((3, 3), np.uint8)
BRIGHT_DOT[1, 1] = 255  # `threshold` says class 0 at the centre, `box` class 1


def registry_for(directory: Path, **settings: object) -> ModelRegistry:
    registry = ModelRegistry(
        Settings(model_dir=directory, intra_op_threads=1, device=Device.cpu, **settings)  # type: ignore[arg-type]
    )
    registry.discover()
    registry.load_all()
    return registry


def touch_later(path: Path) -> None:
    """A rewrite the fingerprint sees even within one mtime tick."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_reload_adds_changes_and_removes_versions(tmp_path: Path) -> None:
    repo_model(tmp_path, "seg", "1")
    registry = registry_for(tmp_path)
    first = registry.get("seg")
    repo_model(tmp_path, "seg", "2", kind="box")
    registry.reload()
    assert registry.get("seg").version == "2" and registry.get("seg", "1") is first  # unchanged
    assert labels_of(registry, "seg")[0, 1, 1] == 1
    repo_model(tmp_path, "seg", "2")  # version 2 rewritten: threshold now
    touch_later(tmp_path / "seg" / "2" / "model.onnx")
    registry.reload()
    assert labels_of(registry, "seg")[0, 1, 1] == 0
    shutil.rmtree(tmp_path / "seg" / "1")
    registry.reload()
    assert [e.version for e in registry.versions("seg")] == ["2"]
    with pytest.raises(ModelNotFound):
        registry.get("seg", "1")
    assert registry.ready


def test_a_broken_new_version_is_reported_while_the_old_one_serves(tmp_path: Path) -> None:
    repo_model(tmp_path, "seg", "1")
    registry = registry_for(tmp_path)
    (tmp_path / "seg" / "2").mkdir()
    (tmp_path / "seg" / "2" / "model.onnx").write_bytes(b"\x08\x07garbage")
    repo_model(tmp_path, "seg", "1", kind="box")  # version 1 changed, and beside it
    path = tmp_path / "seg" / "1" / "model.int8.onnx"
    path.write_bytes(b"")  # an empty int8 variant fails alone
    registry.reload()
    assert registry.get("seg").version == "1" and labels_of(registry, "seg")[0, 1, 1] == 1
    failed = {s.file: s.reason for s in registry.statuses if s.state is ModelState.failed}
    assert failed == {
        "seg/2/model.onnx": "not an ONNX model (not a protobuf message)",
        "seg/1/model.int8.onnx": "empty file",
    }
    assert registry.ready  # what failed on a reload replaced nothing that served


def test_requests_holding_a_replaced_model_finish_on_it(tmp_path: Path) -> None:
    repo_model(tmp_path, "seg", "1")
    registry = registry_for(tmp_path, batch_max_size=4)
    old = registry.get("seg")
    assert old.batcher is not None
    repo_model(tmp_path, "seg", "1", kind="box")
    touch_later(tmp_path / "seg" / "1" / "model.onnx")
    registry.reload()
    assert old.batcher.closed and registry.get("seg") is not old
    x = -np.ones((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = 1.0
    assert old.run("labels", x)[0, 1, 1] == 0  # the old graph, run directly
    assert registry.get("seg").run("labels", x)[0, 1, 1] == 1
    registry.close()


def test_repository_api_is_off_without_admin_keys(tmp_path: Path) -> None:
    repo_model(tmp_path, "seg", "1")
    with TestClient(create_app(Settings(model_dir=tmp_path, intra_op_threads=1))) as client:
        wait_ready(client)
        answer = client.post("/v2/repository/index", headers={"authorization": "Bearer k"})
        assert answer.status_code == 404 and "SEG_ADMIN_KEYS" in answer.json()["error"]


def test_repository_api_index_load_and_unload(tmp_path: Path) -> None:
    repo_model(tmp_path, "seg", "1")
    settings = Settings(
        model_dir=tmp_path, intra_op_threads=1, device=Device.cpu, admin_keys="admin",
        api_keys="user",
    )  # fmt: skip
    admin = {"authorization": "Bearer admin"}
    user = {"authorization": "Bearer user"}
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert client.post("/v2/repository/index").status_code == 401
        assert client.post("/v2/repository/index", headers=user).status_code == 401
        assert client.post("/v2/repository/index", headers=admin).json() == [
            {"name": "seg", "version": "1", "state": "READY", "reason": ""}
        ]
        repo_model(tmp_path, "seg", "2", kind="box")
        index = client.post("/v2/repository/index", headers=admin).json()
        assert index[1] == {"name": "seg", "version": "2", "state": "UNAVAILABLE",
                            "reason": "not loaded"}  # fmt: skip
        assert client.post("/v2/repository/index", headers=admin, json={"ready": True}).json() == [
            index[0]
        ]
        assert client.post("/v2/repository/models/seg/load", headers=admin).json() == {}
        assert client.get("/v2/models/seg", headers=user).json()["versions"] == ["2", "1"]
        assert client.post("/v2/repository/models/seg/unload", headers=admin).json() == {}
        assert client.get("/v2/models/seg", headers=user).status_code == 404
        assert client.get("/health/ready").status_code == 503  # nothing serves
        assert client.post("/v2/repository/index", headers=admin).json()[0]["reason"] == (
            "unloaded"
        )
        assert client.post("/v2/repository/models/seg/load", headers=admin).json() == {}
        assert client.get("/v1/models/seg", headers=user).json()["spec"]["version"] == "2"
        missing = client.post("/v2/repository/models/nope/load", headers=admin)
        assert missing.status_code == 404 and "nope" in missing.json()["error"]
        (tmp_path / "seg" / "3").mkdir()
        (tmp_path / "seg" / "3" / "model.onnx").write_bytes(b"")
        broken = client.post("/v2/repository/models/seg/load", headers=admin)
        assert broken.status_code == 400
        assert broken.json()["error"] == (
            "model 'seg' failed to load: seg/3/model.onnx: empty file"
        )
        assert client.get("/v1/models/seg", headers=user).json()["spec"]["version"] == "2"
        assert client.get("/health/ready").status_code == 200


def test_version_swap_under_load_loses_no_request(tmp_path: Path) -> None:
    """A real server polling its directory every 0.1 s while four threads post: version 2
    is copied in (under a hidden name, then renamed), then version 1 removed, then a
    broken version 3 added. Every request succeeds; answers move from 1 to 2."""
    models = tmp_path / "models"
    repo_model(models, "seg", "1")
    staging = tmp_path / "staging"
    repo_model(staging, "seg", "2", kind="box")
    body = png_bytes(BRIGHT_DOT)
    seen: list[tuple[int, str, int]] = []
    stop = threading.Event()
    with running_server(models, SEG_MODEL_POLL_S="0.1") as (base, _):

        def post() -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                while not stop.is_set():
                    answer = http.post(
                        "/v1/models/seg/segment?format=json&encoding=list",
                        content=body,
                        headers={"content-type": "image/png"},
                    )
                    label = answer.json()["class_map"]["rows"][1][1] if answer.is_success else -1
                    seen.append(
                        (answer.status_code, answer.headers.get("x-model-version", ""), label)
                    )

        threads = [threading.Thread(target=post) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(seen) >= 8)  # version 1 answers first
            shutil.copytree(staging / "seg" / "2", models / "seg" / ".2")
            (models / "seg" / ".2").rename(models / "seg" / "2")
            wait_for(lambda: seen[-1][1] == "2" if seen else False)
            shutil.rmtree(models / "seg" / "1")
            (models / "seg" / "3").mkdir()
            (models / "seg" / "3" / "model.onnx").write_bytes(b"\x08\x07garbage")
            wait_for(lambda: "seg/3/model.onnx" in httpx.get(f"{base}/health/ready").text)
            time.sleep(0.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        ready = httpx.get(f"{base}/health/ready")
        listed = httpx.get(f"{base}/v1/models").json()["models"]
    assert ready.status_code == 200
    assert {m["file"]: m["state"] for m in ready.json()["models"]} == {
        "seg/2/model.onnx": "ready",
        "seg/3/model.onnx": "failed",
    }
    assert [m["spec"]["version"] for m in listed] == ["2"]
    assert {status for status, _, _ in seen} == {200}, [s for s in seen if s[0] != 200][:5]
    versions = [version for _, version, _ in seen]
    switch = versions.index("2")
    assert set(versions[:switch]) == {"1"} and set(versions[switch:]) <= {"1", "2"}
    assert all(label == (0 if v == "1" else 1) for _, v, label in seen)
    assert len(seen) > 20


def wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_readiness_returns_once_a_file_that_failed_at_startup_is_fixed_or_gone(
    tmp_path: Path,
) -> None:
    repo_model(tmp_path, "seg", "1")
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage")
    registry = registry_for(tmp_path)
    assert not registry.ready  # a file that failed at startup holds readiness back
    registry.reload()
    assert not registry.ready  # unchanged: still failed, still counted
    (tmp_path / "broken.onnx").unlink()
    registry.reload()
    assert registry.ready and [s.file for s in registry.statuses] == ["seg/1/model.onnx"]
    assert Settings(model_poll_s="").model_poll_s is None  # type: ignore[arg-type]
