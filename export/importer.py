"""`segserve import`: any segmentation ONNX file into a served model of the repository.

The model is probed by running it (onnxruntime, CPU) on random inputs (export/importer_probe.py:
which input takes the image and in which layout, the size multiple, a fixed size, which output
holds the scores, the number of classes, the output stride, whether the scores are
probabilities). A model that answers class labels only (its argmax inside: an integer
(N, H, W) or (N, 1, H, W) output, `--output-kind labels`; export/importer_labels.py) is
imported as such: its class count cannot be read from labels, so `--classes` is required and
the labels seen on the probes must be below it; it then serves class maps but no
probabilities, confidence or TTA. The spec comes from the request's flags and files and the
probe (export/importer_spec.py, export/importer_inputs.py). The model is then wrapped into
the canonical graph (export/canonical.py: uint8 pixels in, logits and uint8 labels out at
input size; labels only for a labels model), checked against the original on a probe
(export/importer_check.py), and written here to `REPO/NAME/VERSION/model.onnx` with its
spec. What the probe cannot settle is an `ImportProblem` naming the flag to set; a model is
never written that would load and answer garbage. Needs `onnx` (the `import` extra) and
onnxruntime; not torch.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from app.spec import ModelSpec
from export.canonical import canonicalise
from export.importer_check import self_check
from export.importer_inputs import ImportProblem, ImportRequest
from export.importer_probe import Probe, load_session, probe_model
from export.importer_spec import build_spec, class_names, normalisation
from export.metadata import version_number

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"  # app/spec.py's ModelSpec.name


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
    session = load_session(original.SerializeToString(), request.source)
    probe = probe_model(session, request)
    mean, std = normalisation(request, probe)
    classes = class_names(request, probe)
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
    spec = build_spec(request, version, probe, classes, mean, std, original)
    self_check(session, wrapped, probe, spec)
    _write(wrapped, spec, target)
    return Imported(target, spec, probe)


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
