"""`segserve import`: any segmentation ONNX file into a served model of the repository.

The model is probed by running it (onnxruntime, CPU) on random inputs: which input takes
the image and in which layout, the size multiple (the smallest power of two whose odd
multiple it accepts), whether its height and width are fixed, which output holds the scores
(torchvision answers `out` and `aux`), the number of classes (checked against the names),
the output stride (SegFormer answers at 1/4), and whether the scores are probabilities. A
model that answers class labels only (its argmax inside: an integer (N, H, W) or
(N, 1, H, W) output, `--output-kind labels`) is imported as such: its class count cannot be
read from labels, so `--classes` is required and the labels seen on the probes must be
below it; it then serves class maps but no probabilities, confidence or TTA. The
model is then wrapped into the canonical graph (export/canonical.py: uint8 pixels in,
logits and uint8 labels out at input size; labels only for a labels model), checked
against the original on a probe, and
written to `REPO/NAME/VERSION/model.onnx` with its spec. What the probe cannot settle is an
`ImportProblem` naming the flag to set; a model is never written that would load and answer
garbage. Needs `onnx` (the `import` extra) and onnxruntime; not torch.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from app.spec import ModelSpec, TileSpec
from export.canonical import Layout, canonicalise
from export.importer_inputs import RGB, ImportProblem, voc_palette
from export.importer_labels import (
    check_label_range,
    holds_labels,
    labels_layout,
    labels_output,
    labels_wanted,
    nearest,
)
from export.metadata import version_number

OutputKind = Literal["logits", "probabilities", "labels"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SCORE_NAMES = ("out", "logits", "output", "scores")  # preferred among several outputs
PROBE_BASE = 64  # probe sizes: PROBE_BASE + m for m = 1, 2, 4, ...
MAX_MULTIPLE = 64
NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"  # app/spec.py's ModelSpec.name
AGREEMENT = 0.99  # wrapped vs original class map on the self-check probe


@dataclass
class ImportRequest:
    source: Path
    repo: Path
    name: str
    version: str | None = None
    classes: list[str] | None = None
    palette: list[RGB] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    layout: Layout | None = None
    input: str | None = None
    output: str | None = None
    output_kind: OutputKind | None = None
    size_multiple: int | None = None
    tile_size: int | None = None
    tile_overlap: int | None = None
    description: str = ""


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


@dataclass
class Imported:
    path: Path
    spec: ModelSpec
    probe: Probe


def import_model(request: ImportRequest) -> Imported:
    """Probe, wrap, check and write the model; the written file's path and spec."""
    try:
        original = onnx.load(str(request.source))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise ImportProblem(f"{request.source}: not a readable ONNX file ({exc})") from exc
    if not re.fullmatch(NAME_PATTERN, request.name):
        raise ImportProblem(
            f"--name {request.name!r}: lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 64"
        )
    version = request.version or str(_next_version(request.repo / request.name))
    if not version.isdigit() or int(version) < 1:
        raise ImportProblem(
            f"--version {version!r}: versions are positive integers (the folder name)"
        )
    target = request.repo / request.name / version / "model.onnx"
    if target.exists():
        raise ImportProblem(f"{target} exists: pick another --version")
    session = _session(original.SerializeToString(), request.source)
    probe = probe_model(session, request)
    mean = request.mean or (IMAGENET_MEAN if probe.channels == 3 else [0.5])
    std = request.std or (IMAGENET_STD if probe.channels == 3 else [0.5])
    mean, std = (v * probe.channels if len(v) == 1 else v for v in (mean, std))  # one for all
    if request.mean is None or request.std is None:
        probe.notes.append(
            f"normalisation: mean {mean}, std {std} (the default; set --mean/--std if the "
            "model was trained with others)"
        )
    if len(mean) != probe.channels or len(std) != probe.channels:
        raise ImportProblem(
            f"the model takes {probe.channels} channels: --mean and --std need "
            f"{probe.channels} values each"
        )
    classes = _class_names(request, probe)
    try:
        wrapped = canonicalise(
            original,
            input_name=probe.input,
            scores_output=probe.output,
            mean=mean,
            std=std,
            layout=probe.layout,
            scores_layout=probe.scores_layout,
            output_kind=probe.kind,
            resize_to_input=probe.stride != 1,
            labels_axis=probe.labels_axis,
        )
    except ValueError as exc:
        raise ImportProblem(str(exc)) from exc
    spec = _spec(request, version, probe, classes, mean, std, original)
    _self_check(session, wrapped, probe, spec)
    _write(wrapped, spec, target)
    return Imported(target, spec, probe)


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
    if image.type not in _FLOAT_TYPES:
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
        probe_hw = (_align(PROBE_BASE, multiple), _align(PROBE_BASE * 3 // 2, multiple))
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
        self.dtype = _numpy_dtype(type_)
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


def _class_names(request: ImportRequest, probe: Probe) -> list[str]:
    if request.classes is None:
        raise ImportProblem(
            f"the model answers {probe.classes} classes: name them with --classes a,b,... or "
            "--classes-file"
        )
    return request.classes


def _spec(
    request: ImportRequest,
    version: str,
    probe: Probe,
    classes: list[str],
    mean: list[float],
    std: list[float],
    original: onnx.ModelProto,
) -> ModelSpec:
    palette = request.palette or voc_palette(len(classes))
    if len(palette) != len(classes):
        raise ImportProblem(f"--palette-file has {len(palette)} colours for {len(classes)} classes")
    multiple = probe.size_multiple
    tile: TileSpec | None = None
    size = request.tile_size
    overlap = request.tile_overlap
    if probe.fixed is not None and probe.fixed[0] == probe.fixed[1] and size is None:
        size = probe.fixed[0]
    if size is not None or overlap is not None or 512 % multiple or 64 % multiple:
        size = size or _align(512, multiple)
        overlap = overlap if overlap is not None else _align(size // 8, multiple)
        if size % multiple or overlap % multiple:
            raise ImportProblem(
                f"--tile-size and --tile-overlap must be multiples of the size multiple {multiple}"
            )
        try:
            tile = TileSpec(size=size, overlap=overlap)
        except ValueError as exc:
            raise ImportProblem(f"--tile-size/--tile-overlap: {exc}") from exc
    producer = " ".join(p for p in (original.producer_name, original.producer_version) if p)
    try:
        return ModelSpec(
            schema_version=2,
            name=request.name,
            version=version,
            description=" ".join(
                [request.description or f"Imported from {request.source.name}."]
                + [f"Probe: {'; '.join(probe.notes)}."] * bool(probe.notes)
            ),
            architecture=f"imported ONNX ({producer or 'unknown producer'})",
            classes=classes,
            palette=palette,
            input_channels=1 if probe.channels == 1 else 3,
            mean=mean,
            std=std,
            size_multiple=multiple,
            input_dtype="uint8",
            logits_output=None if probe.kind == "labels" else "logits",
            tile=tile,
            exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
    except ValueError as exc:
        raise ImportProblem(f"the spec would be invalid: {exc}") from exc


def _self_check(
    session: ort.InferenceSession, wrapped: onnx.ModelProto, probe: Probe, spec: ModelSpec
) -> None:
    """The wrapped graph answers the original's class map on a probe: the original fed the
    service's numpy normalisation, its scores upsampled bilinearly in numpy."""
    if probe.fixed is not None:
        h, w = probe.fixed
    else:
        h, w = _align(PROBE_BASE, spec.size_multiple), _align(PROBE_BASE + 32, spec.size_multiple)
    pixels = np.random.default_rng(7).integers(0, 256, (1, probe.channels, h, w), np.uint8)
    canonical = _session(wrapped.SerializeToString(), Path("the wrapped model"))
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    x = (pixels.astype(np.float32) / np.float32(255) - mean) / std
    feed = x.transpose(0, 2, 3, 1) if probe.layout == "NHWC" else x
    dtype = _numpy_dtype(session.get_inputs()[0].type)
    scores = session.run([probe.output], {probe.input: feed.astype(dtype)})[0]
    if probe.kind == "labels":
        (labels,) = canonical.run(["labels"], {"image": pixels})
        if labels.shape != (1, h, w):
            raise ImportProblem(
                f"the wrapped model answered labels {labels.shape} for a {h}x{w} input "
                f"(expected (1, {h}, {w})): set --output/--layout"
            )
        original = (
            scores[0] if probe.labels_axis is None else scores[0].squeeze(probe.labels_axis - 1)
        )
        check_label_range(original, spec.num_classes, probe.output, "the self-check probe")
        want = nearest(original, h, w)
    else:
        logits, labels = canonical.run(["logits", "labels"], {"image": pixels})
        if logits.shape != (1, spec.num_classes, h, w) or labels.shape != (1, h, w):
            raise ImportProblem(
                f"the wrapped model answered {logits.shape} for a {h}x{w} input (expected "
                f"(1, {spec.num_classes}, {h}, {w})): set --output/--layout"
            )
        if probe.scores_layout == "NHWC":
            scores = scores.transpose(0, 3, 1, 2)
        want = bilinear(scores[0].astype(np.float32), h, w).argmax(0)
    agreement = float((want == labels[0]).mean())
    if agreement < AGREEMENT:
        raise ImportProblem(
            f"the wrapped model's class map agrees with the original's on only {agreement:.1%} "
            "of a probe's pixels: check --layout, --output and --output-kind"
        )


def bilinear(scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """(K, h, w) to (K, height, width) as torch's interpolate(bilinear, align_corners=False)
    and ONNX Resize(linear, half_pixel) do it."""

    def axis(out: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(out) + 0.5) * size / out - 0.5, 0, size - 1)
        low = np.floor(src).astype(np.int64)
        return low, np.minimum(low + 1, size - 1), (src - low).astype(np.float32)

    y0, y1, fy = axis(height, scores.shape[1])
    x0, x1, fx = axis(width, scores.shape[2])
    rows = scores[:, y0] * (1 - fy)[:, None] + scores[:, y1] * fy[:, None]
    out: np.ndarray = rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx
    return out


def _write(wrapped: onnx.ModelProto, spec: ModelSpec, target: Path) -> None:
    del wrapped.metadata_props[:]
    for key, value in spec.to_metadata().items():
        wrapped.metadata_props.add(key=key, value=value)
    wrapped.doc_string = spec.description
    wrapped.model_version = version_number(spec.version)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed, so a repository poll never reads half a file.
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".import-", suffix=".onnx")
    os.close(fd)
    try:
        onnx.save(wrapped, temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _next_version(folder: Path) -> int:
    existing = [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(existing, default=0) + 1


def _session(model: bytes, source: Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail, InvalidGraph, ...
        raise ImportProblem(f"{source}: onnxruntime cannot load it ({exc})") from exc


def _numpy_dtype(onnx_type: str) -> type[np.floating]:
    if onnx_type == "tensor(float16)":
        return np.float16
    return np.float64 if onnx_type == "tensor(double)" else np.float32


def _align(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _names(values: list[ort.NodeArg]) -> list[str]:
    return [v.name for v in values]


_FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")
