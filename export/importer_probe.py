"""What running a model finds out, for `segserve import` (export/importer.py).

The model runs (onnxruntime, CPU) on random inputs: which input takes the image and in which
layout, the size multiple (the smallest power of two whose odd multiple it accepts), whether
its height and width are fixed, which output holds the scores (torchvision answers `out` and
`aux`), the number of classes (checked against the names), the output stride (SegFormer
answers at 1/4), and whether the scores are probabilities, or whether the model answers
class labels only (export/importer_labels.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.canonical import Layout, OutputKind
from export.importer_inputs import ImportProblem, ImportRequest
from export.importer_labels import holds_labels, labels_layout, labels_output, labels_wanted

SCORE_NAMES = ("out", "logits", "output", "scores")  # preferred among several outputs
PROBE_BASE = 64  # probe sizes: PROBE_BASE + m for m = 1, 2, 4, ...
MAX_MULTIPLE = 64
FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")


@dataclass
class Probe:
    """What running the model found out."""

    input: str
    layout: Layout
    channels: int
    fixed: tuple[int, int] | None
    size_multiple: int
    output: str
    scores_layout: Layout
    classes: int
    stride: float
    kind: OutputKind
    notes: list[str] = field(default_factory=list)
    labels_axis: int | None = None  # labels models: the size-1 axis of (N, 1, H, W) labels


def probe_model(session: ort.InferenceSession, request: ImportRequest) -> Probe:
    """What running the original model (an onnxruntime session of it) finds out."""
    if request.size_multiple is not None and not 1 <= request.size_multiple <= 1024:
        raise ImportProblem(f"--size-multiple {request.size_multiple}: 1 to 1024")
    inputs = session.get_inputs()
    if request.input is not None:
        chosen = [i for i in inputs if i.name == request.input]
        if not chosen:
            raise ImportProblem(
                f"--input {request.input!r}: the model's inputs are {_names(inputs)}"
            )
    elif len(inputs) == 1:
        chosen = inputs
    else:
        raise ImportProblem(
            f"the model has inputs {_names(inputs)}: say which is the image with --input"
        )
    image = chosen[0]
    if len(inputs) > 1:
        raise ImportProblem(
            f"the model needs inputs {_names(inputs)}; segserve feeds it the image only"
        )
    if image.type not in FLOAT_TYPES:
        raise ImportProblem(f"input {image.name!r} is {image.type}; segserve feeds float pixels")
    shape = list(image.shape)
    if len(shape) != 4:
        raise ImportProblem(f"input {image.name!r} has shape {shape}; an image input has rank 4")
    layout = request.layout or _guess_layout(shape)
    c_axis, h_axis, w_axis = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
    channels = shape[c_axis] if isinstance(shape[c_axis], int) else len(request.mean or [0] * 3)
    if channels not in (1, 3):
        raise ImportProblem(
            f"input {image.name!r} {shape} read as {layout} has {channels} channels; segserve "
            "feeds 1 or 3: set --layout if it is the other one"
        )
    notes: list[str] = []
    h, w = shape[h_axis], shape[w_axis]
    fixed = (h, w) if isinstance(h, int) and isinstance(w, int) else None
    runner = _Runner(session, image.name, image.type, layout, channels)
    if fixed is not None:
        multiple = 1  # the canonical graph resizes to the fixed size itself
        probe_hw = fixed
        if not runner.accepts(*fixed):
            raise ImportProblem(
                f"the model fails on its own fixed input size {fixed}: {runner.error}"
            )
        notes.append(
            f"fixed input size {fixed[0]}x{fixed[1]}: each pass is resized to it inside the "
            "graph" + ("; tiles of that size (the spec's tile size) feed it unresized" * (h == w))
        )
    else:
        multiple = request.size_multiple or _size_multiple(runner)
        probe_hw = (align(PROBE_BASE, multiple), align(PROBE_BASE * 3 // 2, multiple))
        if not runner.accepts(*probe_hw):
            raise ImportProblem(
                f"the model fails on a {probe_hw[0]}x{probe_hw[1]} input ({runner.error}): "
                "set --size-multiple"
            )
    outputs = runner.outputs
    if labels_wanted(outputs, request.output_kind, request.output):
        output = labels_output(outputs, request.output)
        labels_axis, labels_hw = labels_layout(outputs[output], output, request.classes)
        k = len(request.classes or ())
        stride = _stride(*probe_hw, *labels_hw)
        if stride is None or stride < 1:
            raise ImportProblem(
                f"output {output!r} {outputs[output].shape} is not a class map of a "
                f"{probe_hw[0]}x{probe_hw[1]} input at its size or a fraction of it: set "
                "--output (and --layout)"
            )
        notes.append(
            f"output {output!r} holds class labels only: served as class maps, without "
            "probabilities, confidence or test-time augmentation"
        )
        if stride != 1:
            notes.append(
                f"output stride {stride:g}: the labels are resized to the input size by "
                "nearest neighbour inside the graph"
            )
        return Probe(
            image.name, layout, channels, fixed, multiple, output, layout, k, stride, "labels",
            notes, labels_axis,
        )  # fmt: skip
    output = _scores_output(session, outputs, request.output)
    scores = outputs[output]
    k, scores_layout, stride = _scores_geometry(scores, probe_hw, layout, request, output)
    kind = _kind(scores, scores_layout, request.output_kind, output)
    if stride != 1:
        notes.append(
            f"output stride {stride:g}: the scores are resized bilinearly to the input size "
            "inside the graph"
        )
    return Probe(
        image.name, layout, channels, fixed, multiple, output, scores_layout, k, stride, kind, notes
    )


class _Runner:
    """Runs the original model on random (already normalised) inputs of a given size."""

    def __init__(
        self, session: ort.InferenceSession, name: str, type_: str, layout: Layout, channels: int
    ) -> None:
        self.session, self.name, self.layout, self.channels = session, name, layout, channels
        self.dtype = numpy_dtype(type_)
        self.outputs: dict[str, np.ndarray] = {}
        self.error = ""

    def accepts(self, height: int, width: int) -> bool:
        x = np.random.default_rng(height * 1000 + width).normal(
            size=(1, self.channels, height, width)
        )
        feed = x.transpose(0, 2, 3, 1) if self.layout == "NHWC" else x
        try:
            values = self.session.run(None, {self.name: feed.astype(self.dtype)})
        except Exception as exc:  # onnxruntime raises its own Fail, InvalidArgument, ...
            self.error = str(exc).splitlines()[0][:300]
            return False
        self.outputs = {o.name: v for o, v in zip(self.session.get_outputs(), values, strict=True)}
        return True


def _size_multiple(runner: _Runner) -> int:
    """The smallest power of two m whose odd multiple PROBE_BASE + m the model accepts."""
    m = 1
    while m <= MAX_MULTIPLE:
        side = PROBE_BASE + m
        if runner.accepts(side, side + 2 * m) and _spatial_ok(runner, side, side + 2 * m):
            return m
        m *= 2
    raise ImportProblem(
        f"the model failed on every probe size up to multiples of {MAX_MULTIPLE} "
        f"({runner.error or 'scores of an unexpected shape'}): set --size-multiple"
    )


def _spatial_ok(runner: _Runner, height: int, width: int) -> bool:
    """Some score output keeps the input's aspect ratio (a model can run at a size it pads
    internally, answering scores of another shape)."""
    for value in runner.outputs.values():
        # NCHW or NHWC scores, or (N, H, W) labels
        shapes = [value.shape[2:4], value.shape[1:3]] if value.ndim == 4 else [value.shape[1:]]
        if value.ndim in (3, 4) and any(_stride(height, width, *hw) for hw in shapes):
            return True
    return False


def _stride(height: int, width: int, h: int, w: int) -> float | None:
    """The common output stride of (h, w) for an input (height, width), or None."""
    if h <= 0 or w <= 0:
        return None
    if (h, w) == (height, width):
        return 1.0
    sy, sx = height / h, width / w
    return round((sy + sx) / 2, 3) if abs(sy - sx) <= 0.1 * max(sy, sx) else None


def _scores_output(
    session: ort.InferenceSession, outputs: dict[str, np.ndarray], wanted: str | None
) -> str:
    names = list(outputs)
    if wanted is not None:
        if wanted not in outputs:
            raise ImportProblem(f"--output {wanted!r}: the model's outputs are {names}")
        return _check_scores(wanted, outputs[wanted])
    if len(names) == 1:
        return _check_scores(names[0], outputs[names[0]])
    candidates = [n for n in names if outputs[n].ndim == 4 and outputs[n].dtype.kind == "f"]
    named = [n for n in candidates if n.lower() in SCORE_NAMES]
    if len(named) == 1:
        return named[0]
    if candidates:
        sizes = {n: int(np.prod(outputs[n].shape[1:])) for n in candidates}
        best = max(sizes.values())
        largest = [n for n in candidates if sizes[n] == best]
        if len(largest) == 1:
            return largest[0]
    raise ImportProblem(
        f"the model answers {names}: say which holds the class scores with --output"
    )


def _check_scores(name: str, value: np.ndarray) -> str:
    if holds_labels(value):
        raise ImportProblem(
            f"output {name!r} holds class labels ({value.dtype}, shape {value.shape}), not "
            "scores: import it with --output-kind labels (then no probabilities, confidence "
            "or TTA), or name the model's scores (before its argmax) with --output"
        )
    if value.ndim != 4 or value.dtype.kind != "f":
        raise ImportProblem(
            f"output {name!r} has shape {value.shape} ({value.dtype}); class scores are a "
            "rank-4 float tensor: name the scores output with --output"
        )
    return name


def _scores_geometry(
    scores: np.ndarray,
    probe_hw: tuple[int, int],
    layout: Layout,
    request: ImportRequest,
    output: str,
) -> tuple[int, Layout, float]:
    _check_scores(output, scores)
    options: list[tuple[Layout, int, float]] = []
    for scores_layout in (layout, "NHWC" if layout == "NCHW" else "NCHW"):
        k, h, w = (
            scores.shape[1:] if scores_layout == "NCHW" else (scores.shape[3], *scores.shape[1:3])
        )
        stride = _stride(*probe_hw, h, w)
        if stride is not None and k >= 2:
            options.append((scores_layout, k, stride))
    if request.classes is not None:
        fitting = [o for o in options if o[1] == len(request.classes)]
        if not fitting:
            counts = sorted({o[1] for o in options}) or [scores.shape[1]]
            raise ImportProblem(
                f"output {output!r} {scores.shape} answers {' or '.join(map(str, counts))} "
                f"classes, but {len(request.classes)} names were given (--classes/--classes-file)"
            )
        options = fitting
    if not options:
        raise ImportProblem(
            f"output {output!r} {scores.shape} does not look like per-class scores for a "
            f"{probe_hw[0]}x{probe_hw[1]} input: set --output (and --layout)"
        )
    scores_layout, k, stride = options[0]
    if stride < 1:
        raise ImportProblem(f"output {output!r} is larger than the input ({scores.shape})")
    if k > 256:
        raise ImportProblem(f"output {output!r} has {k} classes; segserve serves at most 256")
    return k, scores_layout, stride


def _kind(
    scores: np.ndarray, scores_layout: Layout, wanted: OutputKind | None, output: str
) -> OutputKind:
    axis = 1 if scores_layout == "NCHW" else 3
    sums = scores.astype(np.float64).sum(axis=axis)
    looks_like_probabilities = bool(
        scores.min() >= 0 and scores.max() <= 1 and np.allclose(sums, 1, atol=1e-3)
    )
    if wanted is None:
        return "probabilities" if looks_like_probabilities else "logits"
    if wanted == "probabilities" and not looks_like_probabilities:
        raise ImportProblem(
            f"--output-kind probabilities, but output {output!r} does not sum to 1 over its "
            "classes: leave --output-kind out (logits)"
        )
    return wanted


def _guess_layout(shape: list[int | str | None]) -> Layout:
    def channel_like(d: int | str | None) -> bool:
        return isinstance(d, int) and d in (1, 3)

    if channel_like(shape[1]) and not channel_like(shape[3]):
        return "NCHW"
    if channel_like(shape[3]) and not channel_like(shape[1]):
        return "NHWC"
    raise ImportProblem(f"input shape {shape} does not tell NCHW from NHWC: set --layout")


def load_session(model: bytes, source: Path) -> ort.InferenceSession:
    """A CPU onnxruntime session of a serialised model; `source` names it in the problem."""
    try:
        return ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail, InvalidGraph, ...
        raise ImportProblem(f"{source}: onnxruntime cannot load it ({exc})") from exc


def numpy_dtype(onnx_type: str) -> type[np.floating]:
    """The numpy type to feed an input of ONNX type `onnx_type`."""
    if onnx_type == "tensor(float16)":
        return np.float16
    return np.float64 if onnx_type == "tensor(double)" else np.float32


def align(value: int, multiple: int) -> int:
    """`value` rounded up to a multiple of `multiple`."""
    return -(-value // multiple) * multiple


def _names(values: list[ort.NodeArg]) -> list[str]:
    return [v.name for v in values]
