"""The trained ONNX files the service loads by default: valid metadata and sane predictions,
and their INT8/FP16 variants (export/quantize.py): same contract, accurate, agreeing."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from app.spec import ModelSpec
from export.accuracy import graph_input
from export.quantize import MAX_MIOU_DROP, MAX_PIXEL_ERROR_RISE
from models.datasets import DEFAULT_DATA_ROOT, camvid_classes
from models.metrics import confusion_matrix, mean_iou, pixel_error

SHIPPED = Path(__file__).resolve().parents[2] / "app" / "shipped_models"
needs_data = pytest.mark.shared_data  # tests/conftest.py: skips outside CI when missing
MODELS = ("unet-isbi", "dilated-camvid")
VARIANTS = ("unet-isbi.int8", "unet-isbi.fp16", "dilated-camvid.int8", "dilated-camvid.fp16")
# The part of the spec a variant may change; the rest (classes, normalisation, input
# type, tiling...) is the FP32 file's, so the service treats both alike.
VARIANT_FIELDS = {"precision", "metrics", "schema_version", "git_commit", "exported_at"}


def load(name: str) -> tuple[ModelSpec, ort.InferenceSession]:
    path = SHIPPED / f"{name}.onnx"
    proto = onnx.load(str(path))
    spec = ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props})
    return spec, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def segment(spec: ModelSpec, session: ort.InferenceSession, image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    x = graph_input(spec, image)  # uint8 pixels or normalised floats, as the spec says
    (labels,) = session.run([spec.labels_output or "labels"], {spec.input_name: x})
    return np.asarray(labels[0, :h, :w])


def test_both_models_and_their_variants_are_shipped_small_and_valid() -> None:
    assert {p.stem for p in SHIPPED.glob("*.onnx")} == set(MODELS) | set(VARIANTS)
    for path in SHIPPED.glob("*.onnx"):
        assert path.stat().st_size < 32 * 1024 * 1024
        onnx.checker.check_model(str(path))
        spec, _ = load(path.stem)
        assert spec.name == path.stem.split(".")[0]
        assert (SHIPPED / f"{spec.name}.md").is_file()
        assert spec.metrics and spec.git_commit and spec.exported_at


@pytest.mark.parametrize("name", MODELS)
def test_shipped_models_take_uint8_pixels_and_answer_uint8_labels(name: str) -> None:
    spec, session = load(name)
    assert spec.input_dtype == "uint8" and spec.precision == "fp32" and spec.schema_version == 2
    (image,) = session.get_inputs()
    assert image.type == "tensor(uint8)"
    types = {o.name: o.type for o in session.get_outputs()}
    assert types == {"logits": "tensor(float)", "labels": "tensor(uint8)"}
    assert "uint8 pixels" in (SHIPPED / f"{name}.md").read_text()


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_metadata_is_the_fp32_contract_with_its_measured_accuracy(variant: str) -> None:
    spec, session = load(variant)
    base, _ = load(spec.name)
    assert spec.precision == variant.split(".")[1] and spec.schema_version == 2
    assert spec.model_dump(exclude=VARIANT_FIELDS) == base.model_dump(exclude=VARIANT_FIELDS)
    assert [i.type for i in session.get_inputs()] == ["tensor(uint8)"]
    assert {o.name: o.type for o in session.get_outputs()} == {
        "logits": "tensor(float)",
        "labels": "tensor(uint8)",
    }
    m = spec.metrics
    assert m["fp32/mean_iou"] - m["mean_iou"] <= MAX_MIOU_DROP  # the export gate held
    assert m["pixel_error"] - m["fp32/pixel_error"] <= MAX_PIXEL_ERROR_RISE
    assert 0.97 < m["agreement_with_fp32"] <= 1.0
    card = (SHIPPED / f"{spec.name}.md").read_text()
    assert f"### {spec.precision} (" in card.split("## Precision variants")[1]


def val_image(name: str) -> np.ndarray:
    if name == "unet-isbi":
        return np.asarray(Image.open(DEFAULT_DATA_ROOT / "isbi2012" / "images" / "22.png"))
    base = DEFAULT_DATA_ROOT / "camvid" / "val"
    frame = sorted(p.name for p in base.glob("*.png"))[50]
    return np.asarray(Image.open(base / frame).convert("RGB"))


@needs_data
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_agrees_with_fp32_on_a_validation_image(variant: str) -> None:
    spec, session = load(variant)
    base, base_session = load(spec.name)
    image = val_image(spec.name)
    ours, theirs = segment(spec, session, image), segment(base, base_session, image)
    # INT8 moves boundary pixels (measured 0.98-0.998 over the validation sets); FP16
    # only near-ties; a broken variant (wrong scales, wrong input) disagrees on most.
    assert float((ours == theirs).mean()) > (0.97 if spec.precision == "int8" else 0.999)


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
