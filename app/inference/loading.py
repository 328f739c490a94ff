"""Loading one model file: its session, checked against its spec and warmed up."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.spec import ModelSpec


def check_graph(session: ort.InferenceSession, spec: ModelSpec) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if spec.input_name not in inputs:
        raise ValueError(f"graph has no input {spec.input_name!r} named in its metadata")
    shape = inputs[spec.input_name].shape
    wanted = "tensor(uint8)" if spec.input_dtype == "uint8" else "tensor(float)"
    if inputs[spec.input_name].type != wanted:
        raise ValueError(
            f"input {spec.input_name!r} is {inputs[spec.input_name].type}, but the metadata's "
            f"input_dtype {spec.input_dtype!r} needs {wanted}"
        )
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != spec.input_channels):
        raise ValueError(f"input shape {shape} does not match {spec.input_channels} channels NCHW")
    missing = {spec.logits_output, spec.labels_output} - {None} - outputs
    if missing:
        raise ValueError(
            f"graph lacks outputs {sorted(str(m) for m in missing)} named in its metadata"
        )


def warm_up(session: ort.InferenceSession, spec: ModelSpec) -> None:
    """One run on a dummy input, so the first request does not pay for initialisation; its
    scores (when the graph has them) and class map must have the shapes the spec promises."""
    side = spec.size_multiple * max(1, -(-64 // spec.size_multiple))
    dtype = np.uint8 if spec.input_dtype == "uint8" else np.float32
    dummy = np.zeros((1, spec.input_channels, side, side), dtype)
    outputs = session.run(None, {spec.input_name: dummy})
    names = [o.name for o in session.get_outputs()]
    if spec.logits_output is not None:
        logits = outputs[names.index(spec.logits_output)]
        if logits.shape[1] != spec.num_classes or logits.shape[2:] != (side, side):
            raise ValueError(
                f"warm-up output {tuple(logits.shape)} does not match {spec.num_classes} "
                "classes at input resolution"
            )
    if spec.labels_output is not None:
        labels = outputs[names.index(spec.labels_output)]
        if labels.shape != (1, side, side) or labels.dtype.kind not in "iu":
            raise ValueError(
                f"warm-up labels {tuple(labels.shape)} {labels.dtype} are not integer class "
                f"indices of shape (1, {side}, {side}) (the input's resolution)"
            )
        if labels.min() < 0 or labels.max() >= spec.num_classes:
            raise ValueError(
                f"warm-up labels range {int(labels.min())}..{int(labels.max())}, outside "
                f"the {spec.num_classes} classes of the metadata"
            )


# onnxruntime's source locations, with the C++ function after them:
# "/onnxruntime_src/onnxruntime/core/graph/model.cc:256 onnxruntime::Model::Model(...)".
_SOURCE_LOCATION = re.compile(
    r"(?:/[\w.+-]+)+\.(?:cc|cpp|cxx|c|h|hpp|cu|cuh):\d+(?:\s+[^()]*?::[^()]*?\([^)]*\)(?:\s*const)?)?"
)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(?:/[^\s/'\"(),;:\[\]]+)+/?")


def public_reason(message: str, path: Path) -> str:
    """A failure's text as clients see it (on /health/ready, open without a key): file names
    only, no directories, no onnxruntime source paths. The log has the full text."""
    message = message.replace(str(path), path.name).replace(str(path.parent), "<model dir>")
    message = _SOURCE_LOCATION.sub("", message)
    message = _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], message)
    return " ".join(message.split())[:500]
