"""The peers benchmark without BentoML and LitServe (CI has neither): the request handling
that both peer services share (bench/peers/common.py) against segserve's own pre-processing
and an independent reference, the answer check, and a quick run on segserve and raw
onnxruntime with tiny models."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.config import Device, Settings
from app.inference.pipeline import preprocess
from bench.common import Stats, free_port
from bench.peers.common import load_model, predict, segment_png, to_input
from bench.peers.harness import QUICK, WrongAnswer, check_answer, measure_server
from bench.peers_benchmark import Run, run, servers
from bench.peers_report import markdown, plain, plot, summarise
from tests.app.conftest import png_bytes
from tests.app.probes import (
    BOX_MEAN,
    BOX_STD,
    BOX_WEIGHT,
    probe_spec,
    reference_conv,
    reference_mirror_pad,
    reference_normalised,
)
from tests.app.test_uint8_input import save, uint8_graph
from tests.app.tiny_models import spec_for, write_conv_model, write_model


@pytest.mark.parametrize(
    ("kind", "multiple", "shape", "dtype"),
    [
        ("threshold", 8, (37, 50), "float32"),
        ("brightest", 16, (33, 17, 3), "float32"),
        ("threshold", 8, (37, 50), "uint8"),
        ("brightest", 4, (1, 9, 3), "float32"),  # one row: edge padding, not reflect
    ],
)
def test_peer_input_is_segserves(
    kind: str, multiple: int, shape: tuple[int, ...], dtype: str
) -> None:
    mean = [0.1, 0.4, 0.7] if len(shape) == 3 else [0.2]
    spec = spec_for(kind, "peer", multiple, input_dtype=dtype, mean=mean)
    pixels = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    ours, theirs = to_input(pixels, spec), preprocess(pixels, spec)
    assert ours.dtype == theirs.dtype == np.dtype(dtype)
    assert ours.shape == theirs.shape and ours.shape[2] % multiple == ours.shape[3] % multiple == 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_peer_answers_palette_png_of_the_argmax(tmp_path: Path) -> None:
    path = write_model(tmp_path, "brightest", "tiny-rgb", size_multiple=8)
    model = load_model(path, threads=1)
    pixels = np.random.default_rng(4).integers(0, 256, (21, 30, 3), dtype=np.uint8)
    answer = Image.open(io.BytesIO(segment_png(model, png_bytes(pixels))))
    assert answer.format == "PNG" and answer.mode == "P"
    np.testing.assert_array_equal(np.asarray(answer), pixels.argmax(axis=2))
    palette = answer.getpalette()
    assert palette is not None and palette[:9] == [255, 0, 0, 0, 255, 0, 0, 0, 255]


def test_peer_feeds_uint8_graphs_their_pixels(tmp_path: Path) -> None:
    fields = dict(mean=BOX_MEAN, std=BOX_STD, size_multiple=8)
    float_file = write_conv_model(tmp_path, BOX_WEIGHT, probe_spec("box-f32", 1, 2, **fields))
    u8_file = tmp_path / "box-u8.onnx"
    save(
        uint8_graph(BOX_WEIGHT, BOX_MEAN, BOX_STD),
        probe_spec("box-u8", 1, 2, input_dtype="uint8", **fields),
        u8_file,
    )
    grey = np.random.default_rng(5).integers(0, 256, (13, 21), dtype=np.uint8)  # pads to 16x24
    normalised = reference_normalised(grey, BOX_MEAN, BOX_STD)
    logits = reference_conv(reference_mirror_pad(normalised, 8), BOX_WEIGHT)[:, :13, :21]
    clear = np.abs(logits[0] - logits[1]) > 1e-4  # no float ties
    assert clear.mean() > 0.9
    for path in (float_file, u8_file):
        labels = predict(load_model(path, threads=1), grey)
        np.testing.assert_array_equal(labels[clear], logits.argmax(0)[clear])


def test_check_answer_accepts_only_the_same_class_map() -> None:
    labels = np.random.default_rng(6).integers(0, 3, (20, 30), dtype=np.uint8)
    image = Image.fromarray(labels)
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    check_answer(buffer.getvalue(), labels, "right")
    wrong = labels.copy()
    wrong[5, 7] = (wrong[5, 7] + 1) % 3
    with pytest.raises(WrongAnswer, match="1 of 600 pixels"):
        check_answer(buffer.getvalue(), wrong, "off by one pixel")
    with pytest.raises(WrongAnswer, match="mode L"):
        check_answer(png_bytes(labels), labels, "grey, not palette")
    with pytest.raises(WrongAnswer, match="expected"):
        check_answer(buffer.getvalue(), labels[:, :29], "cropped")


@pytest.mark.timeout(240)
def test_quick_run_on_segserve_and_raw(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    write_model(models, "threshold", "tiny-grey", size_multiple=8)
    write_model(models, "brightest", "tiny-rgb")
    rng = np.random.default_rng(7)
    images = {}
    for name, shape in (("tiny-grey", (45, 61)), ("tiny-rgb", (40, 30, 3))):
        images[name] = tmp_path / f"{name}.png"
        images[name].write_bytes(png_bytes(rng.integers(0, 256, shape, dtype=np.uint8)))
    labels = ["segserve-fp32", "segserve", "bentoml"]
    report = run(
        models,
        images,
        labels,
        Device.cpu,
        threads=1,
        rounds=2,
        counts=QUICK,
        concurrency=(1, 4),
        peers_python=tmp_path / "no-venv" / "python",
        logs=tmp_path / "logs",
    )
    assert "scripts/bench_env.sh" in report["skipped"]["bentoml"]
    if "precision" not in Settings.model_fields:
        assert "SEG_PRECISION" in report["skipped"]["segserve"]
    else:  # no INT8 variant of the tiny models: their default is the FP32 row
        for name in images:
            assert "no variant" in report["models"][name]["skipped"]["segserve"]
    for name in images:
        m = report["models"][name]
        row = m["servers"]["segserve-fp32"]
        assert row["latency"].n == 2 * QUICK.single  # both rounds pooled
        assert [r["round"] for r in row["rounds"]] == [0, 1]
        assert row["rps"][1] > 0 and row["rps"][4] > 0
        assert m["raw"]["fp32"].p50_ms > 0
        assert row["p50_vs_raw"] == pytest.approx(row["latency"].p50_ms / m["raw"]["fp32"].p50_ms)
    text = "\n".join(markdown(report))
    assert "| tiny-grey 61x45 | segserve FP32 | fp32 |" in text
    assert "BentoML not run" in text
    verdicts = {(t["model"], t["target"]): t for t in report["targets"]}
    peer = verdicts[("tiny-grey", "default p50 / best peer's p50")]
    assert peer["met"] is None and peer["why_not_measured"]  # no peer ran: not "met"
    json.dumps(plain(report))
    plot(report, tmp_path / "peers.png")
    assert Image.open(tmp_path / "peers.png").size[0] > 0
    # The answer check runs against a live server: a wrong expectation stops the run
    expected = np.zeros((45, 61), np.uint8)
    server = servers("tiny-grey", models, Device.cpu, 1, port := free_port(), None, Path("-"))
    with pytest.raises(WrongAnswer, match="differ from raw onnxruntime"):
        measure_server(
            server["segserve-fp32"],
            images["tiny-grey"],
            expected,
            QUICK,
            (1,),
            port,
            tmp_path / "server.log",
        )


def test_ratios_and_targets_from_pooled_runs() -> None:
    def served(precision: str, p50_s: float, c4_s: float) -> Run:
        # 10 requests at c=1, 40 at c=4 taking c4_s seconds, 80 at c=8 in 8 s
        return Run(precision, [p50_s] * 10, {1: 10, 4: 40, 8: 80}, {1: 10 * p50_s, 4: c4_s, 8: 8})

    models = {
        "m": {
            "image": "10x10",
            "file": "m.png",
            "default_precision": "int8",
            "raw": {"fp32": [Stats(100, 110, 100, 10)], "int8": [Stats(50, 55, 50, 10)]},
            "runs": {
                "segserve-fp32": served("fp32", 0.102, 4.0),  # 10 req/s at c=4
                "segserve": served("int8", 0.060, 2.0),  # 20 req/s
                "bentoml": served("fp32", 0.120, 4.0),
                "litserve": served("fp32", 0.130, 2.5),  # 16 req/s: the best peer at c=4
            },
            "skipped": {},
        }
    }
    report = summarise(models, {}, Device.cpu, 2, 1, (1, 4, 8))
    rows = report["models"]["m"]["servers"]
    assert rows["segserve"]["p50_vs_raw"] == pytest.approx(60 / 50)  # its own INT8 floor
    assert rows["segserve"]["p50_vs_raw_fp32"] == pytest.approx(60 / 100)
    assert rows["segserve"]["p50_vs_best_peer"] == pytest.approx(60 / 120)  # BentoML's p50
    assert rows["segserve"]["rps_vs_best_peer"][4] == pytest.approx(20 / 16)  # LitServe's c=4
    assert rows["segserve-fp32"]["overhead_ms"] == pytest.approx(2)
    assert rows["segserve-fp32"]["rps_vs_raw"][4] == pytest.approx(1.0)
    verdicts = {t["target"]: t["met"] for t in report["targets"]}
    assert verdicts == {
        "FP32 overhead: e2e p50 - raw p50 (ms)": True,
        "FP32 throughput at c=4 / (1/raw)": True,
        "default p50 / best peer's p50": True,
        "default throughput at c=4 / best peer's": False,  # 1.25 < 1.3
    }
    text = "\n".join(markdown(report))
    assert "| m 10x10 | segserve default | int8 | 60.0 / 60.0 ms | 1.20 | 10.0 ms |" in text
    assert "default throughput at c=4 / best peer's >= 1.3: 1.25, MISSED" in text
