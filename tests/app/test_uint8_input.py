"""Graphs that take uint8 pixels and normalise inside (`input_dtype` "uint8").

The service then feeds the mirror-padded pixels themselves; the served numbers must be
the same as for the float contract, checked against the independent reference of
tests/app/probes.py, in one pass and tiled.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from app.config import Settings
from app.main import create_app
from app.spec import ModelSpec
from tests.app.conftest import png_bytes
from tests.app.probes import (
    BOX_MEAN,
    BOX_STD,
    BOX_WEIGHT,
    logits_against_last,
    probe_spec,
    reference_conv,
    reference_mirror_pad,
    reference_normalised,
    v2_probabilities,
)
from tests.app.tiny_models import conv_graph


def uint8_graph(weight: np.ndarray, mean: list[float], std: list[float]) -> onnx.ModelProto:
    """`conv_graph(weight)` behind Cast, /255, -mean, /std: uint8 pixels in."""
    model = conv_graph(weight, "probe-u8")
    graph = model.graph
    channels = len(mean)
    shape = (1, channels, 1, 1)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.full(shape, 255, np.float32), "u8_scale"),
            numpy_helper.from_array(np.asarray(mean, np.float32).reshape(shape), "u8_mean"),
            numpy_helper.from_array(np.asarray(std, np.float32).reshape(shape), "u8_std"),
        ]
    )
    for node in graph.node:
        node.input[:] = ["x_norm" if i == "image" else i for i in node.input]
    prefix = [
        helper.make_node("Cast", ["image"], ["x_float"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x_float", "u8_scale"], ["x_unit"]),
        helper.make_node("Sub", ["x_unit", "u8_mean"], ["x_centred"]),
        helper.make_node("Div", ["x_centred", "u8_std"], ["x_norm"]),
    ]
    nodes = [*prefix, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, spec: ModelSpec, path: Path) -> None:
    for key, value in spec.to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def u8_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    directory = tmp_path_factory.mktemp("uint8")
    fields = dict(mean=BOX_MEAN, std=BOX_STD, size_multiple=8)
    save(
        uint8_graph(BOX_WEIGHT, BOX_MEAN, BOX_STD),
        probe_spec("probe-u8", 1, 2, input_dtype="uint8", **fields),
        directory / "probe-u8.onnx",
    )
    # A uint8 graph whose metadata claims the float contract: refused with a reason.
    save(
        uint8_graph(BOX_WEIGHT, BOX_MEAN, BOX_STD),
        probe_spec("probe-u8-claims-float", 1, 2, **fields),
        directory / "claims-float.onnx",
    )
    settings = Settings(model_dir=directory, intra_op_threads=1)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 20
        while any(m["state"] == "loading" for m in client.get("/health/ready").json()["models"]):
            assert time.monotonic() < deadline, "models still loading"
            time.sleep(0.05)
        yield client


def test_uint8_graph_serves_the_reference_numbers(u8_client: TestClient) -> None:
    grey = np.random.default_rng(7).integers(0, 256, (13, 21), dtype=np.uint8)  # pads to 16x24
    served = logits_against_last(v2_probabilities(u8_client, "probe-u8", png_bytes(grey)))[0]
    normalised = reference_normalised(grey, BOX_MEAN, BOX_STD)
    expected = reference_conv(reference_mirror_pad(normalised, 8), BOX_WEIGHT)[0, :13, :21]
    np.testing.assert_allclose(served, expected, atol=1e-4)


@pytest.mark.parametrize("query", ["tiling=off", "tiling=on&tile_size=64&tile_overlap=16"])
def test_uint8_graph_class_maps_one_pass_and_tiled(u8_client: TestClient, query: str) -> None:
    grey = np.random.default_rng(8).integers(0, 256, (150, 170), dtype=np.uint8)
    normalised = reference_normalised(grey, BOX_MEAN, BOX_STD)
    logit = reference_conv(reference_mirror_pad(normalised, 8), BOX_WEIGHT)[0, :150, :170]
    clear = np.abs(logit) > 1e-4
    response = u8_client.post(
        f"/v1/models/probe-u8/segment?format=json&encoding=list&{query}",
        content=png_bytes(grey),
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 200, response.text
    labels = np.asarray(response.json()["class_map"]["rows"])
    expected = (logit <= 0).astype(int)  # class 0 where logit 0 beats the constant 0
    assert np.array_equal(labels[clear], expected[clear])


def test_input_dtype_must_match_the_graph(u8_client: TestClient) -> None:
    models = {m["file"]: m for m in u8_client.get("/health/ready").json()["models"]}
    failed = models["claims-float.onnx"]
    assert failed["state"] == "failed"
    assert "tensor(uint8)" in failed["reason"] and "input_dtype" in failed["reason"]
