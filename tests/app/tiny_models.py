"""Tiny ONNX segmentation models with exactly predictable outputs, built with onnx.helper.

`threshold` (1 channel, 2 classes): logits = [x, -x] where x is the normalised pixel,
so class 0 ("bright") wherever the 8-bit value is above 127.5 and class 1 elsewhere.
`brightest` (3 channels, 3 classes): logits = the normalised channels, so the class is
the index of the brightest RGB channel.
`box` (1 channel, 2 classes): like `threshold` on the 3x3 neighbourhood sum (zero padding
at the borders), the smallest model whose output depends on context: tiling must get it
right at the seams.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.spec import ModelSpec


def spec_for(kind: str, name: str, size_multiple: int = 1, **overrides: object) -> ModelSpec:
    if kind in ("threshold", "box"):
        fields: dict[str, object] = dict(
            classes=["bright", "dark"],
            palette=[(255, 255, 0), (0, 0, 255)],
            input_channels=1,
            mean=[0.5],
            std=[0.5],
        )
    else:
        fields = dict(
            classes=["red", "green", "blue"],
            palette=[(255, 0, 0), (0, 255, 0), (0, 0, 255)],
            input_channels=3,
            mean=[0.0, 0.0, 0.0],
            std=[1.0, 1.0, 1.0],
        )
    fields.update(name=name, version="0.0.1", size_multiple=size_multiple, description=kind)
    fields.update(overrides)
    return ModelSpec.model_validate(fields)


def build_graph(kind: str, channels_in_graph: int | None = None) -> onnx.ModelProto:
    if kind == "threshold":
        weight = np.array([1.0, -1.0], np.float32).reshape(2, 1, 1, 1)
    elif kind == "box":
        weight = np.stack([np.ones((1, 3, 3)), -np.ones((1, 3, 3))]).astype(np.float32)
    else:
        weight = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    classes, channels = weight.shape[:2]
    image = helper.make_tensor_value_info(
        "image", TensorProto.FLOAT, ["batch", channels_in_graph or channels, "height", "width"]
    )
    logits = helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, ["batch", classes, "height", "width"]
    )
    labels = helper.make_tensor_value_info(
        "labels", TensorProto.INT64, ["batch", "height", "width"]
    )
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["logits"], pads=[weight.shape[2] // 2] * 4),
        helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, kind, [image], [logits, labels], [numpy_helper.from_array(weight, "w")]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(
    directory: Path,
    kind: str,
    name: str,
    size_multiple: int = 1,
    spec: ModelSpec | None = None,
    metadata: dict[str, str] | None = None,
    file: str | None = None,
) -> Path:
    """Save a tiny model with spec metadata (or raw `metadata` to test invalid ones)."""
    model = build_graph(kind)
    props = (
        metadata
        if metadata is not None
        else (spec or spec_for(kind, name, size_multiple)).to_metadata()
    )
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = directory / (file or f"{name}.onnx")
    onnx.save(model, str(path))
    return path


def conv_graph(weight: np.ndarray, name: str = "probe") -> onnx.ModelProto:
    """logits = Conv(image, weight) with 'same' zero padding (an odd kernel), labels = argmax.

    `weight` is (classes, channels, k, k); ONNX Conv is a cross-correlation. Probe models
    built from it have no symmetry the service could hide a mistake behind: their outputs
    are hand-computable linear functions of the normalised pixels."""
    weight = np.asarray(weight, np.float32)
    classes, channels, k = weight.shape[0], weight.shape[1], weight.shape[2]
    image = helper.make_tensor_value_info(
        "image", TensorProto.FLOAT, ["batch", channels, "height", "width"]
    )
    logits = helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, ["batch", classes, "height", "width"]
    )
    labels = helper.make_tensor_value_info(
        "labels", TensorProto.INT64, ["batch", "height", "width"]
    )
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["logits"], pads=[k // 2] * 4),
        helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, name, [image], [logits, labels], [numpy_helper.from_array(weight, "w")]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_conv_model(directory: Path, weight: np.ndarray, spec: ModelSpec) -> Path:
    """Save `conv_graph(weight)` with `spec` as its metadata, as `<name>.onnx`."""
    model = conv_graph(weight, spec.name)
    for key, value in spec.to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = directory / f"{spec.name}.onnx"
    onnx.save(model, str(path))
    return path
