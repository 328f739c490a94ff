"""export/canonical.py: the wrapped graph answers what the original answers on the service's
own numpy normalisation, for every kind of model it promises to wrap."""

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
from app.spec import SPEC_KEY, ModelSpec
from export.canonical import canonicalise

SHIPPED = Path(__file__).resolve().parents[2] / "app" / "shipped_models"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _pixels(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def _normalised(pixels: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """The service's own float32 normalisation (app/inference/pipeline.normalise)."""
    spec = ModelSpec(
        name="t",
        version="1",
        classes=["a", "b"],
        palette=[(0, 0, 0), (1, 1, 1)],
        input_channels=len(mean),  # type: ignore[arg-type]
        mean=mean,
        std=std,
    )
    return np.stack([normalise(p, spec) for p in pixels])


def _conv_model(
    k: int = 4,
    stride: int = 1,
    layout: str = "NCHW",
    softmax: bool = False,
    aux: bool = False,
    fixed: tuple[int, int] | None = None,
    dtype: int = TensorProto.FLOAT,
    batch: int | str = "n",
) -> onnx.ModelProto:
    """A 3x3 convolution to k classes (stride `stride`), optionally NHWC in and out, with
    softmax, with a second `aux` output, a fixed input size or float16 arithmetic."""
    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    weight = np.random.default_rng(1).normal(size=(k, 3, 3, 3)).astype(np_dtype)
    nodes, x = [], "pixels"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["pixels"], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes.append(
        helper.make_node("Conv", [x, "w"], ["conv"], pads=[1, 1, 1, 1], strides=[stride] * 2)
    )
    y = "conv"
    if softmax:
        nodes.append(helper.make_node("Softmax", [y], ["soft"], axis=1))
        y = "soft"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [y], ["out"], perm=[0, 2, 3, 1]))
    else:
        nodes.append(helper.make_node("Identity", [y], ["out"]))
    outputs = [helper.make_tensor_value_info("out", dtype, None)]
    if aux:
        nodes.append(helper.make_node("Neg", ["conv"], ["aux"]))
        outputs.append(helper.make_tensor_value_info("aux", dtype, None))
    h, w = fixed or ("h", "w")
    shape = [batch, 3, h, w] if layout == "NCHW" else [batch, h, w, 3]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("pixels", dtype, shape)],
        outputs,
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _original(model: onnx.ModelProto, x: np.ndarray, layout: str = "NCHW") -> np.ndarray:
    feed = x.transpose(0, 2, 3, 1) if layout == "NHWC" else x
    session = _session(model)
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    out = session.run(["out"], {"pixels": feed.astype(dtype)})[0].astype(np.float32)
    return out.transpose(0, 3, 1, 2) if layout == "NHWC" else out


def _float_model(name: str) -> onnx.ModelProto:
    """The shipped model's float-input graph: the shipped files are themselves wrapped
    (uint8 input, export/uint8_input.py), so the graph inside, `model/image` to
    `model/logits`, is the float export."""
    shipped = onnx.load(str(SHIPPED / f"{name}.onnx"))
    if shipped.graph.input[0].type.tensor_type.elem_type != TensorProto.UINT8:
        return shipped
    for outer, inner in [
        (shipped.graph.input[0], "model/image"),
        (shipped.graph.output[0], "model/logits"),
    ]:
        dims = ["batch", outer.type.tensor_type.shape.dim[1].dim_value, "height", "width"]
        shipped.graph.value_info.append(
            onnx.helper.make_tensor_value_info(inner, TensorProto.FLOAT, dims)
        )
    return onnx.utils.Extractor(shipped).extract_model(["model/image"], ["model/logits"])


@pytest.mark.parametrize("name", ["unet-isbi", "dilated-camvid"])
def test_shipped_models_wrap_to_the_same_logits_and_labels(name: str) -> None:
    shipped = onnx.load(str(SHIPPED / f"{name}.onnx"))
    spec = ModelSpec.from_metadata({p.key: p.value for p in shipped.metadata_props})
    model = _float_model(name)
    image, scores = model.graph.input[0].name, model.graph.output[0].name
    wrapped = canonicalise(
        model, input_name=image, scores_output=scores, mean=spec.mean, std=spec.std
    )
    pixels = _pixels(2, spec.input_channels, 48, 64)  # multiples of both size multiples
    (want_logits,) = _session(model).run(
        [scores], {image: _normalised(pixels, spec.mean, spec.std)}
    )
    want_labels = want_logits.argmax(1)
    session = _session(wrapped)
    assert [(i.name, i.type) for i in session.get_inputs()] == [("image", "tensor(uint8)")]
    assert [o.name for o in session.get_outputs()] == ["logits", "labels"]
    logits, labels = session.run(["logits", "labels"], {"image": pixels})
    np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=1e-4)
    assert labels.dtype == np.uint8
    assert (labels == want_labels).mean() > 0.999  # float noise may flip a near-tie
    assert SPEC_KEY not in {p.key for p in wrapped.metadata_props}  # describes the original


def test_aux_output_and_its_nodes_are_dropped() -> None:
    model = _conv_model(aux=True)
    wrapped = canonicalise(model, input_name="pixels", scores_output="out", mean=MEAN, std=STD)
    assert [o.name for o in wrapped.graph.output] == ["logits", "labels"]
    assert "Neg" not in {n.op_type for n in wrapped.graph.node}
    pixels = _pixels(1, 3, 24, 32)
    logits = _session(wrapped).run(["logits"], {"image": pixels})[0]
    want = _original(model, _normalised(pixels, MEAN, STD))
    np.testing.assert_allclose(logits, want, atol=1e-4)


def test_output_stride_is_resized_bilinearly_to_the_input_size() -> None:
    model = _conv_model(stride=4)
    wrapped = canonicalise(
        model, input_name="pixels", scores_output="out", mean=MEAN, std=STD, resize_to_input=True
    )
    pixels = _pixels(1, 3, 36, 52)
    logits, labels = _session(wrapped).run(None, {"image": pixels})
    assert logits.shape == (1, 4, 36, 52) and labels.shape == (1, 36, 52)
    small = _original(model, _normalised(pixels, MEAN, STD))
    assert small.shape[2:] == (9, 13)
    want = F.interpolate(
        torch.from_numpy(small), size=(36, 52), mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_allclose(logits, want, atol=1e-4)
    np.testing.assert_array_equal(labels, logits.argmax(1))


def test_probabilities_become_log_probabilities() -> None:
    model = _conv_model(softmax=True)
    wrapped = canonicalise(
        model,
        input_name="pixels",
        scores_output="out",
        mean=MEAN,
        std=STD,
        output_kind="probabilities",
    )
    pixels = _pixels(1, 3, 16, 16)
    logits = _session(wrapped).run(["logits"], {"image": pixels})[0]
    want = _original(model, _normalised(pixels, MEAN, STD))
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # what the service does
    np.testing.assert_allclose(softmax, want, atol=1e-5)


def test_nhwc_model_takes_nchw_pixels_and_answers_nchw_scores() -> None:
    model = _conv_model(layout="NHWC")
    wrapped = canonicalise(
        model, input_name="pixels", scores_output="out", mean=MEAN, std=STD, layout="NHWC"
    )
    pixels = _pixels(2, 3, 20, 28)
    logits = _session(wrapped).run(["logits"], {"image": pixels})[0]
    want = _original(model, _normalised(pixels, MEAN, STD), layout="NHWC")
    assert logits.shape == (2, 4, 20, 28)
    np.testing.assert_allclose(logits, want, atol=1e-4)


def test_fixed_size_model_is_fed_at_its_size_and_answers_at_the_input_size() -> None:
    model = _conv_model(fixed=(32, 32))
    wrapped = canonicalise(model, input_name="pixels", scores_output="out", mean=MEAN, std=STD)
    session = _session(wrapped)
    pixels = _pixels(1, 3, 32, 32)
    logits = session.run(["logits"], {"image": pixels})[0]  # native size: no resize at all
    np.testing.assert_allclose(logits, _original(model, _normalised(pixels, MEAN, STD)), atol=1e-4)
    logits, labels = session.run(None, {"image": _pixels(1, 3, 48, 40)})
    assert logits.shape == (1, 4, 48, 40) and labels.shape == (1, 48, 40)


def test_float16_model_gets_float32_logits() -> None:
    model = _conv_model(dtype=TensorProto.FLOAT16)
    wrapped = canonicalise(model, input_name="pixels", scores_output="out", mean=MEAN, std=STD)
    pixels = _pixels(1, 3, 16, 16)
    logits = _session(wrapped).run(["logits"], {"image": pixels})[0]
    assert logits.dtype == np.float32
    want = _original(model, _normalised(pixels, MEAN, STD))
    np.testing.assert_allclose(logits, want, atol=0.05)


def test_channel_count_must_match_mean_and_std() -> None:
    model = _float_model("unet-isbi")
    with pytest.raises(ValueError, match=r"1 channels .* mean/std give 3"):
        canonicalise(
            model,
            input_name=model.graph.input[0].name,
            scores_output=model.graph.output[0].name,
            mean=MEAN,
            std=STD,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_name": "image"}, "no input 'image'; its inputs: \\['pixels'\\]"),
        ({"scores_output": "logits"}, "no output 'logits'; its outputs: \\['out'\\]"),
        ({"mean": [0.5, 0.5]}, "one value per channel"),
        ({"std": [1.0, 0.0, 1.0]}, "std values must be positive"),
        ({"output_kind": "votes"}, "output_kind must be"),
        ({"labels_axis": 1}, "labels_axis is 1 or 3, for output_kind='labels' only"),
    ],
)
def test_what_cannot_be_wrapped_is_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "input_name": "pixels",
        "scores_output": "out",
        "mean": MEAN,
        "std": STD,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        canonicalise(_conv_model(), **args)  # type: ignore[arg-type]


def test_two_inputs_are_refused() -> None:
    model = _conv_model()
    model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    with pytest.raises(ValueError, match="feeds only the image"):
        canonicalise(model, input_name="pixels", scores_output="out", mean=MEAN, std=STD)


@pytest.mark.parametrize("fixed", [None, (24, 32)], ids=["dynamic-size", "fixed-size"])
def test_fixed_batch_of_one_runs_once_per_image(fixed: tuple[int, int] | None) -> None:
    """torch.onnx.export without dynamic axes fixes the batch at 1 (and the size): the
    service still sends batches (tiles, dynamic batching, a v2 batch)."""
    model = _conv_model(batch=1, fixed=fixed, aux=True)
    wrapped = canonicalise(model, input_name="pixels", scores_output="out", mean=MEAN, std=STD)
    pixels = _pixels(3, 3, 24, 32)
    logits, labels = _session(wrapped).run(None, {"image": pixels})
    assert logits.shape == (3, 4, 24, 32) and labels.shape == (3, 24, 32)
    x = _normalised(pixels, MEAN, STD)
    want = np.concatenate([_original(model, x[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(logits, want, atol=1e-4)
    np.testing.assert_array_equal(labels, logits.argmax(1))


def test_fixed_batch_above_one_is_refused() -> None:
    with pytest.raises(ValueError, match="fixed batch of 4"):
        canonicalise(
            _conv_model(batch=4), input_name="pixels", scores_output="out", mean=MEAN, std=STD
        )
