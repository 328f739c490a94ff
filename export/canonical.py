"""Wrap any segmentation ONNX graph into segserve's one canonical contract.

The canonical graph takes raw pixels and answers scores at input resolution:

    image   uint8   (N, C, H, W)   the pixels as decoded, no normalisation
    logits  float32 (N, K, H, W)   scores whose softmax over K is the class probabilities
    labels  uint8   (N, H, W)      argmax of logits over K

A model that answers class labels only (`output_kind="labels"`: its argmax is inside, an
integer (N, H, W) or (N, 1, H, W) map) gets no `logits`: its labels are squeezed to
(N, H, W), cast to uint8 and, when they come at another size than the input (an output
stride, a fixed input size), resized to the input's H, W by nearest neighbour (torch's
`interpolate(mode="nearest")`: output pixel j reads label j * h // H, in integers).

Inside, in this order: Cast to float, `(v / 255 - mean) / std` folded into one Mul and one
Add, [Resize to the model's fixed input size], [Transpose to NHWC], the model itself,
[Transpose its NHWC scores back], [Resize the scores bilinearly to the input's H, W, read at
run time], [Log(max(p, 1e-12)) for a model that answers probabilities, so the service's
softmax gives p back], ArgMax, Cast to uint8. Every other output of the model (torchvision's
`aux` head) is dropped together with the nodes only it needed. The model's own tensors are
renamed under a prefix, so a model whose names are already `image`/`logits`/`labels` (the
shipped ones) wraps the same way.

Only `onnx` is needed here (no torch, no onnxruntime). Why one graph rather than feeding each
model its own float input and upsampling in numpy: one contract for the service (the spec
then says `input_dtype="uint8"`), a quarter of the bytes into the session, and the resize
and argmax run in onnxruntime's threads (on the GPU when there is one) instead of in numpy
on the request thread; `bench/` and the README ("Serve your own model") have the timing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.spec import SPEC_KEY
from export.onnx_graph import at_least_opset, declared_dims, names, prune, used_names

Layout = Literal["NCHW", "NHWC"]
OutputKind = Literal["logits", "probabilities", "labels"]

INPUT, LOGITS, LABELS = "image", "logits", "labels"
MIN_OPSET = 13  # Resize with optional roi/scales, ArgMax and Slice with tensor inputs
PROBABILITY_FLOOR = 1e-12
_INNER = "model/"  # prefix of the wrapped model's own names
_OWN = "canonical/"  # names of the nodes added around it


def canonicalise(
    model: onnx.ModelProto,
    *,
    input_name: str,
    scores_output: str,
    mean: Sequence[float],
    std: Sequence[float],
    layout: Layout = "NCHW",
    scores_layout: Layout | None = None,
    output_kind: OutputKind = "logits",
    resize_to_input: bool = False,
    labels_axis: int | None = None,
) -> onnx.ModelProto:
    """A new model with the canonical contract around `model` (which is left unchanged).

    `input_name`: the model's image input, float, NCHW or (`layout="NHWC"`) NHWC; when its
    height and width are fixed numbers the graph resizes every input to them first (and
    `resize_to_input` is implied). `scores_output`: the model's per-class scores, NCHW or
    (`scores_layout`, default `layout`) NHWC, as logits or (`output_kind="probabilities"`)
    probabilities. `resize_to_input`: the scores come at another resolution than the input
    (an output stride, as SegFormer's 1/4) and are resized bilinearly to the input's size.
    With `output_kind="labels"`, `scores_output` holds class indices instead (no `logits`
    output then; they are resized by nearest neighbour), and `labels_axis` is the axis of
    size 1 to squeeze from them (1 for (N, 1, H, W), 3 for (N, H, W, 1); None for (N, H, W)).
    `mean`/`std`: per channel, for `(v / 255 - mean) / std`; their length is the channel
    count C of `image`. Raises `ValueError` naming what does not fit.
    """
    channels = _check_normalisation(mean, std)
    scores_layout = scores_layout or layout
    if output_kind not in ("logits", "probabilities", "labels"):
        raise ValueError(
            f"output_kind must be 'logits', 'probabilities' or 'labels', not {output_kind!r}"
        )
    if labels_axis not in (None, 1, 3) or (labels_axis is not None and output_kind != "labels"):
        raise ValueError("labels_axis is 1 or 3, for output_kind='labels' only")
    model = at_least_opset(model, MIN_OPSET)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    by_name = {i.name: i for i in inputs}
    if input_name not in by_name:
        raise ValueError(f"the model has no input {input_name!r}; its inputs: {names(inputs)}")
    if len(inputs) > 1:
        raise ValueError(
            f"the model has inputs {names(inputs)}; the canonical graph feeds only the image"
        )
    outputs = {o.name: o for o in graph.output}
    if scores_output not in outputs:
        raise ValueError(
            f"the model has no output {scores_output!r}; its outputs: {names(graph.output)}"
        )
    in_type = by_name[input_name].type.tensor_type
    if in_type.elem_type not in _FLOATS:
        raise ValueError(
            f"input {input_name!r} is {_type_name(in_type.elem_type)}; the model must take "
            "float pixels (it is normalised inside the canonical graph)"
        )
    dims = declared_dims(in_type)
    if dims is not None and len(dims) != 4:
        raise ValueError(f"input {input_name!r} has rank {len(dims)}; an image input has rank 4")
    c_axis, hw_axes = (1, (2, 3)) if layout == "NCHW" else (3, (1, 2))
    if dims is not None and isinstance(dims[c_axis], int) and dims[c_axis] != channels:
        raise ValueError(
            f"input {input_name!r} has {dims[c_axis]} channels in {layout} layout "
            f"{_shape_text(dims)}, but mean/std give {channels}"
        )
    fixed = _fixed_size(dims, hw_axes)
    batch = dims[0] if dims is not None and isinstance(dims[0], int) and dims[0] > 0 else None
    if batch is not None and batch != 1:
        raise ValueError(
            f"input {input_name!r} has a fixed batch of {batch}: export it with a dynamic "
            "batch axis (or a batch of 1)"
        )

    inner = onnx.compose.add_prefix(model, _INNER)
    nodes: list[onnx.NodeProto] = []
    consts: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        consts.append(numpy_helper.from_array(value, _OWN + name))
        return _OWN + name

    def node(op: str, ins: Iterable[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, list(ins), [_OWN + out], name=_OWN + out, **attrs))
        return _OWN + out

    # Pixels to the model's input.
    mean_a = np.asarray(mean, np.float32).reshape(1, channels, 1, 1)
    std_a = np.asarray(std, np.float32).reshape(1, channels, 1, 1)
    scale = (np.float32(1 / 255) / std_a).astype(np.float32)
    bias = (-mean_a / std_a).astype(np.float32)
    x = node("Cast", [INPUT], "pixels", to=TensorProto.FLOAT)
    x = node("Mul", [x, const("scale", scale)], "scaled")
    x = node("Add", [x, const("bias", bias)], "normalised")
    image_shape = node("Shape", [INPUT], "image_shape")
    starts, ends = (
        const("nc_start", np.array([0], np.int64)),
        const("nc_end", np.array([2], np.int64)),
    )
    hw_end = const("hw_end", np.array([4], np.int64))
    image_nc = node("Slice", [image_shape, starts, ends], "image_nc")
    image_hw = node("Slice", [image_shape, ends, hw_end], "image_hw")
    if fixed is not None:
        fixed_hw = const("fixed_hw", np.array(fixed, np.int64))
        sizes = node("Concat", [image_nc, fixed_hw], "fixed_sizes", axis=0)
        x = node("Resize", [x, "", "", sizes], "fixed_input", **_BILINEAR)
        resize_to_input = True
    if layout == "NHWC":
        x = node("Transpose", [x], "nhwc_input", perm=[0, 2, 3, 1])
    if in_type.elem_type != TensorProto.FLOAT:
        x = node("Cast", [x], "model_input", to=in_type.elem_type)
    out_type = outputs[scores_output].type.tensor_type
    inner_nodes = list(inner.graph.node)
    if batch is None:
        nodes.append(helper.make_node("Identity", [x], [_INNER + input_name], name=_OWN + "feed"))
        scores = _INNER + scores_output
    else:  # a model made for one image at a time runs once per image of the batch
        axis0 = const("axis0", np.array([0], np.int64))
        body_nodes = [
            helper.make_node("Unsqueeze", [_OWN + "one", axis0], [_INNER + input_name]),
            *prune(inner_nodes, [_INNER + scores_output]),
            helper.make_node("Squeeze", [_INNER + scores_output, axis0], [_OWN + "one_scores"]),
        ]
        body = helper.make_graph(
            body_nodes,
            "one_image",
            [helper.make_tensor_value_info(_OWN + "one", in_type.elem_type, None)],
            [helper.make_tensor_value_info(_OWN + "one_scores", out_type.elem_type, None)],
            value_info=[v for v in inner.graph.value_info if v.name in used_names(body_nodes)],
        )
        scores = node("Scan", [x], "per_image", num_scan_inputs=1, body=body)
        inner_nodes = []
    split = len(nodes)

    if output_kind == "labels":
        outputs_out = _labels_tail(
            nodes, scores, resize_to_input, labels_axis, image_shape, node, const
        )
    else:
        outputs_out = _scores_tail(
            nodes, scores, out_type, scores_layout, resize_to_input, output_kind, image_hw, node,
            const,
        )  # fmt: skip
    graph_out = helper.make_graph(
        prune([*nodes[:split], *inner_nodes, *nodes[split:]], [o.name for o in outputs_out]),
        inner.graph.name or "canonical",
        [
            helper.make_tensor_value_info(
                INPUT, TensorProto.UINT8, ["batch", channels, "height", "width"]
            )
        ],
        outputs_out,
    )
    used = used_names(graph_out.node)
    graph_out.initializer.extend(c for c in consts if c.name in used)
    graph_out.initializer.extend(i for i in inner.graph.initializer if i.name in used)
    graph_out.sparse_initializer.extend(
        s for s in inner.graph.sparse_initializer if s.values.name in used
    )
    if batch is None:
        graph_out.value_info.extend(v for v in inner.graph.value_info if v.name in used)
    wrapped = helper.make_model(
        graph_out,
        opset_imports=list(inner.opset_import),
        ir_version=inner.ir_version,
        producer_name="segserve.canonical",
        functions=list(inner.functions),
    )
    wrapped.doc_string = model.doc_string
    wrapped.model_version = model.model_version
    for prop in model.metadata_props:
        if prop.key != SPEC_KEY:  # the spec describes the unwrapped graph; the caller writes one
            wrapped.metadata_props.add(key=prop.key, value=prop.value)
    if wrapped.ByteSize() < 2**31 - 2**20:  # the checker wants a path beyond 2 GiB
        onnx.checker.check_model(wrapped)
    return wrapped


NodeFn = Callable[..., str]
ConstFn = Callable[[str, np.ndarray], str]


def _scores_tail(
    nodes: list[onnx.NodeProto],
    scores: str,
    out_type: onnx.TypeProto.Tensor,
    scores_layout: Layout,
    resize_to_input: bool,
    output_kind: OutputKind,
    image_hw: str,
    node: NodeFn,
    const: ConstFn,
) -> list[onnx.ValueInfoProto]:
    """Appends to `nodes` (which `node` appends to too) the model's scores to `logits`
    (float32 NCHW at input size) and their argmax `labels`; the graph's outputs."""
    if out_type.elem_type != TensorProto.FLOAT:
        scores = node("Cast", [scores], "scores_float", to=TensorProto.FLOAT)
    if scores_layout == "NHWC":
        scores = node("Transpose", [scores], "nchw_scores", perm=[0, 3, 1, 2])
    if resize_to_input:
        starts, ends = (
            const("nk_start", np.array([0], np.int64)),
            const("nk_end", np.array([2], np.int64)),
        )
        scores_nk = node("Slice", [node("Shape", [scores], "scores_shape"), starts, ends], "nk")
        sizes = node("Concat", [scores_nk, image_hw], "output_sizes", axis=0)
        scores = node("Resize", [scores, "", "", sizes], "resized", **_BILINEAR)
    if output_kind == "probabilities":
        floor = const("floor", np.array(PROBABILITY_FLOOR, np.float32))
        scores = node("Log", [node("Max", [scores, floor], "floored")], "log_probabilities")
    nodes.append(helper.make_node("Identity", [scores], [LOGITS], name=_OWN + LOGITS))
    labels = node("ArgMax", [LOGITS], "argmax", axis=1, keepdims=0)
    nodes.append(
        helper.make_node("Cast", [labels], [LABELS], name=_OWN + LABELS, to=TensorProto.UINT8)
    )
    classes = declared_dims(out_type)
    k_axis = 1 if scores_layout == "NCHW" else 3
    k: int | str = "classes"
    if classes is not None and len(classes) == 4:
        declared = classes[k_axis]
        k = declared if isinstance(declared, int) else k
    return [
        helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", k, "height", "width"]),
        helper.make_tensor_value_info(LABELS, TensorProto.UINT8, ["batch", "height", "width"]),
    ]


def _labels_tail(
    nodes: list[onnx.NodeProto],
    labels: str,
    resize_to_input: bool,
    labels_axis: int | None,
    image_shape: str,
    node: NodeFn,
    const: ConstFn,
) -> list[onnx.ValueInfoProto]:
    """Appends to `nodes` the model's class indices to `labels`, uint8 (N, H, W) at input
    size; the graph's outputs. Labels of another size (h, w) are resized by nearest
    neighbour in integers: output row i reads row i * h // H (columns alike), as torch's
    `interpolate(mode="nearest")` means it (whose float arithmetic is off by one at a few
    exact boundaries, as onnxruntime's Resize is)."""
    if labels_axis is not None:
        squeeze = const("class_axis", np.array([labels_axis], np.int64))
        labels = node("Squeeze", [labels, squeeze], "squeezed_labels")
    labels = node("Cast", [labels], "labels_uint8", to=TensorProto.UINT8)
    if resize_to_input:
        labels_shape = node("Shape", [labels], "labels_shape")
        zero, one = const("zero", np.array(0, np.int64)), const("one", np.array(1, np.int64))
        for dim, name in ((1, "rows"), (2, "cols")):
            at = const(f"{name}_at", np.array(dim, np.int64))
            image_at = const(f"image_{name}_at", np.array(dim + 1, np.int64))  # NCHW
            size = node("Gather", [labels_shape, at], f"labels_{name}")
            out = node("Gather", [image_shape, image_at], f"image_{name}")
            scaled = node("Mul", [node("Range", [zero, out, one], f"{name}_range"), size], name)
            index = node("Div", [scaled, out], f"{name}_index")
            labels = node("Gather", [labels, index], f"nearest_{name}", axis=dim)
    nodes.append(helper.make_node("Identity", [labels], [LABELS], name=_OWN + LABELS))
    return [helper.make_tensor_value_info(LABELS, TensorProto.UINT8, ["batch", "height", "width"])]


_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
# torch's F.interpolate(mode="bilinear", align_corners=False) as torchvision and transformers
# upsample their scores.
_BILINEAR: dict[str, Any] = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}


def _check_normalisation(mean: Sequence[float], std: Sequence[float]) -> int:
    if len(mean) not in (1, 3) or len(std) != len(mean):
        raise ValueError(
            f"mean and std need one value per channel, 1 or 3 (got {len(mean)} and {len(std)})"
        )
    if any(not np.isfinite(s) or s <= 0 for s in std) or not all(np.isfinite(m) for m in mean):
        raise ValueError("std values must be positive and mean values finite")
    return len(mean)


def _fixed_size(
    dims: list[int | str | None] | None, hw_axes: tuple[int, int]
) -> tuple[int, int] | None:
    if dims is None:
        return None
    h, w = dims[hw_axes[0]], dims[hw_axes[1]]
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        return h, w
    return None


def _shape_text(dims: list[int | str | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _type_name(elem_type: int) -> str:
    return str(TensorProto.DataType.Name(elem_type)).lower()
