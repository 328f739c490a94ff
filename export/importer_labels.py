"""`segserve import` for a model that answers class labels only (its argmax inside).

Such a model is imported with `--output-kind labels` (or found to answer labels when it has
no scores output): its labels are an integer (N, H, W), (N, 1, H, W) or (N, H, W, 1) map,
possibly at an output stride. Labels cannot tell how many classes there are, so
`--classes` is required, and the labels seen on the probes must be below that count. The
canonical graph resizes strided labels by nearest neighbour (`nearest` is the same in numpy,
for the self-check); the model then serves class maps but no probabilities, confidence or TTA.
"""

from __future__ import annotations

import numpy as np

from export.importer_inputs import ImportProblem


def holds_labels(value: np.ndarray) -> bool:
    """Integer (or boolean) class indices, or any rank-3 map: not per-class scores."""
    return value.dtype.kind in "iub" or value.ndim == 3


def labels_wanted(
    outputs: dict[str, np.ndarray], output_kind: str | None, output: str | None
) -> bool:
    """--output-kind labels, or (no kind given) the output to import holds labels: the only
    output, the one --output names, or the only labels when no output holds scores."""
    if output_kind is not None:
        return output_kind == "labels"
    if output is not None:
        return output in outputs and holds_labels(outputs[output])
    return all(holds_labels(v) for v in outputs.values())


def labels_output(outputs: dict[str, np.ndarray], wanted: str | None) -> str:
    names = list(outputs)
    if wanted is not None:
        if wanted not in outputs:
            raise ImportProblem(f"--output {wanted!r}: the model's outputs are {names}")
        return wanted
    labels = [n for n in names if holds_labels(outputs[n])]
    if len(names) == 1 or len(labels) == 1:
        return names[0] if len(names) == 1 else labels[0]
    raise ImportProblem(
        f"the model answers {names}: say which holds the class labels with --output"
    )


def labels_layout(
    labels: np.ndarray, output: str, classes: list[str] | None
) -> tuple[int | None, tuple[int, int]]:
    """The size-1 axis to squeeze ((N, 1, H, W): 1, (N, H, W, 1): 3, (N, H, W): None) and
    the (h, w) of a probe's labels output; the labels must be class indices below the
    number of `classes` (which labels alone cannot tell, so it is required)."""
    shape = labels.shape
    axis: int | None = None
    if labels.ndim == 4 and shape[1] == 1:
        axis = 1
    elif labels.ndim == 4 and shape[3] == 1:
        axis = 3
    if not (labels.ndim == 3 or axis is not None) or shape[0] != 1:
        raise ImportProblem(
            f"output {output!r} has shape {shape}; class labels are (N, H, W) or (N, 1, H, W): "
            "name the labels output with --output, or import the scores (--output-kind logits)"
        )
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise ImportProblem(
            f"--output-kind labels, but output {output!r} holds non-integer values: leave "
            "--output-kind out to import it as scores"
        )
    if classes is None:
        raise ImportProblem(
            f"output {output!r} holds class labels, which do not tell how many classes the "
            "model has: name them with --classes a,b,... or --classes-file"
        )
    if len(classes) > 256:
        raise ImportProblem(f"{len(classes)} classes; segserve serves at most 256")
    check_label_range(labels, len(classes), output, "a probe")
    h, w = shape[2:4] if axis == 1 else shape[1:3]
    return axis, (int(h), int(w))


def check_label_range(labels: np.ndarray, classes: int, output: str, where: str) -> None:
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise ImportProblem(
            f"output {output!r} answered label {high if high >= classes else low} on {where}, "
            f"outside the {classes} classes named (0..{classes - 1}): check --classes and "
            "--output"
        )


def nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) to (height, width) as torch's interpolate(mode="nearest") and ONNX
    Resize(nearest, asymmetric, floor) do it: output pixel j reads floor(j * h / height)."""
    rows = np.arange(height) * labels.shape[0] // height
    cols = np.arange(width) * labels.shape[1] // width
    out: np.ndarray = labels[rows[:, None], cols[None, :]]
    return out
