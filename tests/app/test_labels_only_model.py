"""A model that answers class labels only (its argmax inside the graph), imported with
`segserve import` and served: its class maps equal onnxruntime's answer on the original
file over /v1 (one pass and tiled), /v2, gRPC and jobs; every other class-map format
answers; what needs per-class scores (confidence, tta, the v2 `probabilities` output) is a
422 scores-unavailable problem, never a 500; /v1/models and the v2 metadata show no
probabilities."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from app.cli import main
from app.config import Device, Settings
from app.inference.pipeline import normalise
from app.main import create_app
from app.spec import ModelSpec
from tests.app.conftest import free_port, png_bytes, wait_ready

CLASSES = ["sky", "road", "tree", "car"]
SCORES_TYPE = "https://segserve.dev/problems/scores-unavailable"


@dataclass(frozen=True)
class Source:
    """A labels-only source model and the same graph answering its scores (the reference)."""

    name: str
    kernel: int  # 3: a 3x3 convolution at full resolution; 4: 4x4 patches (output stride 4)
    keepdims: int  # 1: labels (N, 1, H, W); 0: (N, H, W)
    dtype: int  # the labels' element type
    flags: tuple[str, ...]  # `segserve import` flags beside --classes


SOURCES = [
    Source("labels-conv", 3, 1, TensorProto.INT64, ("--output-kind", "labels")),
    # No --output-kind: its only output holds labels, which the probe finds out.
    Source("labels-strided", 4, 0, TensorProto.INT32, ("--size-multiple", "4")),
]


def write_source(source: Source, path: Path, scores: bool = False) -> Path:
    """The convolution to len(CLASSES) classes and its argmax (or, `scores`, the scores)."""
    k = source.kernel
    weight = np.random.default_rng(k).normal(size=(len(CLASSES), 3, k, k)).astype(np.float32)
    pads, strides = ([1] * 4, [1, 1]) if k == 3 else ([0] * 4, [k, k])
    nodes = [
        helper.make_node(
            "Conv", ["x", "w"], ["conv"], kernel_shape=[k, k], pads=pads, strides=strides
        )
    ]
    if scores:
        nodes.append(helper.make_node("Identity", ["conv"], ["scores"]))
        output = helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)
    else:
        argmax = "labels" if source.dtype == TensorProto.INT64 else "argmax"
        nodes.append(
            helper.make_node("ArgMax", ["conv"], [argmax], axis=1, keepdims=source.keepdims)
        )
        if argmax != "labels":
            nodes.append(helper.make_node("Cast", [argmax], ["labels"], to=source.dtype))
        output = helper.make_tensor_value_info("labels", source.dtype, None)
    graph = helper.make_graph(
        nodes,
        "labels-only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [output],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, path)
    return path


@dataclass
class Imported:
    sources: Path
    repo: Path
    specs: dict[str, ModelSpec]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    sources, repo = tmp_path_factory.mktemp("sources"), tmp_path_factory.mktemp("repo")
    specs = {}
    for source in SOURCES:
        path = write_source(source, sources / f"{source.name}.onnx")
        write_source(source, sources / f"{source.name}.scores.onnx", scores=True)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(
                ["import", str(path), "--repo", str(repo), "--name", source.name,
                 "--classes", ",".join(CLASSES), "--tile-size", "64", "--tile-overlap", "8",
                 *source.flags]
            )  # fmt: skip
        assert code == 0
        specs[source.name] = ModelSpec.model_validate(json.loads(printed.getvalue()))
    return Imported(sources, repo, specs)


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def client(
    imported: Imported, grpc_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=imported.repo,
        device=Device.cpu,
        intra_op_threads=1,
        whole_image_max_pixels=96 * 160,  # larger images are tiled (64-pixel tiles)
        job_dir=tmp_path_factory.mktemp("jobs"),
        grpc_port=grpc_port,
    )
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client, timeout=60)
        yield test_client


def picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """RGB blocks with gradients, so the class map has regions and edges."""
    y, x = np.mgrid[0:height, 0:width]
    blocks = np.random.default_rng(seed).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3))
    pixels: np.ndarray = blocks[y // 8, x // 8] // 2 + np.stack([x, y, x + y], -1) % 128
    return pixels.astype(np.uint8)


def assert_original_map(imported: Imported, name: str, pixels: np.ndarray, got: np.ndarray) -> None:
    """`got` is onnxruntime's class map of the original file on the same pixels (the
    service's normalisation; a strided map upsampled by nearest neighbour), except where
    the original's top two scores tie within float noise."""
    spec = imported.specs[name]
    x = normalise(np.ascontiguousarray(pixels.transpose(2, 0, 1)), spec)[None]
    session = ort.InferenceSession(
        str(imported.sources / f"{name}.onnx"), providers=["CPUExecutionProvider"]
    )
    (raw,) = session.run(None, {"x": x})
    labels = raw.reshape(1, *raw.shape[-2:])  # (1, 1, h, w) or (1, h, w)
    scores_session = ort.InferenceSession(
        str(imported.sources / f"{name}.scores.onnx"), providers=["CPUExecutionProvider"]
    )
    scores = scores_session.run(None, {"x": x})[0][0]
    np.testing.assert_array_equal(labels[0], scores.argmax(0))  # the reference is sound
    top2 = np.sort(scores, axis=0)[-2:]
    tie = (top2[1] - top2[0]) < 1e-4
    height, width = pixels.shape[:2]
    rows = np.arange(height) * labels.shape[1] // height  # nearest, as torch's default
    cols = np.arange(width) * labels.shape[2] // width
    want = labels[0][rows[:, None], cols[None, :]]
    differ = got != want
    assert got.shape == (height, width) and got.dtype == np.uint8
    assert not (differ & ~tie[rows[:, None], cols[None, :]]).any(), f"{differ.mean():.2%} differ"


def segment(client: TestClient, name: str, pixels: np.ndarray, query: str = "") -> Any:
    return client.post(
        f"/v1/models/{name}/segment{query}",
        content=png_bytes(pixels),
        headers={"content-type": "image/png"},
    )


def png_map(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def v2_request(client: TestClient, name: str, batch: np.ndarray, outputs: list[str]) -> Any:
    image = triton.InferInput("image", list(batch.shape), "UINT8")
    image.set_data_from_numpy(batch)
    wanted = [triton.InferRequestedOutput(o) for o in outputs]
    body, json_size = triton.InferenceServerClient.generate_request_body([image], wanted)
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    return client.post(f"/v2/models/{name}/infer", content=body, headers=headers)


def test_imported_as_labels_only(imported: Imported) -> None:
    for source in SOURCES:
        spec = imported.specs[source.name]
        assert spec.logits_output is None and spec.labels_output == "labels"
        assert not spec.has_scores and spec.classes == CLASSES
        assert "holds class labels only" in spec.description
        model = onnx.load(str(imported.repo / source.name / "1" / "model.onnx"))
        assert [o.name for o in model.graph.output] == ["labels"]
    assert "output stride 4" in imported.specs["labels-strided"].description
    assert "nearest neighbour" in imported.specs["labels-strided"].description


@pytest.mark.parametrize("name", [s.name for s in SOURCES])
def test_v1_one_pass_and_tiled_equal_the_original(
    name: str, imported: Imported, client: TestClient
) -> None:
    pixels = picture(96, 160)
    one = segment(client, name, pixels, "?tiling=off")
    assert one.headers["x-tiles"] == "1"
    assert_original_map(imported, name, pixels, png_map(one))
    tiled = segment(client, name, pixels, "?tiling=on&tile_size=64&tile_overlap=8")
    assert int(tiled.headers["x-tiles"]) > 1
    assert_original_map(imported, name, pixels, png_map(tiled))


@pytest.mark.parametrize("name", [s.name for s in SOURCES])
def test_v2_and_grpc_labels_equal_the_original(
    name: str, imported: Imported, client: TestClient, grpc_port: int
) -> None:
    pixels = picture(144, 160, seed=1)  # above whole_image_max_pixels: tiled
    batch = np.stack([pixels, pixels[::-1].copy()])
    response = v2_request(client, name, batch, ["labels"])
    assert response.status_code == 200, response.text
    length = response.headers.get("Inference-Header-Content-Length")
    result = triton.InferResult.from_response_body(
        response.content, header_length=int(length) if length else None
    )
    labels = result.as_numpy("labels")
    assert labels.shape == (2, 144, 160)
    assert_original_map(imported, name, pixels, labels[0])
    assert_original_map(imported, name, batch[1], labels[1])
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}") as grpc_client:
        tensor = triton_grpc.InferInput("image", list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        answer = grpc_client.infer(name, [tensor], client_timeout=60)
        np.testing.assert_array_equal(answer.as_numpy("labels"), labels)
        metadata = grpc_client.get_model_metadata(name, as_json=True)
        assert [o["name"] for o in metadata["outputs"]] == ["labels"]
        wanted = [triton_grpc.InferRequestedOutput("probabilities")]
        with pytest.raises(Exception, match="answers class labels only") as caught:
            grpc_client.infer(name, [tensor], outputs=wanted, client_timeout=60)
        assert "INVALID_ARGUMENT" in str(caught.value)


def test_every_class_map_format_answers(client: TestClient) -> None:
    pixels = picture(40, 56, seed=2)
    expected = png_map(segment(client, "labels-conv", pixels))
    body = segment(client, "labels-conv", pixels, "?format=json&encoding=list").json()
    np.testing.assert_array_equal(np.asarray(body["class_map"]["rows"]), expected)
    overlay = png_map(segment(client, "labels-conv", pixels, "?format=overlay"))
    assert overlay.shape == (40, 56, 3)
    for fmt in ("coco", "geojson"):
        response = segment(client, "labels-conv", pixels, f"?format={fmt}")
        assert response.status_code == 200, response.text
    task = {
        "data": {"image": "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode()}
    }
    predicted = client.post("/labelstudio/labels-conv/predict", json={"tasks": [task]})
    assert predicted.status_code == 200, predicted.text
    prediction = predicted.json()["results"][0]
    assert prediction["score"] == 1.0  # no probabilities to average
    assert {r["value"]["brushlabels"][0] for r in prediction["result"]} == {
        CLASSES[c] for c in np.unique(expected).tolist()
    }


def test_jobs_serve_the_class_map(client: TestClient) -> None:
    pixels = picture(96, 160, seed=3)
    expected = png_map(segment(client, "labels-strided", pixels, "?tiling=off"))
    submitted = client.post(
        "/v1/models/labels-strided/jobs",
        content=png_bytes(pixels),
        headers={"content-type": "image/png"},
    )
    assert submitted.status_code == 202, submitted.text
    location = submitted.headers["Location"]
    deadline = time.monotonic() + 60
    while client.get(location).json()["state"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get(location).json()["state"] == "succeeded"
    np.testing.assert_array_equal(png_map(client.get(f"{location}/result")), expected)


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("segment", "?format=confidence"),
        ("segment", "?tta=true"),
        ("segment", "?tta=true&tiling=on&tile_size=64&tile_overlap=8"),
        ("versions/1/segment", "?format=confidence"),
        ("jobs", "?confidence=true"),
        ("jobs", "?tta=true"),
    ],
)
def test_what_needs_scores_is_a_422_problem(client: TestClient, path: str, query: str) -> None:
    response = client.post(
        f"/v1/models/labels-conv/{path}{query}",
        content=png_bytes(picture(32, 32)),
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == SCORES_TYPE
    assert "answers class labels only" in problem["detail"]
    wanted = "confidence" if "confidence" in query else "tta"
    assert wanted in problem["detail"]


def test_v2_probabilities_are_a_422(client: TestClient) -> None:
    batch = picture(32, 32)[None]
    response = v2_request(client, "labels-strided", batch, ["labels", "probabilities"])
    assert response.status_code == 422, response.text
    assert "answers class labels only" in response.json()["error"]
    assert "probabilities" in response.json()["error"]
    assert client.get("/health/ready").status_code == 200  # and it keeps serving
    assert v2_request(client, "labels-strided", batch, ["labels"]).status_code == 200


def test_metadata_shows_no_probabilities(client: TestClient) -> None:
    info = client.get("/v1/models/labels-conv").json()
    assert info["outputs"] == ["labels"]
    assert info["spec"]["logits_output"] is None
    listed = {m["spec"]["name"]: m["outputs"] for m in client.get("/v1/models").json()["models"]}
    assert listed == {"labels-conv": ["labels"], "labels-strided": ["labels"]}
    metadata = client.get("/v2/models/labels-strided").json()
    assert [o["name"] for o in metadata["outputs"]] == ["labels"]
