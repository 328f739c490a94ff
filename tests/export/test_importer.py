"""export/importer.py and `segserve import`: what the probe finds out, what it refuses (with
the flag to set), and what it writes. Tiny hand-made graphs; tests/interop/ has real ones."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.cli import main
from app.spec import ModelSpec
from export.importer import import_model
from export.importer_check import bilinear
from export.importer_inputs import ImportProblem, ImportRequest, read_classes_file, voc_palette


def _model(
    path: Path,
    k: int = 4,
    multiple: int = 1,
    fixed: int | None = None,
    extra_output: str | None = None,
    labels_only: bool = False,
    layout: str = "NCHW",
    scores_name: str = "scores",
) -> Path:
    """A 3x3 convolution to k classes. `multiple`: a max-pool by `multiple`, upsampled back
    and added, so other sizes fail in onnxruntime (as a U-Net's concatenations do)."""
    weight = np.random.default_rng(0).normal(size=(k, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    nodes = []
    x = "x"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]))
        x = "xc"
    nodes.append(helper.make_node("Conv", [x, "w"], ["conv"], pads=[1, 1, 1, 1]))
    scores = "conv"
    if multiple > 1:
        scale = np.array([1, 1, multiple, multiple], np.float32)
        inits.append(numpy_helper.from_array(scale, "scale"))
        nodes += [
            helper.make_node("MaxPool", ["conv"], ["pool"], kernel_shape=[multiple] * 2,
                             strides=[multiple] * 2),
            helper.make_node("Resize", ["pool", "", "scale"], ["up"], mode="nearest"),
            helper.make_node("Add", ["conv", "up"], ["sum"]),
        ]  # fmt: skip
        scores = "sum"
    outputs = []
    if labels_only:
        nodes.append(helper.make_node("ArgMax", [scores], ["labels"], axis=1, keepdims=0))
        outputs.append(helper.make_tensor_value_info("labels", TensorProto.INT64, None))
    else:
        nodes.append(helper.make_node("Identity", [scores], [scores_name]))
        outputs.append(helper.make_tensor_value_info(scores_name, TensorProto.FLOAT, None))
    if extra_output:
        nodes.append(helper.make_node("Neg", [scores], [extra_output]))
        outputs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, None))
    side: int | str = fixed or "h"
    shape = ["n", 3, side, fixed or "w"] if layout == "NCHW" else ["n", side, fixed or "w", 3]
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], outputs, inits
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path
    )
    return path


def _request(tmp_path: Path, source: Path, **fields: object) -> ImportRequest:
    args: dict[str, object] = {"classes": ["a", "b", "c", "d"], **fields}
    return ImportRequest(source=source, repo=tmp_path / "repo", name="m", **args)  # type: ignore[arg-type]


def test_size_multiple_is_probed_and_the_model_serves_at_it(tmp_path: Path) -> None:
    source = _model(tmp_path / "m.onnx", multiple=8)
    imported = import_model(_request(tmp_path, source))
    assert imported.spec.size_multiple == 8
    assert imported.path == tmp_path / "repo" / "m" / "1" / "model.onnx"
    session = ort.InferenceSession(str(imported.path), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(1).integers(0, 256, (1, 3, 24, 40), np.uint8)
    logits, labels = session.run(None, {"image": pixels})
    assert logits.shape == (1, 4, 24, 40) and labels.dtype == np.uint8
    assert (
        ModelSpec.from_metadata(
            {p.key: p.value for p in onnx.load(str(imported.path)).metadata_props}
        )
        == imported.spec
    )


def test_versions_count_up_and_are_never_overwritten(tmp_path: Path) -> None:
    source = _model(tmp_path / "m.onnx")
    assert import_model(_request(tmp_path, source)).spec.version == "1"
    second = import_model(_request(tmp_path, source))
    assert second.spec.version == "2" and second.path.parent.name == "2"
    with pytest.raises(ImportProblem, match="exists: pick another --version"):
        import_model(_request(tmp_path, source, version="2"))
    with pytest.raises(ImportProblem, match="positive integers"):
        import_model(_request(tmp_path, source, version="v3"))
    with pytest.raises(ImportProblem, match=r"--name '\.\./up'"):
        import_model(ImportRequest(source=source, repo=tmp_path / "repo", name="../up"))


@pytest.mark.parametrize(
    ("model_args", "request_args", "message"),
    [
        ({}, {"classes": None}, "answers 4 classes: name them with --classes"),
        ({}, {"classes": ["a", "b", "c"]}, "answers 4 classes, but 3 names were given"),
        ({"labels_only": True}, {"classes": None}, "do not tell how many classes .* --classes"),
        ({"labels_only": True}, {"classes": ["a", "b"]}, "outside the 2 classes named"),
        ({"labels_only": True}, {"output_kind": "logits"}, "import it with --output-kind labels"),
        ({}, {"output_kind": "labels"}, "shape \\(1, 4, 64, 96\\); class labels are"),
        ({}, {"output_kind": "probabilities"}, "does not sum to 1"),
        (
            {"extra_output": "other", "scores_name": "main"},
            {},
            "say which holds the class scores with --output",
        ),
        ({}, {"output": "nope"}, "--output 'nope': the model's outputs are \\['scores'\\]"),
        ({}, {"input": "nope"}, "--input 'nope'"),
        ({}, {"mean": [0.5, 0.5]}, "--mean and --std need 3 values"),
        ({}, {"palette": [(0, 0, 0)]}, "1 colours for 4 classes"),
        ({}, {"tile_size": 100, "tile_overlap": 60}, "--tile-size/--tile-overlap"),
        ({}, {"size_multiple": 0}, "--size-multiple 0: 1 to 1024"),
    ],
)
def test_what_the_probe_cannot_settle_names_the_flag(
    tmp_path: Path, model_args: dict[str, object], request_args: dict[str, object], message: str
) -> None:
    source = _model(tmp_path / "m.onnx", **model_args)  # type: ignore[arg-type]
    with pytest.raises(ImportProblem, match=message):
        import_model(_request(tmp_path, source, **request_args))
    assert not (tmp_path / "repo" / "m" / "1").exists()


def test_scores_output_named_out_wins_over_aux(tmp_path: Path) -> None:
    source = _model(tmp_path / "m.onnx", scores_name="aux", extra_output="out")
    imported = import_model(_request(tmp_path, source))
    assert imported.probe.output == "out"
    chosen = import_model(_request(tmp_path, source, output="aux"))
    assert chosen.probe.output == "aux"


def test_fixed_size_model_tiles_at_its_size(tmp_path: Path) -> None:
    source = _model(tmp_path / "m.onnx", fixed=32)
    imported = import_model(_request(tmp_path, source))
    assert imported.probe.fixed == (32, 32)
    assert imported.spec.tile is not None and imported.spec.tile.size == 32
    assert "fixed input size 32x32" in imported.spec.description
    session = ort.InferenceSession(str(imported.path), providers=["CPUExecutionProvider"])
    logits, _ = session.run(None, {"image": np.zeros((1, 3, 50, 70), np.uint8)})
    assert logits.shape == (1, 4, 50, 70)


def test_nhwc_layout_is_read_from_the_input_shape(tmp_path: Path) -> None:
    source = _model(tmp_path / "m.onnx", layout="NHWC")
    imported = import_model(_request(tmp_path, source))
    assert imported.probe.layout == "NHWC" and imported.probe.scores_layout == "NCHW"


def test_classes_csv_palette_and_default_palette(tmp_path: Path) -> None:
    csv_file = tmp_path / "classes.csv"
    csv_file.write_text("name,r,g,b\nsky,128,128,128\nroad,128,64,128\n")
    assert read_classes_file(csv_file) == (["sky", "road"], [(128, 128, 128), (128, 64, 128)])
    lines = tmp_path / "classes.txt"
    lines.write_text("background\nperson\n\n")
    assert read_classes_file(lines) == (["background", "person"], None)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,colour\n1,red\n")
    with pytest.raises(ImportProblem, match="a CSV needs a header with one of the columns"):
        read_classes_file(bad)
    palette = voc_palette(21)
    assert palette[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)] and palette[15] == (192, 128, 128)
    assert len(set(palette)) == 21


def test_bilinear_matches_onnx_resize() -> None:
    scores = np.random.default_rng(2).normal(size=(3, 5, 7)).astype(np.float32)
    sizes = numpy_helper.from_array(np.array([3, 17, 29], np.int64), "sizes")
    node = helper.make_node(
        "Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
        coordinate_transformation_mode="half_pixel",
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [sizes],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": scores})[0]
    np.testing.assert_allclose(bilinear(scores, 17, 29), want, atol=1e-5)


def test_cli_prints_the_spec_and_refuses_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _model(tmp_path / "m.onnx")
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\nc\nd\n")
    palette = tmp_path / "palette.txt"
    palette.write_text("r,g,b\n#ff0000\n0 255 0\n0,0,255\n9,9,9\n")
    args = ["import", str(source), "--repo", str(tmp_path / "repo"), "--name", "mine"]
    code = main([*args, "--classes-file", str(classes), "--palette-file", str(palette),
                 "--mean", "0.5", "--std", "0.25", "--version", "7"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    spec = ModelSpec.model_validate(json.loads(out))
    assert spec.version == "7" and spec.classes == ["a", "b", "c", "d"]
    assert spec.palette == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]
    assert spec.mean == [0.5] * 3 and spec.std == [0.25] * 3
    assert f"wrote {tmp_path / 'repo' / 'mine' / '7' / 'model.onnx'}" in err
    assert main([*args, "--classes", "a,b"]) == 2
    assert "answers 4 classes, but 2 names" in capsys.readouterr().err


def test_cli_without_onnx_says_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # type: ignore[arg-type]
    for module in (
        "export.importer",
        "export.importer_check",
        "export.importer_inputs",
        "export.importer_probe",
        "export.importer_spec",
        "export.canonical",
        "export.metadata",
    ):
        monkeypatch.delitem(sys.modules, module, raising=False)  # imported again, without onnx
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["import", "m.onnx", "--repo", str(tmp_path), "--name", "m"])
    assert code == 2
    assert "pip install 'segserve[import]'" in capsys.readouterr().err
