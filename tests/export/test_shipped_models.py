"""The trained ONNX files the service loads by default: valid metadata and sane predictions."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from app.spec import ModelSpec
from models.datasets import DEFAULT_DATA_ROOT, camvid_classes
from models.metrics import confusion_matrix, mean_iou, pixel_error

SHIPPED = Path(__file__).resolve().parents[2] / "app" / "shipped_models"
needs_data = pytest.mark.shared_data  # tests/conftest.py: skips outside CI when missing


def load(name: str) -> tuple[ModelSpec, ort.InferenceSession]:
    path = SHIPPED / f"{name}.onnx"
    proto = onnx.load(str(path))
    spec = ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props})
    return spec, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def segment(spec: ModelSpec, session: ort.InferenceSession, image: np.ndarray) -> np.ndarray:
    x = image.astype(np.float32) / 255.0
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    x = (x - np.array(spec.mean, np.float32)[:, None, None]) / np.array(spec.std, np.float32)[
        :, None, None
    ]
    h, w = x.shape[-2:]
    m = spec.size_multiple
    x = np.pad(x, ((0, 0), (0, (-h) % m), (0, (-w) % m)), mode="reflect")
    (labels,) = session.run([spec.labels_output or "labels"], {spec.input_name: x[None]})
    return np.asarray(labels[0, :h, :w])


def test_both_models_are_shipped_small_and_valid() -> None:
    assert {p.stem for p in SHIPPED.glob("*.onnx")} == {"unet-isbi", "dilated-camvid"}
    for path in SHIPPED.glob("*.onnx"):
        assert path.stat().st_size < 20 * 1024 * 1024
        onnx.checker.check_model(str(path))
        spec, _ = load(path.stem)
        assert spec.name == path.stem
        assert (SHIPPED / f"{path.stem}.md").is_file()
        assert spec.metrics and spec.git_commit and spec.exported_at


def test_unet_isbi_metadata() -> None:
    spec, _ = load("unet-isbi")
    assert spec.classes == ["membrane", "cell"] and spec.input_channels == 1
    assert spec.size_multiple == 16


@needs_data
def test_dilated_camvid_metadata_matches_classes_csv() -> None:
    spec, _ = load("dilated-camvid")
    names, palette = camvid_classes(DEFAULT_DATA_ROOT)
    assert spec.classes == names and [tuple(c) for c in spec.palette] == palette
    assert spec.input_channels == 3 and spec.size_multiple == 8


@needs_data
def test_unet_segments_a_held_out_slice_sanely() -> None:
    spec, session = load("unet-isbi")
    base = DEFAULT_DATA_ROOT / "isbi2012"
    image = np.asarray(Image.open(base / "images" / "22.png").convert("L"))
    truth = (np.asarray(Image.open(base / "labels" / "22.png")) > 127).astype(np.uint8)
    pred = segment(spec, session, image[:500, :437])  # odd size: padding and crop-back
    assert pred.shape == (500, 437)
    membrane = (pred == 0).mean()
    assert 0.12 < membrane < 0.35  # README: 18.7-27.0 % membrane per slice
    assert pixel_error(confusion_matrix(pred, truth[:500, :437], 2)) < 0.12


@needs_data
def test_dilated_segments_a_val_frame_sanely() -> None:
    spec, session = load("dilated-camvid")
    base = DEFAULT_DATA_ROOT / "camvid"
    name = sorted(p.name for p in (base / "val").glob("*.png"))[50]
    image = np.asarray(Image.open(base / "val" / name).convert("RGB"))
    truth = np.asarray(Image.open(base / "valannot" / name))
    pred = segment(spec, session, image)
    assert pred.shape == (360, 480)
    cm = confusion_matrix(pred, truth, 11, ignore_index=11)
    assert np.trace(cm) / cm.sum() > 0.7  # global accuracy on a street scene
    assert mean_iou(cm) > 0.3
    assert (pred[:60] == 0).mean() > 0.3  # the top of a street frame is mostly sky
