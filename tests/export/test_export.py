from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from app.spec import SPEC_KEY, ModelSpec
from export.card import count_macs, write_card
from export.metadata import build_spec, version_number, write_metadata
from export.onnx_export import export_onnx
from export.parity import ParityReport, check_parity
from models.registry import build_model
from models.tasks import Task
from tests.app.tiny_models import spec_for


def tiny_task() -> Task:
    return Task(
        name="tiny-unet",
        arch="unet",
        arch_options={},
        description="test",
        classes=["a", "b"],
        palette=[(0, 0, 0), (255, 255, 255)],
        mean=[0.5],
        std=[0.25],
        training_data="noise",
        data_terms="none",
        tile={"size": 64, "overlap": 8, "batch": 2},
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_model("unet", base_width=4, depth=2).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(model, in_channels=1, size_multiple=4, path=path)
    return model, path


def test_graph_has_named_dynamic_dims_and_two_outputs(
    exported: tuple[torch.nn.Module, Path],
) -> None:
    proto = onnx.load(str(exported[1]))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]
    assert [o.name for o in proto.graph.output] == ["logits", "labels"]
    assert proto.opset_import[0].version >= 17


def test_onnx_matches_torch_on_odd_sizes_and_batches(
    exported: tuple[torch.nn.Module, Path],
) -> None:
    model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 20, 36), (3, 1, 8, 4)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        logits, labels = session.run(None, {"image": x})
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert np.abs(logits - ref).max() <= 1e-4
        assert labels.shape == (shape[0], *shape[2:]) and labels.dtype == np.int64
        assert np.array_equal(labels, logits.argmax(1))


def test_parity_report_on_images(exported: tuple[torch.nn.Module, Path]) -> None:
    model, path = exported
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (23, 31), dtype=np.uint8) for _ in range(2)]
    report = check_parity(model, path, images, [0.5], [0.25], multiple=4)
    assert report.ok and report.images == 2 and report.max_abs_logit_diff <= 1e-4


def test_metadata_round_trip(exported: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    path = tmp_path / "meta.onnx"
    path.write_bytes(exported[1].read_bytes())
    spec = build_spec(
        tiny_task(), "1.2.3", {"pixel_error": 0.1, "iou/x": float("nan")}, 4, "unet tiny"
    )
    write_metadata(path, spec)
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert set(props) == {SPEC_KEY}
    back = ModelSpec.from_metadata(props)
    assert back == spec
    assert back.metrics == {"pixel_error": 0.1}  # NaN metrics are dropped, JSON has no NaN
    assert back.tile is not None and back.tile.batch == 2
    assert proto.model_version == 10203 == version_number("1.2.3")


def test_count_macs_by_hand() -> None:
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    assert count_macs(conv, (1, 2, 4, 5)) == 4 * 5 * 3 * 2 * 9


@pytest.mark.parametrize(("views", "named"), [(1, False), (8, True)])
def test_card_tells_how_the_validation_metrics_were_scored(
    tmp_path: Path, views: int, named: bool
) -> None:
    spec = spec_for("threshold", "tiny", metrics={"pixel_error": 0.07})
    checkpoint = {"config": {"threads": 2, "val_views": views}, "train_seconds": 120, "epoch": 3}
    card = tmp_path / "tiny.md"
    parity = ParityReport(
        images=2, max_abs_logit_diff=1e-6, argmax_agreement=1.0, labels_output_agreement=1.0
    )
    latency = {"labels_in_graph_ms": 1.0, "logits_numpy_argmax_ms": 1.2}
    write_card(card, spec, checkpoint, 10, 10**9, (1, 1, 64, 64), latency, parity, 2000, "x.png")
    text = card.read_text()
    assert "| pixel_error | 0.0700 |" in text
    assert "2 minutes on 2 CPU threads up to its best epoch, 3" in text
    assert ("each image scored under 8 flips/rotations, averaged" in text) is named


def test_card_shows_the_last_stages_curves_when_given(tmp_path: Path) -> None:
    spec = spec_for("threshold", "tiny", metrics={"pixel_error": 0.07})
    parent = {"config": {"threads": 1}, "train_seconds": 60, "epoch": 1}
    checkpoint = {"config": {"init_from": "a.pt"}, "epoch": 2, "parent": parent}
    parity = ParityReport(
        images=2, max_abs_logit_diff=1e-6, argmax_agreement=1.0, labels_output_agreement=1.0
    )
    latency = {"labels_in_graph_ms": 1.0, "logits_numpy_argmax_ms": 1.2}
    args = (spec, checkpoint, 10, 10**9, (1, 1, 64, 64), latency, parity, 2000, "x.png")
    write_card(tmp_path / "a.md", *args, curves_png="tiny-curves.png")
    text = (tmp_path / "a.md").read_text()
    assert "## Training curves (stage 2:" in text and "![curves](tiny-curves.png)" in text
    write_card(tmp_path / "b.md", *args)
    assert "curves" not in (tmp_path / "b.md").read_text()
