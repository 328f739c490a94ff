"""Models from torchvision, segmentation_models_pytorch, transformers and a Keras-style NHWC
model: exported with torch.onnx.export, imported with `segserve import`, served from the
repository, and segmented over /v1 and /v2; each class map equals onnxruntime's answer on
the original ONNX file (fed the service's numpy normalisation, its scores upsampled the way
the model's own project does: bilinear, align_corners=False)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import tritonclient.http as triton
from fastapi.testclient import TestClient
from PIL import Image

from app.cli import main
from app.config import Settings
from app.main import create_app
from app.spec import ModelSpec
from export.importer_spec import IMAGENET_MEAN, IMAGENET_STD
from tests.app.conftest import wait_ready
from tests.interop.models import CASES, Case, export

pytestmark = pytest.mark.timeout(600)
BY_NAME = {case.name: case for case in CASES}


@dataclass
class Imported:
    sources: Path
    repo: Path
    specs: dict[str, ModelSpec]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    """Every case exported and imported into one repository; the printed specs."""
    sources, repo = tmp_path_factory.mktemp("exported"), tmp_path_factory.mktemp("repo")
    specs: dict[str, ModelSpec] = {}
    for case in CASES:
        export(case, sources / f"{case.name}.onnx")
        names = ",".join(f"class{i}" for i in range(case.classes))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(
                ["import", str(sources / f"{case.name}.onnx"), "--repo", str(repo),
                 "--name", case.name, "--classes", names, *case.flags]
            )  # fmt: skip
        assert code == 0
        specs[case.name] = ModelSpec.model_validate(json.loads(printed.getvalue()))
    return Imported(sources, repo, specs)


@pytest.fixture(scope="module")
def client(imported: Imported) -> Iterator[TestClient]:
    settings = Settings(model_dir=imported.repo, intra_op_threads=1, max_upload_bytes=4_000_000)
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client, timeout=120)  # five models load and warm up on a busy CPU
        yield test_client


def picture(case: Case) -> np.ndarray:
    """An RGB picture with structure (gradients and blocks), so the class map has regions."""
    y, x = np.mgrid[0 : case.height, 0 : case.width]
    rng = np.random.default_rng(len(case.name))
    blocks = rng.integers(0, 256, (case.height // 16 + 1, case.width // 16 + 1, 3))
    pixels = blocks[y // 16, x // 16] // 2 + np.stack([x * 2, y * 2, x + y], -1) % 128
    return pixels.astype(np.uint8)


def original_scores(case: Case, source: Path, pixels: np.ndarray) -> np.ndarray:
    """(K, H, W): the original ONNX model on onnxruntime, upsampled to the picture's size."""
    x = pixels.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
    x = (x - np.float32(IMAGENET_MEAN)[:, None, None]) / np.float32(IMAGENET_STD)[:, None, None]
    feed = x.transpose(1, 2, 0)[None] if case.layout == "NHWC" else x[None]
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    scores = session.run([case.output_names[0]], {"input": feed.astype(np.float32)})[0]
    if case.layout == "NHWC":
        scores = scores.transpose(0, 3, 1, 2)
    up = F.interpolate(
        torch.from_numpy(scores), size=pixels.shape[:2], mode="bilinear", align_corners=False
    )
    return up[0].numpy()


def assert_same_class_map(labels: np.ndarray, scores: np.ndarray) -> None:
    """Equal to the scores' argmax except at near-ties (float noise between graphs)."""
    want = scores.argmax(0)
    differ = labels != want
    assert differ.mean() < 0.005, f"{differ.mean():.2%} of the pixels differ"
    picked = np.take_along_axis(scores, labels[None].astype(np.int64), 0)[0]
    gap = scores.max(0) - picked
    assert (gap[differ] < 1e-4 * (1 + np.abs(scores).max())).all()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def v2_infer(client: TestClient, name: str, batch: np.ndarray) -> triton.InferResult:
    image = triton.InferInput("image", list(batch.shape), "UINT8")
    image.set_data_from_numpy(batch)
    outputs = [
        triton.InferRequestedOutput("labels"),
        triton.InferRequestedOutput("probabilities"),
    ]
    body, json_size = triton.InferenceServerClient.generate_request_body([image], outputs)
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    response = client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = response.headers.get("Inference-Header-Content-Length")
    return triton.InferResult.from_response_body(
        response.content, header_length=int(length) if length else None
    )


@pytest.mark.parametrize("name", list(BY_NAME))
def test_served_class_maps_equal_onnxruntime_on_the_original(
    name: str, imported: Imported, client: TestClient
) -> None:
    case = BY_NAME[name]
    pixels = picture(case)
    scores = original_scores(case, imported.sources / f"{name}.onnx", pixels)

    response = client.post(
        f"/v1/models/{name}/segment", content=png(pixels), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200, response.text
    v1 = np.asarray(Image.open(io.BytesIO(response.content)))
    assert v1.shape == pixels.shape[:2]
    assert_same_class_map(v1, scores)

    result = v2_infer(client, name, np.stack([pixels, pixels[::-1]]))  # a batch of two
    v2 = result.as_numpy("labels")[0]
    np.testing.assert_array_equal(v2, v1)
    flipped = original_scores(case, imported.sources / f"{name}.onnx", pixels[::-1].copy())
    assert_same_class_map(result.as_numpy("labels")[1], flipped)
    probabilities = result.as_numpy("probabilities")[0]
    assert probabilities.shape == (case.classes, *pixels.shape[:2])
    if not case.dynamic:  # larger than its fixed size: tiled at that size, or resized
        large = np.tile(pixels, (2, 3, 1))
        for tiling in ("on", "off"):
            response = client.post(
                f"/v1/models/{name}/segment?tiling={tiling}",
                content=png(large),
                headers={"content-type": "image/png"},
            )
            assert response.status_code == 200, response.text
            assert np.asarray(Image.open(io.BytesIO(response.content))).shape == large.shape[:2]
    if case.kind == "probabilities":  # the canonical graph's log undone by the softmax
        np.testing.assert_allclose(probabilities, scores, atol=1e-4)
    else:
        softmax = torch.softmax(torch.from_numpy(scores), 0).numpy()
        np.testing.assert_allclose(probabilities, softmax, atol=1e-4)


@pytest.mark.parametrize("name", list(BY_NAME))
def test_the_probe_found_what_the_model_is(name: str, imported: Imported) -> None:
    case = BY_NAME[name]
    spec = imported.specs[name]
    assert spec.input_dtype == "uint8" and spec.schema_version == 2
    assert spec.num_classes == case.classes
    assert spec.size_multiple == (32 if name == "smp-unet" else 1)
    assert ("output stride 4" in spec.description) == (case.stride == 4)
    if not case.dynamic:  # tiles of the fixed size feed it unresized
        assert spec.tile is not None and spec.tile.size == case.height == case.width
        assert f"fixed input size {case.height}x{case.width}" in spec.description
    model = onnx.load(str(imported.repo / name / "1" / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["logits", "labels"]
    assert ModelSpec.from_metadata({p.key: p.value for p in model.metadata_props}) == spec
