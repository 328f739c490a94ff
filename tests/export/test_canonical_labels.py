"""Models that answer class labels only (their argmax inside): export/canonical.py wraps
them into `labels` alone (uint8 (N, H, W) at the input's size, strided labels upsampled by
nearest neighbour in integers), and `segserve import --output-kind labels` probes, checks
and writes them; the wrapped class map equals onnxruntime's answer on the original."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from app.inference.pipeline import normalise
from app.spec import ModelSpec
from export.canonical import canonicalise
from export.importer import import_model
from export.importer_inputs import ImportProblem, ImportRequest
from export.importer_labels import nearest

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
K = 5


def _models(
    stride: int = 1,
    shape: str = "NHW",
    fixed: int | None = None,
    batch: int | str = "n",
    offset: int = 0,
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(labels model, scores twin): a convolution to K classes (3x3, or `stride`x`stride`
    patches) and its argmax as `shape` NHW (N, H, W), N1HW (N, 1, H, W) or NHW1 (an NHWC
    model's (N, H, W, 1)); `fixed` input side, fixed `batch`, `offset` added to the labels."""
    weight = np.random.default_rng(stride).normal(size=(K, 3, 3, 3)).astype(np.float32)
    conv: dict[str, object] = {"pads": [1, 1, 1, 1]}
    if stride > 1:
        weight = np.random.default_rng(9).normal(size=(K, 3, stride, stride)).astype(np.float32)
        conv = {"strides": [stride, stride]}
    nhwc = shape == "NHW1"
    nodes = []
    x = "x"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]))
        x = "xc"
    nodes.append(helper.make_node("Conv", [x, "w"], ["conv"], **conv))  # type: ignore[arg-type]
    scores = "conv"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["conv"], ["conv_nhwc"], perm=[0, 2, 3, 1]))
        scores = "conv_nhwc"
    axis, keepdims = (3, 1) if nhwc else (1, int(shape == "N1HW"))
    labelled = [
        *nodes,
        helper.make_node("ArgMax", [scores], ["argmax"], axis=axis, keepdims=keepdims),
        helper.make_node("Add", ["argmax", "offset"], ["labels"]),
    ]
    side: int | str = fixed or "h"
    dims = [batch, side, fixed or "w", 3] if nhwc else [batch, 3, side, fixed or "w"]
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.array(offset, np.int64), "offset"),
    ]

    def model(graph_nodes: list[onnx.NodeProto], out: str, kind: int) -> onnx.ModelProto:
        used = {i for n in graph_nodes for i in n.input}
        graph = helper.make_graph(
            graph_nodes,
            "labels",
            [image],
            [helper.make_tensor_value_info(out, kind, None)],
            [i for i in inits if i.name in used],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)

    return model(labelled, "labels", TensorProto.INT64), model(nodes, scores, TensorProto.FLOAT)


def _run(model: onnx.ModelProto, feed: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: feed})
    return np.asarray(out)


def _normalised(pixels: np.ndarray) -> np.ndarray:
    spec = ModelSpec(
        name="t", version="1", classes=[str(i) for i in range(K)], palette=[(0, 0, 0)] * K,
        input_channels=3, mean=MEAN, std=STD,
    )  # fmt: skip
    return np.stack([normalise(p, spec) for p in pixels])


def _expected(
    labels_model: onnx.ModelProto, scores_model: onnx.ModelProto, pixels: np.ndarray, nhwc: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The original's labels (N, H, W) upsampled by nearest neighbour, and where its top two
    scores tie within float noise (there the wrapped graph may pick the other)."""
    x = _normalised(pixels)
    feed = x.transpose(0, 2, 3, 1).copy() if nhwc else x
    labels = _run(labels_model, feed)
    scores = _run(scores_model, feed)
    if nhwc:
        scores = scores.transpose(0, 3, 1, 2)
    labels = labels.reshape(labels.shape[0], *scores.shape[2:])
    np.testing.assert_array_equal(labels, scores.argmax(1))
    top = np.sort(scores, axis=1)
    tie = (top[:, -1] - top[:, -2]) < 1e-4
    height, width = pixels.shape[2:]
    want = np.stack([nearest(m, height, width) for m in labels])
    ties = np.stack([nearest(t, height, width) for t in tie])
    return want, ties


@pytest.mark.parametrize("shape", ["NHW", "N1HW", "NHW1"])
@pytest.mark.parametrize("stride", [1, 4])
def test_labels_are_squeezed_cast_and_upsampled_by_nearest(shape: str, stride: int) -> None:
    labels_model, scores_model = _models(stride, shape)
    nhwc = shape == "NHW1"
    wrapped = canonicalise(
        labels_model, input_name="x", scores_output="labels", mean=MEAN, std=STD,
        layout="NHWC" if nhwc else "NCHW", output_kind="labels", resize_to_input=stride != 1,
        labels_axis={"NHW": None, "N1HW": 1, "NHW1": 3}[shape],
    )  # fmt: skip
    session = ort.InferenceSession(wrapped.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["labels"]  # no logits
    pixels = np.random.default_rng(2).integers(0, 256, (2, 3, 42, 58), np.uint8)
    (labels,) = session.run(None, {"image": pixels})
    assert labels.dtype == np.uint8 and labels.shape == (2, 42, 58)
    want, ties = _expected(labels_model, scores_model, pixels, nhwc)
    assert not ((labels != want) & ~ties).any()
    assert len(np.unique(labels)) > 2


def test_nearest_is_torchs_nearest_up_to_its_float_rounding() -> None:
    """The integer rule j * h // H is what torch's interpolate(mode="nearest") computes in
    floats: they agree except at the few exact boundaries where its float rounds down."""
    small = np.random.default_rng(0).integers(0, K, (10, 14), np.uint8)
    ours = nearest(small, 42, 58)
    theirs = F.interpolate(torch.from_numpy(small)[None, None].float(), (42, 58), mode="nearest")
    agree = (ours == theirs[0, 0].numpy().astype(np.uint8)).mean()
    assert agree > 0.95
    np.testing.assert_array_equal(nearest(small, 40, 56), np.kron(small, np.ones((4, 4), np.uint8)))


def _request(tmp_path: Path, model: onnx.ModelProto, **fields: object) -> ImportRequest:
    source = tmp_path / "labels.onnx"
    onnx.save(model, source)
    args: dict[str, object] = {"classes": [f"c{i}" for i in range(K)], **fields}
    return ImportRequest(source=source, repo=tmp_path / "repo", name="m", **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model_args", "request_args", "found"),
    [
        ({"stride": 4, "shape": "N1HW"}, {"output_kind": "labels"}, "output stride 4"),
        ({"shape": "NHW1"}, {}, "holds class labels only"),  # found without --output-kind
        ({"stride": 4, "fixed": 32}, {"output_kind": "labels"}, "fixed input size 32x32"),
        ({"batch": 1, "stride": 2}, {"output_kind": "labels"}, "output stride 2"),
    ],
)
def test_import_probes_checks_and_writes_labels_models(
    tmp_path: Path, model_args: dict[str, object], request_args: dict[str, object], found: str
) -> None:
    labels_model, scores_model = _models(**model_args)  # type: ignore[arg-type]
    imported = import_model(_request(tmp_path, labels_model, **request_args))
    spec = imported.spec
    assert spec.logits_output is None and spec.labels_output == "labels"
    assert imported.probe.kind == "labels" and found in spec.description
    written = onnx.load(str(imported.path))
    assert ModelSpec.from_metadata({p.key: p.value for p in written.metadata_props}) == spec
    side = 32 if model_args.get("fixed") else 40
    pixels = np.random.default_rng(5).integers(0, 256, (1, 3, side, side + 8), np.uint8)
    if model_args.get("fixed"):
        pixels = pixels[..., :side]
    (labels,) = ort.InferenceSession(str(imported.path), providers=["CPUExecutionProvider"]).run(
        None, {"image": pixels}
    )
    want, ties = _expected(labels_model, scores_model, pixels, model_args.get("shape") == "NHW1")
    assert labels.shape == want.shape
    assert not ((labels != want) & ~ties).any()


@pytest.mark.parametrize(
    ("model_args", "request_args", "message"),
    [
        ({}, {"output_kind": "labels", "classes": None}, "do not tell how many classes"),
        ({"offset": -1}, {"output_kind": "labels"}, "answered label -1 on a probe"),
        ({"offset": 3}, {"output_kind": "labels"}, "outside the 5 classes named"),
        ({}, {"output_kind": "labels", "output": "nope"}, "--output 'nope'"),
    ],
)
def test_labels_that_cannot_be_class_indices_are_refused(
    tmp_path: Path, model_args: dict[str, object], request_args: dict[str, object], message: str
) -> None:
    labels_model, _ = _models(**model_args)  # type: ignore[arg-type]
    with pytest.raises(ImportProblem, match=message):
        import_model(_request(tmp_path, labels_model, **request_args))
    assert not (tmp_path / "repo" / "m").exists()
