"""An exported ONNX file's accuracy on the validation data, and its calibration data.

Both feed the graph the way its metadata says (`input_dtype`): normalised float32, or
the raw uint8 pixels of a graph that normalises inside; height and width mirror-padded
at the bottom and right to the size multiple, as the service does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader

from app.spec import ModelSpec
from models.datasets import load_camvid, load_isbi
from models.metrics import adapted_rand_error, confusion_matrix, summarize
from models.tasks import ISBI_VAL_SLICES

ISBI_TRAIN_SLICES = tuple(range(20))


def read_spec(path: Path) -> ModelSpec:
    proto = onnx.load(str(path), load_external_data=False)
    return ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props})


def graph_input(spec: ModelSpec, image: np.ndarray) -> np.ndarray:
    """(1, C, H', W') input for one uint8 (H, W) or (H, W, C) image, padded to the multiple."""
    chw = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    m = spec.size_multiple
    h, w = chw.shape[-2:]
    chw = np.pad(chw, ((0, 0), (0, (-h) % m), (0, (-w) % m)), mode="reflect")
    if spec.input_dtype == "uint8":
        return np.ascontiguousarray(chw[None], np.uint8)
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    return np.ascontiguousarray(((chw.astype(np.float32) / 255.0 - mean) / std)[None])


@dataclass
class Split:
    """uint8 images (N, H, W[, C]), labels (N, H, W) and the void label (or None)."""

    images: np.ndarray
    labels: np.ndarray
    ignore_index: int | None
    description: str


def validation_split(name: str, root: Path, limit: int | None = None) -> Split:
    if name == "unet-isbi":
        images, labels = load_isbi(root, ISBI_VAL_SLICES)
        what = f"ISBI 2012 validation slices {list(ISBI_VAL_SLICES)}"
        return Split(images, labels, None, what)
    if name == "dilated-camvid":
        images, labels, _ = load_camvid(root, "val")
        pick = evenly(len(images), limit)
        what = f"CamVid val, {len(pick)} of {len(images)} frames"
        return Split(images[pick], labels[pick], 11, what)
    raise KeyError(f"no validation data known for {name!r}")


def training_images(name: str, root: Path, count: int) -> tuple[np.ndarray, str]:
    """Calibration images: training data only, never the validation images."""
    if name == "unet-isbi":
        images, _ = load_isbi(root, ISBI_TRAIN_SLICES[:count])
        return images, f"ISBI 2012 training slices 0-{min(count, 20) - 1}"
    if name == "dilated-camvid":
        images, _, _ = load_camvid(root, "train")
        pick = evenly(len(images), count)
        return images[pick], f"CamVid train, {len(pick)} frames evenly spaced of {len(images)}"
    raise KeyError(f"no training data known for {name!r}")


def evenly(total: int, limit: int | None) -> np.ndarray:
    if limit is None or limit >= total:
        return np.arange(total)
    return np.linspace(0, total - 1, limit).round().astype(int)


class ImageReader(CalibrationDataReader):  # type: ignore[misc]  # untyped package
    """onnxruntime's calibration reader over uint8 images; `set_range` lets the quantizer
    collect a few images at a time (its CalibStridedMinMax), so memory stays bounded."""

    def __init__(self, spec: ModelSpec, images: np.ndarray) -> None:
        self.spec, self.images = spec, images
        self.set_range(0, len(images))

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending: Iterator[np.ndarray] = iter(self.images[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._pending, None)
        if image is None:
            return None
        return {self.spec.input_name: graph_input(self.spec, image)}


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def class_maps(path: Path, images: np.ndarray, threads: int = 1) -> np.ndarray:
    """(N, H, W) uint8 argmax of the file's logits on each image, cropped back."""
    spec = read_spec(path)
    run = session(path, threads)
    maps = []
    for image in images:
        (logits,) = run.run([spec.logits_output], {spec.input_name: graph_input(spec, image)})
        h, w = image.shape[:2]
        maps.append(np.asarray(logits[0].argmax(0)[:h, :w], np.uint8))
    return np.stack(maps)


def score(spec: ModelSpec, maps: np.ndarray, split: Split) -> dict[str, float]:
    """Validation metrics of class maps: pixel error, mean IoU and IoU per class; for the
    ISBI membranes also the adapted Rand error (mean over slices)."""
    k = spec.num_classes
    cm = np.zeros((k, k), np.int64)
    for pred, truth in zip(maps, split.labels, strict=True):
        cm += confusion_matrix(pred, truth, k, split.ignore_index)
    metrics = summarize(cm, spec.classes)
    if spec.name == "unet-isbi":
        rand = [adapted_rand_error(p, t) for p, t in zip(maps, split.labels, strict=True)]
        metrics["rand_error"] = float(np.mean(rand))
    return metrics
