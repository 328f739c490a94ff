"""bench/canonical_graph.py runs end to end on a tiny strided model and prints both designs,
their ratio and their agreement."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.canonical_graph import main


def test_prints_both_designs_and_their_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weight = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["out"], pads=[1, 1, 1, 1], strides=[2, 2])],
        "strided",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, tmp_path / "strided.onnx")
    args = ["--model", str(tmp_path / "strided.onnx"), "--classes", "4", "--size", "48"]
    main([*args, "--rounds", "2", "--threads", "1"])
    out = capsys.readouterr().out
    assert "output stride 2" in out
    assert re.search(r"canonical graph .*: [\d.]+ ms", out)
    assert re.search(r"original graph \+ numpy .*: [\d.]+ ms", out)
    agreement = float(re.search(r"same class map: ([\d.]+)%", out).group(1))  # type: ignore[union-attr]
    assert agreement > 99.0
