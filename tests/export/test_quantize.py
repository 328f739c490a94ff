"""export/quantize.py: the accuracy gate keeps good variants and refuses bad ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.accuracy import Split, class_maps, read_spec, training_images, validation_split
from export.quantize import (
    MAX_MIOU_DROP,
    MAX_PIXEL_ERROR_RISE,
    Verdict,
    main,
    make_variant,
    quantize_int8,
)
from models.datasets import DEFAULT_DATA_ROOT

SHIPPED = Path(__file__).resolve().parents[2] / "app" / "shipped_models"
UNET = SHIPPED / "unet-isbi.onnx"


def verdict(miou_drop: float, pixel_error_rise: float) -> Verdict:
    reference = {"mean_iou": 0.6, "pixel_error": 0.1}
    metrics = {"mean_iou": 0.6 - miou_drop, "pixel_error": 0.1 + pixel_error_rise}
    return Verdict("int8", metrics, reference, 0.99, "test")


def test_the_gate_allows_half_a_miou_point_and_two_thousandths_of_pixel_error() -> None:
    assert verdict(0.0, 0.0).ok
    assert verdict(MAX_MIOU_DROP - 1e-6, MAX_PIXEL_ERROR_RISE - 1e-6).ok
    assert verdict(-0.01, -0.01).ok  # better than FP32 is fine
    assert not verdict(MAX_MIOU_DROP + 1e-4, 0.0).ok
    assert not verdict(0.0, MAX_PIXEL_ERROR_RISE + 1e-4).ok
    assert "REFUSED" in verdict(0.01, 0.0).summary()


@pytest.fixture(scope="module")
def isbi_val() -> tuple[Split, np.ndarray]:
    """The ISBI validation slices and the shipped FP32 file's class maps on them."""
    split = validation_split("unet-isbi", DEFAULT_DATA_ROOT)
    return split, class_maps(UNET, split.images)


@pytest.mark.shared_data
def test_a_badly_calibrated_int8_variant_is_refused_and_not_written(
    tmp_path: Path, isbi_val: tuple[Split, np.ndarray]
) -> None:
    split, fp32_maps = isbi_val
    black = np.zeros((1, 512, 512), np.uint8)  # ranges from a blank slice clip real ones

    result = make_variant(
        UNET,
        tmp_path,
        "int8",
        lambda out: quantize_int8(UNET, out, black),
        split,
        fp32_maps,
    )

    assert not result.ok, result.summary()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.shared_data
def test_int8_calibrated_on_training_slices_is_kept_with_its_metrics(
    tmp_path: Path, isbi_val: tuple[Split, np.ndarray]
) -> None:
    split, fp32_maps = isbi_val
    images, _ = training_images("unet-isbi", DEFAULT_DATA_ROOT, 4)

    result = make_variant(
        UNET, tmp_path, "int8", lambda out: quantize_int8(UNET, out, images), split, fp32_maps
    )

    assert result.ok, result.summary()
    written = tmp_path / "unet-isbi.int8.onnx"
    spec = read_spec(written)
    assert spec.precision == "int8" and spec.schema_version == 2
    assert spec.name == "unet-isbi" and spec.input_dtype == read_spec(UNET).input_dtype
    assert spec.metrics["pixel_error"] == pytest.approx(result.metrics["pixel_error"])
    assert spec.metrics["fp32/pixel_error"] == pytest.approx(result.reference["pixel_error"])
    assert 0.99 < spec.metrics["agreement_with_fp32"] <= 1.0
    ops = {n.op_type for n in onnx.load(str(written)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.shared_data
def test_the_cli_writes_an_fp16_variant_and_its_card_section(tmp_path: Path) -> None:
    model = tmp_path / "unet-isbi.onnx"
    shutil.copy(UNET, model)
    card = tmp_path / "unet-isbi.md"
    card.write_text("# unet-isbi\n\n## Example predictions (validation)\nimage\n")

    assert main([str(model), "--out", str(tmp_path), "--precision", "fp16"]) == 0

    spec = read_spec(tmp_path / "unet-isbi.fp16.onnx")
    assert spec.precision == "fp16" and spec.metrics["agreement_with_fp32"] > 0.999
    graph = onnx.load(str(tmp_path / "unet-isbi.fp16.onnx")).graph
    original = onnx.load(str(model)).graph
    io = [*graph.input, *graph.output]
    assert [v.type for v in io] == [v.type for v in [*original.input, *original.output]]
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    text = card.read_text()
    assert "## Precision variants" in text and "### fp16 (`unet-isbi.fp16.onnx`" in text
    assert text.index("## Example predictions") < text.index("## Precision variants")
    # Run again: the section is replaced, not repeated.
    assert main([str(model), "--out", str(tmp_path), "--precision", "fp16"]) == 0
    assert card.read_text().count("## Precision variants") == 1
