"""export/uint8_input.py: a float-input file re-shipped as a uint8-input one, checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from export.accuracy import graph_input, read_spec
from export.metadata import write_metadata
from export.uint8_input import main, wrap

SHIPPED = Path(__file__).resolve().parents[2] / "app" / "shipped_models"


def float_unet(path: Path) -> None:
    """The float-input U-Net inside the shipped (wrapped) file, with a float32 spec."""
    shipped = onnx.load(str(SHIPPED / "unet-isbi.onnx"))
    for name, channels in [("model/image", 1), ("model/logits", 2)]:
        dims = ["batch", channels, "height", "width"]
        shipped.graph.value_info.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)
        )
    inner = onnx.utils.Extractor(shipped).extract_model(["model/image"], ["model/logits"])
    onnx.save(inner, str(path))
    spec = read_spec(SHIPPED / "unet-isbi.onnx")
    float_spec = spec.model_copy(
        update={
            "input_dtype": "float32",
            "input_name": "model/image",
            "logits_output": "model/logits",
            "labels_output": None,
        }
    )
    write_metadata(path, float_spec)


def test_the_wrapped_file_takes_uint8_and_gives_the_float_files_logits(tmp_path: Path) -> None:
    original, wrapped = tmp_path / "float.onnx", tmp_path / "wrapped.onnx"
    float_unet(original)
    wrap(original, wrapped)

    spec = read_spec(wrapped)
    assert spec.input_dtype == "uint8" and spec.schema_version == 2
    assert (spec.input_name, spec.logits_output, spec.labels_output) == (
        "image",
        "logits",
        "labels",
    )
    pixels = np.random.default_rng(0).integers(0, 256, (40, 56), dtype=np.uint8)
    before = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(wrapped), providers=["CPUExecutionProvider"])
    (want,) = before.run(None, {"model/image": graph_input(read_spec(original), pixels)})
    logits, labels = after.run(None, {"image": graph_input(spec, pixels)})
    np.testing.assert_allclose(logits, want, atol=1e-4)
    assert labels.dtype == np.uint8 and (labels == want.argmax(1)).mean() > 0.999
    with pytest.raises(ValueError, match="already takes uint8"):
        wrap(wrapped, tmp_path / "twice.onnx")


@pytest.mark.shared_data
def test_the_cli_replaces_the_file_and_says_so_in_the_card(tmp_path: Path) -> None:
    model = tmp_path / "unet-isbi.onnx"
    float_unet(model)
    card = tmp_path / "unet-isbi.md"
    card.write_text(
        "# unet-isbi\n\n- **Input**: 1 channel(s), `(v / 255 - mean) / std`,\n"
        "  mean [0.49], std [0.17];\n  height and width padded (mirror) to a multiple of 16\n"
        "- **Classes**: 0 membrane, 1 cell\n"
    )

    assert main([str(model)]) == 0

    assert read_spec(model).input_dtype == "uint8"
    text = card.read_text()
    assert "raw uint8 pixels" in text and "mean [0.49], std [0.17]" in text
    assert "multiple of 16" in text and "differ on 0 of 1,048,576 pixels" in text
    assert "- **Classes**: 0 membrane, 1 cell" in text
