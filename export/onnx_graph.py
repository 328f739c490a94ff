"""Generic ONNX graph helpers for export/canonical.py: the opset, declared shapes, and which
nodes an output set depends on (subgraphs of If, Loop and Scan included).

Only `onnx` is needed here.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx


def at_least_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The model, converted to `opset` when it imports an older default opset."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None:
        raise ValueError("the model imports no default ONNX opset")
    if version >= opset:
        return model
    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises several kinds
        raise ValueError(
            f"the model uses opset {version}; converting it to {opset} failed ({exc}): "
            f"re-export it with opset {opset} or later"
        ) from exc


def declared_dims(tensor_type: onnx.TypeProto.Tensor) -> list[int | str | None] | None:
    """The declared shape: ints for fixed dims, names or None for free ones; None if unknown."""
    if not tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in tensor_type.shape.dim
    ]


def names(values: Iterable[onnx.ValueInfoProto]) -> list[str]:
    """The values' names."""
    return [v.name for v in values]


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If, Loop, Scan bodies) read, including from outer scopes."""
    read: set[str] = set()
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in sub.node:
                read.update(inner.input)
                read |= subgraph_inputs(inner)
    return read


def used_names(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    """Every name the nodes (and their subgraphs) read."""
    used: set[str] = set()
    for n in nodes:
        used.update(n.input)
        used |= subgraph_inputs(n)
    return used


def prune(ordered: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes the outputs depend on, in their (valid) order. Nodes feeding only dropped
    outputs (an `aux` head, the model's own argmax) are left out."""
    wanted = set(outputs)
    kept: list[onnx.NodeProto] = []
    for n in reversed(ordered):
        if wanted.intersection(n.output):
            kept.append(n)
            wanted.update(n.input)
            wanted |= subgraph_inputs(n)
    return kept[::-1]
