"""The model directory: Triton's NAME/VERSION/model.onnx layout beside flat files, several
versions of a model, and precision variants (SEG_PRECISION)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from app.config import Device, Settings
from app.errors import ModelNotFound
from app.inference.registry import ModelRegistry
from app.inference.repository import read_metadata, version_key
from app.inference.session import CPU, CUDA
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready
from tests.app.tiny_models import spec_for, write_model


def repo_model(
    root: Path, name: str, version: str, kind: str = "threshold", inside: str = "", **spec: Any
) -> Path:
    """`root/name/version/model[.precision].onnx`; the embedded spec says version 0.0.1 (and
    the name `inside` when given)."""
    folder = root / name / version
    folder.mkdir(parents=True, exist_ok=True)
    precision = spec.get("precision")
    file = f"model.{precision}.onnx" if precision else "model.onnx"
    return write_model(folder, kind, name, spec=spec_for(kind, inside or name, **spec), file=file)


def load(directory: Path, **settings: Any) -> ModelRegistry:
    registry = ModelRegistry(
        Settings(model_dir=directory, intra_op_threads=1, **{"device": Device.cpu, **settings})
    )
    registry.discover()
    registry.load_all()
    return registry


def labels_of(registry: ModelRegistry, name: str, version: str | None = None) -> np.ndarray:
    entry = registry.get(name, version)
    x = -np.ones((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = 1.0  # one bright pixel among dark: `threshold` and `box` differ on it
    return entry.run("labels", x, batchable=False)


def test_versions_order_numerically_dot_by_dot() -> None:
    ordered = ["1", "2", "10", "10.1", "10.1.2", "10.2", "10.10", "10.x"]
    assert sorted(reversed(ordered), key=version_key) == ordered


def test_metadata_is_read_without_loading_the_graph(tmp_path: Path) -> None:
    path = write_model(tmp_path, "box", "m")
    expected = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert read_metadata(path) == expected and expected
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_metadata(tmp_path / "empty.onnx")
    (tmp_path / "cut.onnx").write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="truncated"):
        read_metadata(tmp_path / "cut.onnx")


def test_repository_layout_and_flat_files_serve_side_by_side(tmp_path: Path) -> None:
    repo_model(tmp_path, "seg", "2")
    repo_model(tmp_path, "seg", "10", kind="box")
    repo_model(tmp_path, ".hidden", "1", inside="hidden")  # skipped: a copy in progress
    (tmp_path / "seg" / "3").mkdir()  # no model file: not a version
    (tmp_path / "seg" / "10" / "config.pbtxt").write_text("ignored")
    write_model(tmp_path, "threshold", "flat")
    registry = load(tmp_path)
    assert registry.ready, registry.statuses
    assert [e.version for e in registry.versions("seg")] == ["10", "2"]  # folder names win
    assert registry.get("seg").version == "10" and registry.get("seg").file == "seg/10/model.onnx"
    assert registry.get("flat").version == "0.0.1"
    assert labels_of(registry, "seg", "2")[0, 1, 1] == 0  # threshold: the pixel alone
    assert labels_of(registry, "seg")[0, 1, 1] == 1  # box: 1 bright among 9 dark
    with pytest.raises(ModelNotFound, match="version '3'"):
        registry.get("seg", "3")
    assert [e.name for e in registry.served()] == ["flat", "seg"]
    assert len(registry.all_served()) == 3


def test_bad_repository_files_fail_alone(tmp_path: Path) -> None:
    repo_model(tmp_path, "good", "1")
    repo_model(tmp_path, "Bad_Name", "1", inside="bad")  # the folder is the name: invalid
    folder = tmp_path / "liar" / "1"
    folder.mkdir(parents=True)
    write_model(folder, "threshold", "liar", file="model.int8.onnx")  # says fp32 inside
    registry = load(tmp_path)
    found = {s.file: (s.state.value, s.reason or "") for s in registry.statuses}
    assert found["good/1/model.onnx"] == ("ready", "")
    assert found["Bad_Name/1/model.onnx"][0] == "failed"
    assert "pattern" in found["Bad_Name/1/model.onnx"][1]
    assert found["liar/1/model.int8.onnx"] == (
        "failed",
        "the file name says int8 but its metadata says precision 'fp32'",
    )
    assert not registry.ready


def variants(directory: Path) -> None:
    """`tiny` in fp32 (threshold), int8 (box) and, in the repository, `rep` 1 likewise."""
    write_model(directory, "threshold", "tiny")
    write_model(
        directory, "box", "tiny", spec=spec_for("box", "tiny", precision="int8"),
        file="tiny.int8.onnx",
    )  # fmt: skip
    repo_model(directory, "rep", "1")
    repo_model(directory, "rep", "1", kind="box", precision="int8")


@pytest.mark.parametrize(
    ("precision", "served", "note"),
    [
        ("auto", "int8", None),  # the CPU provider: int8 when there is one
        ("int8", "int8", None),
        ("fp32", "fp32", None),
        ("fp16", "fp32", "SEG_PRECISION=fp16: no fp16 variant; serving fp32"),
    ],
)
def test_precision_picks_one_variant(
    tmp_path: Path, precision: str, served: str, note: str | None
) -> None:
    variants(tmp_path)
    registry = load(tmp_path, precision=precision)
    assert registry.ready, registry.statuses
    for name in ("tiny", "rep"):
        entry = registry.get(name)
        assert (entry.spec.precision, entry.note, entry.variants) == (
            served, note, ["fp32", "int8"]
        )  # fmt: skip
        assert labels_of(registry, name)[0, 1, 1] == (1 if served == "int8" else 0)
    statuses = {s.name: (s.precision, s.note) for s in registry.statuses}
    assert statuses == {"tiny": (served, note), "rep": (served, note)}


def test_the_same_precision_twice_is_a_duplicate(tmp_path: Path) -> None:
    variants(tmp_path)
    write_model(
        tmp_path, "box", "tiny", spec=spec_for("box", "tiny", precision="int8"),
        file="tiny.zz.onnx",
    )  # fmt: skip
    registry = load(tmp_path)
    (reason,) = [s.reason for s in registry.statuses if s.file == "tiny.zz.onnx"]
    assert reason is not None and "already serves" in reason and "int8" in reason


def test_auto_takes_fp16_on_cuda_and_the_cpu_variant_when_cuda_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_model(tmp_path, "threshold", "tiny")
    for precision, kind in (("fp16", "box"), ("int8", "threshold")):
        write_model(
            tmp_path, kind, "tiny", spec=spec_for(kind, "tiny", precision=precision),
            file=f"tiny.{precision}.onnx",
        )  # fmt: skip
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    opened: list[str] = []

    def falls_back(path: str, options: ort.SessionOptions, providers: list[object]) -> Any:
        opened.append(Path(path).name)
        return ort.InferenceSession(path, options, providers=[CPU])

    registry = ModelRegistry(
        Settings(model_dir=tmp_path, intra_op_threads=1, device=Device.auto), falls_back
    )
    registry.discover()
    registry.load_all()
    assert opened == ["tiny.fp16.onnx", "tiny.int8.onnx"]  # asked for CUDA, ran on the CPU
    assert registry.get("tiny").spec.precision == "int8"
    registry.reload()  # nothing changed: nothing is opened again
    assert opened == ["tiny.fp16.onnx", "tiny.int8.onnx"]


def test_version_routes_over_v1_and_v2(tmp_path: Path) -> None:
    repo_model(tmp_path, "seg", "1")
    repo_model(tmp_path, "seg", "2", kind="box")
    settings = Settings(model_dir=tmp_path, intra_op_threads=1, device=Device.cpu)
    image = np.zeros((3, 3), np.uint8)
    image[1, 1] = 255
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        models = client.get("/v1/models").json()["models"]
        assert [(m["spec"]["version"], m["default"]) for m in models] == [("2", True), ("1", False)]
        assert models[0]["precision"] == "fp32" and models[0]["file"] == "seg/2/model.onnx"
        one = client.get("/v1/models/seg/versions/1").json()
        assert (one["spec"]["version"], one["default"]) == ("1", False)
        assert client.get("/v1/models/seg/versions/9").status_code == 404
        for path, version, label in (
            ("/v1/models/seg/segment", "2", 1),
            ("/v1/models/seg/versions/1/segment", "1", 0),
            ("/v1/models/seg/versions/2/segment", "2", 1),
        ):
            answer = client.post(
                f"{path}?format=json&encoding=list",
                content=png_bytes(image),
                headers={"content-type": "image/png"},
            )
            assert answer.status_code == 200, answer.text
            assert answer.headers["X-Model-Version"] == version
            assert answer.json()["class_map"]["rows"][1][1] == label
        missing = client.post(
            "/v1/models/seg/versions/9/segment",
            content=png_bytes(image),
            headers={"content-type": "image/png"},
        )
        assert missing.status_code == 404 and "version '9'" in missing.json()["detail"]
        meta = client.get("/v2/models/seg").json()
        assert meta["versions"] == ["2", "1"]
        assert meta["parameters"]["precision"] == "fp32"
        assert meta["parameters"]["version"] == "2"
        assert client.get("/v2/models/seg/versions/1").json()["parameters"]["version"] == "1"
        assert client.get("/v2/models/seg/versions/1/ready").json() == {
            "name": "seg",
            "ready": True,
        }
        assert client.get("/v2/models/seg/versions/7/ready").status_code == 404
        body = {
            "inputs": [
                {"name": "image", "datatype": "UINT8", "shape": [1, 3, 3, 1],
                 "data": image.ravel().tolist()}
            ]
        }  # fmt: skip
        for version, label in (("1", 0), ("2", 1)):
            answer = client.post(f"/v2/models/seg/versions/{version}/infer", json=body).json()
            assert answer["model_version"] == version
            assert answer["outputs"][0]["data"][4] == label
        health = client.get("/health/ready").json()["models"]
        assert {(m["version"], m["precision"], m["state"]) for m in health} == {
            ("1", "fp32", "ready"),
            ("2", "fp32", "ready"),
        }


def test_grpc_model_version_picks_one(tmp_path: Path) -> None:
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    from tests.app.conftest import free_port

    repo_model(tmp_path, "seg", "1")
    repo_model(tmp_path, "seg", "2", kind="box")
    port = free_port()
    settings = Settings(model_dir=tmp_path, intra_op_threads=1, device=Device.cpu, grpc_port=port)
    pixels = np.zeros((1, 3, 3, 1), np.uint8)
    pixels[0, 1, 1, 0] = 255
    with (
        TestClient(create_app(settings)) as http,
        triton.InferenceServerClient(f"127.0.0.1:{port}") as client,
    ):
        wait_ready(http)
        assert client.get_model_metadata("seg", as_json=True)["versions"] == ["2", "1"]
        assert client.is_model_ready("seg", "1")
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            client.is_model_ready("seg", "5")
        for version, label, answered in (("", 1, "2"), ("1", 0, "1"), ("2", 1, "2")):
            image = triton.InferInput("image", list(pixels.shape), "UINT8")
            image.set_data_from_numpy(pixels)
            result = client.infer("seg", [image], model_version=version)
            assert result.get_response().model_version == answered
            assert result.as_numpy("labels")[0, 1, 1] == label
        with pytest.raises(InferenceServerException, match="version '5'"):
            client.infer("seg", [image], model_version="5")
