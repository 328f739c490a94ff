import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from app.config import Device, Settings
from app.errors import ModelNotFound, ModelNotReady
from app.inference.registry import ModelRegistry, ModelState, ModelStatus, public_reason
from app.inference.session import (
    CPU,
    CUDA,
    ProviderUnavailable,
    create_session,
    default_workers,
    requested_providers,
)
from app.spec import SPEC_KEY
from tests.app.tiny_models import spec_for, write_model


def load(directory: Path, device: Device = Device.cpu, **kwargs: object) -> ModelRegistry:
    registry = ModelRegistry(
        Settings(model_dir=directory, device=device, intra_op_threads=1), **kwargs
    )  # type: ignore[arg-type]
    registry.discover()
    registry.load_all()
    return registry


def states(registry: ModelRegistry) -> dict[str, tuple[str, str | None]]:
    return {e.file: (e.state.value, e.reason) for e in registry.statuses}


def test_good_models_load_warm_and_serve(tmp_path: Path) -> None:
    write_model(tmp_path, "threshold", "a")
    write_model(tmp_path, "brightest", "b")
    registry = load(tmp_path)
    assert registry.ready and registry.loaded.is_set()
    assert registry.get("a").providers == [CPU]
    with pytest.raises(ModelNotFound):
        registry.get("c")


def test_bad_files_fail_alone_with_reasons(tmp_path: Path) -> None:
    write_model(tmp_path, "threshold", "good")
    write_model(tmp_path, "threshold", "x", metadata={}, file="no-metadata.onnx")
    write_model(tmp_path, "threshold", "x", metadata={SPEC_KEY: "{not json"}, file="bad-json.onnx")
    write_model(
        tmp_path,
        "threshold",
        "x",
        metadata={SPEC_KEY: '{"name": "Bad Name!"}'},
        file="invalid.onnx",
    )
    write_model(tmp_path, "threshold", "good", file="zz-duplicate.onnx")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07this is not a protobuf model")
    # Metadata claims 3 input channels while the graph takes 1.
    write_model(
        tmp_path, "threshold", "x", spec=spec_for("brightest", "mismatch"), file="mismatch.onnx"
    )
    registry = load(tmp_path)
    found = states(registry)
    assert found["good.onnx"] == ("ready", None)
    assert not registry.ready
    reasons = {file: reason or "" for file, (state, reason) in found.items() if state == "failed"}
    assert set(reasons) == {
        "no-metadata.onnx",
        "bad-json.onnx",
        "invalid.onnx",
        "zz-duplicate.onnx",
        "corrupt.onnx",
        "mismatch.onnx",
    }
    assert "missing" in reasons["no-metadata.onnx"]
    assert "not valid JSON" in reasons["bad-json.onnx"]
    assert "already serves" in reasons["zz-duplicate.onnx"]
    assert "channels" in reasons["mismatch.onnx"]
    assert all(str(tmp_path) not in r for r in reasons.values())  # no paths leak to clients
    assert registry.get("good").status().state is ModelState.ready


def test_empty_and_missing_directories_are_not_ready(tmp_path: Path) -> None:
    empty = load(tmp_path)
    assert not empty.ready and "no *.onnx" in (empty.problem or "")
    missing = load(tmp_path / "nope")
    assert not missing.ready and "does not exist" in (missing.problem or "")


def test_loading_models_answer_503() -> None:
    registry = ModelRegistry(Settings(model_dir=Path("/nonexistent")))
    with pytest.raises(ModelNotReady, match="still loading"):
        registry.get("b")  # nothing read yet
    registry.statuses = [ModelStatus("a.onnx", "a", ModelState.loading, "1")]  # discovered
    with pytest.raises(ModelNotReady, match="loading"):
        registry.get("a")


def test_requested_providers() -> None:
    assert requested_providers(Device.cpu, [CUDA, CPU]) == [CPU]
    assert requested_providers(Device.auto, [CPU]) == [CPU]
    assert requested_providers(Device.auto, [CUDA, CPU]) == [CUDA, CPU]
    assert requested_providers(Device.cuda, [CPU]) == [CUDA, CPU]


def test_default_workers_follow_the_providers_in_use() -> None:
    assert default_workers([CPU]) == 1
    assert default_workers(set()) == 1
    assert default_workers([CUDA, CPU]) == 8


class FakeSession:
    """Stands in for a session that silently fell back to (or really got) some providers."""

    def __init__(self, providers: list[str]) -> None:
        self.providers = providers

    def get_providers(self) -> list[str]:
        return self.providers


def test_cuda_required_but_silently_on_cpu_is_an_error(tmp_path: Path) -> None:
    fallback = lambda path, options, providers: FakeSession([CPU])  # noqa: E731
    with pytest.raises(ProviderUnavailable, match="runs on CPUExecutionProvider"):
        create_session(tmp_path / "m.onnx", Device.cuda, 1, fallback, lambda: [CUDA, CPU])  # type: ignore[arg-type]
    _, active = create_session(tmp_path / "m.onnx", Device.auto, 1, fallback, lambda: [CUDA, CPU])  # type: ignore[arg-type]
    assert active == [CPU]
    real_gpu = lambda path, options, providers: FakeSession([CUDA, CPU])  # noqa: E731
    _, active = create_session(tmp_path / "m.onnx", Device.cuda, 1, real_gpu, lambda: [CUDA, CPU])  # type: ignore[arg-type]
    assert active == [CUDA, CPU]


def test_registry_marks_model_failed_when_cuda_is_required(tmp_path: Path) -> None:
    write_model(tmp_path, "threshold", "a")

    def cpu_only(
        path: str, options: ort.SessionOptions, providers: list[str]
    ) -> ort.InferenceSession:
        return ort.InferenceSession(path, options, providers=[CPU])  # what a GPU-less host gives

    registry = load(tmp_path, Device.cuda, factory=cpu_only)
    ((state, reason),) = states(registry).values()
    assert state == "failed" and "SEG_DEVICE=cuda" in (reason or "")


def test_the_cudnn_search_setting_reaches_the_cuda_provider(tmp_path: Path) -> None:
    write_model(tmp_path, "threshold", "a")
    asked: list[object] = []

    def recording(path: str, options: ort.SessionOptions, providers: list[object]) -> Any:
        asked.extend(providers)
        return ort.InferenceSession(path, options, providers=[CPU])

    settings = Settings(
        model_dir=tmp_path, device=Device.cuda, intra_op_threads=1, cudnn_algo_search="EXHAUSTIVE"
    )
    registry = ModelRegistry(settings, recording)  # type: ignore[arg-type]
    registry.discover()
    registry.load_all()
    assert asked == [(CUDA, {"cudnn_conv_algo_search": "EXHAUSTIVE"}), CPU]
    _, active = create_session(tmp_path / "a.onnx", Device.cpu, 1, recording)  # type: ignore[arg-type]
    assert asked[-1:] == [CPU] and active == [CPU]  # no options without CUDA


def test_a_fifo_named_onnx_fails_alone_and_later_models_load(tmp_path: Path) -> None:
    """Opening a FIFO blocks until someone writes to it: it used to hold the loader, and
    every later model stayed "loading" for good."""
    os.mkfifo(tmp_path / "a-fifo.onnx")
    (tmp_path / "b-dir.onnx").mkdir()
    write_model(tmp_path, "threshold", "c")
    registry = ModelRegistry(Settings(model_dir=tmp_path, device=Device.cpu, intra_op_threads=1))
    registry.discover()
    loader = threading.Thread(target=registry.load_all, daemon=True)
    loader.start()
    loader.join(timeout=20)
    assert not loader.is_alive(), states(registry)
    found = states(registry)
    assert found["c.onnx"] == ("ready", None)
    for name in ("a-fifo.onnx", "b-dir.onnx"):
        state, reason = found[name]
        assert state == "failed" and "not a regular file" in (reason or "")


def test_public_reasons_name_files_only_and_the_log_keeps_the_full_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reasons are shown without a key on /health/ready: no host directories and no
    onnxruntime source paths; the log has the full text."""
    import onnx

    from tests.app.tiny_models import build_graph

    model = build_graph("threshold")
    for key, value in spec_for("threshold", "future").to_metadata().items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    model.ir_version = 99  # onnxruntime's error names its own source file and C++ function
    onnx.save(model, str(tmp_path / "future.onnx"))
    with caplog.at_level(logging.ERROR, logger="segserve.registry"):
        registry = load(tmp_path)
    ((state, reason),) = states(registry).values()
    assert state == "failed" and reason is not None
    assert "IR version" in reason and "future.onnx" in reason
    assert "/" not in reason, reason
    assert "onnxruntime_src" not in reason and "::" not in reason, reason
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert str(tmp_path / "future.onnx") in logged and "onnxruntime" in logged


@pytest.mark.parametrize(
    ("message", "public"),
    [
        ("open /srv/models/x/y.data failed", "open y.data failed"),
        ("see /var/lib/thing/, then (/a/b.c)", "see thing, then (b.c)"),
        ("failed:/onnxruntime_src/a.cc:12 void onnxruntime::F(int) const oops", "failed: oops"),
        ("1/2 of the input; https://errors.pydantic.dev/2.9/v/x", "1/2 of the input; https://errors.pydantic.dev/2.9/v/x"),
    ],
)  # fmt: skip
def test_public_reason(message: str, public: str) -> None:
    assert public_reason(message, Path("/elsewhere/m.onnx")) == public


def test_worker_count_follows_the_providers_in_use_not_the_ones_asked_for(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime-gpu on a host without a GPU lists CUDA as available; sessions asked for
    CUDA run on CPU. The default worker count must be the CPU one: 1."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.app.conftest import wait_ready

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    asked: list[object] = []

    def falls_back(path: str, options: ort.SessionOptions, providers: list[object]) -> Any:
        asked.append(providers[0])
        return ort.InferenceSession(path, options, providers=[CPU])

    settings = Settings(model_dir=model_dir, device=Device.auto, intra_op_threads=1)
    with TestClient(create_app(settings, falls_back)) as client:  # type: ignore[arg-type]
        wait_ready(client)
        assert asked and all(a == (CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}) for a in asked)
        executor = client.app.state.executor  # type: ignore[attr-defined]
        gate = threading.Barrier(2, timeout=0.5)
        names: set[str] = set()

        def job() -> None:
            names.add(threading.current_thread().name)
            with contextlib.suppress(threading.BrokenBarrierError):
                gate.wait()  # two at once only if there are two workers

        for future in [executor.submit(job) for _ in range(4)]:
            future.result(timeout=10)
        assert len(names) == 1, names
