"""The one-pass pipeline's numbers by hand: 1-pixel edge padding, the graph input in both
dtypes, softmax and confidence, stopping TTA, and what the traced spans say.

The model is a ModelEntry whose runner is numpy (no onnxruntime), so each input the
pipeline hands the graph is seen exactly, and the expected values are written out here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import tracing
from app.errors import ScoresUnavailable
from app.inference.model_entry import ModelEntry
from app.inference.pipeline import (
    Stopped,
    confidence_map,
    input_dtype,
    mirror_pad,
    model_input,
    preprocess,
    run_probabilities,
    segment,
    softmax,
)
from app.inference.tiling import TilePlan, segment_tiled, tile_batch_attributes
from tests.app.tiny_models import spec_for


def recording_entry(input_type: str = "float32") -> tuple[ModelEntry, list[np.ndarray]]:
    """Two classes; logits [x, 2x] of the first input channel (class 1 where x > 0)."""
    spec = spec_for("threshold", "rec", size_multiple=4, input_dtype=input_type,
                    labels_output=None)  # fmt: skip
    seen: list[np.ndarray] = []

    def runner(output: str, x: np.ndarray) -> np.ndarray:
        seen.append(x.copy())
        first = x[:, :1].astype(np.float32)
        return np.concatenate([first, 2 * first], axis=1)

    entry = ModelEntry(file="rec.onnx", spec=spec, session=None,
                       providers=["numpy"], runner=runner)  # fmt: skip
    return entry, seen


def test_one_pixel_sides_repeat_the_edge_on_both_axes() -> None:
    column = np.array([[[1], [2], [3], [4], [5]]], np.uint8)  # (1, 5, 1)
    assert mirror_pad(column, 3, 2)[0].tolist() == [[v] * 3 for v in (1, 2, 3, 4, 5, 5, 5, 5)]
    row = np.array([[[1, 2, 3, 4, 5]]], np.uint8)  # (1, 1, 5)
    assert mirror_pad(row, 2, 3)[0].tolist() == [[1, 2, 3, 4, 5, 5, 5, 5]] * 3
    one = np.array([[[7]]], np.uint8)
    assert mirror_pad(one, 2, 2)[0].tolist() == [[7, 7, 7]] * 3
    square = np.array([[[1, 2], [3, 4]]], np.uint8)
    assert mirror_pad(square, 2, 1)[0].tolist() == [[1, 2, 1], [3, 4, 3], [1, 2, 1], [3, 4, 3]]


def test_the_graph_input_in_each_dtype() -> None:
    chw = np.array([[[0, 51], [204, 255]]], np.uint8)
    spec = spec_for("threshold", "t", mean=[0.2], std=[0.4])
    expected = [[(0 - 0.2) / 0.4, (0.2 - 0.2) / 0.4], [(0.8 - 0.2) / 0.4, (1 - 0.2) / 0.4]]
    x = model_input(chw, spec)
    assert x.dtype == np.float32 and input_dtype(spec) == np.float32
    assert np.allclose(x[0], expected, atol=1e-6)
    out = np.full((1, 2, 2), 9, np.float32)
    assert model_input(chw, spec, out=out) is out and np.allclose(out[0], expected, atol=1e-6)
    raw = spec.model_copy(update={"input_dtype": "uint8"})
    assert input_dtype(raw) == np.uint8
    y = model_input(chw.transpose(0, 2, 1), raw)
    assert y.dtype == np.uint8 and y.flags.c_contiguous and y[0].tolist() == [[0, 204], [51, 255]]
    into = np.zeros((1, 2, 2), np.uint8)
    assert model_input(chw, raw, out=into) is into and into[0].tolist() == [[0, 51], [204, 255]]


@pytest.mark.parametrize("input_type", ["float32", "uint8"])
def test_preprocess_pads_to_the_multiple_and_adds_the_batch_axis(input_type: str) -> None:
    spec = spec_for("threshold", "t", size_multiple=4, input_dtype=input_type)
    pixels = np.array([[10, 20, 30], [40, 50, 60]], np.uint8)  # 2 x 3 -> 4 x 4, mirrored
    x = preprocess(pixels, spec)
    rows = [[10, 20, 30, 20], [40, 50, 60, 50], [10, 20, 30, 20], [40, 50, 60, 50]]
    assert x.shape == (1, 1, 4, 4)
    if input_type == "uint8":
        assert x.dtype == np.uint8 and x[0, 0].tolist() == rows
    else:
        assert np.allclose(x[0, 0], (np.array(rows) / 255 - 0.5) / 0.5, atol=1e-6)


def test_softmax_and_confidence_by_hand() -> None:
    logits = np.array([[[0.0]], [[np.log(3.0)]]], np.float32)  # (2, 1, 1): 1 : 3
    assert np.allclose(softmax(logits)[:, 0, 0], [0.25, 0.75])
    batch = logits[None]
    assert np.allclose(softmax(batch, axis=1)[0, :, 0, 0], [0.25, 0.75])
    # 0.75 * 255 = 191.25 -> 191; 0.5 * 255 = 127.5 -> 128 (round half to even)
    assert confidence_map(np.array([[[0.25, 0.5]], [[0.75, 0.5]]]))[0].tolist() == [191, 128]


def test_one_pass_scores_and_labels() -> None:
    model, seen = recording_entry()
    pixels = np.array([[0, 255, 128]], np.uint8)  # x = -1, 1, 0.0039
    result = segment(model, pixels, probabilities=True, confidence=True)
    assert seen[0].shape == (1, 1, 4, 4)
    assert result.labels.tolist() == [[0, 1, 1]] and result.labels.dtype == np.uint8
    probabilities = result.probabilities
    assert probabilities is not None and probabilities.shape == (2, 1, 3)
    p1 = 1 / (1 + np.exp(1.0))  # softmax([-1, -2]) for class 1
    assert np.allclose(probabilities[1, 0, :2], [p1, 1 - p1], atol=1e-6)
    assert result.confidence is not None
    assert result.confidence[0, :2].tolist() == [round((1 - p1) * 255)] * 2
    assert set(result.timings_ms) == {"preprocess", "inference"}


def test_tta_in_one_pass_stops_between_views() -> None:
    model, seen = recording_entry()
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) == 6

    with pytest.raises(Stopped, match=r"^stopped after 5 of 8 test-time views$"):
        segment(model, np.zeros((4, 4), np.uint8), tta=True, should_stop=should_stop)
    assert len(seen) == 5


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("request") as request,
        tracing.traced_request(tracer, request),
    ):
        yield exporter


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_the_session_run_span_names_output_shape_and_batching(
    spans: InMemorySpanExporter,
) -> None:
    model, _ = recording_entry()
    segment(model, np.zeros((5, 6), np.uint8), probabilities=True)
    (run,) = named(spans, "session_run")
    assert dict(run.attributes or {}) == {
        "segserve.output": "logits",
        "segserve.input_shape": "1x1x8x8",
        "segserve.batchable": True,
    }


def test_tile_batch_spans_say_which_tiles() -> None:
    assert tile_batch_attributes(6, [(4, 8), (4, 12), (8, 0)], 3, 16) == {
        "segserve.tile_batch": 2,
        "segserve.tiles.count": 3,
        "segserve.tiles.total": 16,
        "segserve.tiles.indices": [6, 7, 8],
        "segserve.tiles.first_corner": "4,8",
    }
    assert tile_batch_attributes(7, [(9, 3)], 2, 8)["segserve.tile_batch"] == 3


def test_tiled_spans_carry_each_batch(spans: InMemorySpanExporter) -> None:
    model, _ = recording_entry()
    segment_tiled(model, np.zeros((12, 12), np.uint8), TilePlan(8, 2, batch=3))
    batches = named(spans, "tile_batch")
    assert [dict(b.attributes or {})["segserve.tiles.total"] for b in batches] == [4, 4]
    assert [dict(b.attributes or {})["segserve.tiles.indices"] for b in batches] == [
        (0, 1, 2),
        (3,),
    ]


@pytest.mark.parametrize(("tta", "named"), [(False, "probabilities"), (True, "tta")])
def test_scores_from_a_labels_only_graph_are_refused_by_name(tta: bool, named: str) -> None:
    model, seen = recording_entry()
    model.spec = model.spec.model_copy(update={"logits_output": None, "labels_output": "labels"})
    with pytest.raises(ScoresUnavailable) as refused:
        run_probabilities(model, np.zeros((1, 1, 4, 4), np.float32), tta=tta)
    assert f"so {named} cannot be computed" in refused.value.detail
    assert seen == []


def two_output_entry(sleep_s: float = 0.0) -> ModelEntry:
    """Logits [x, 2x] and their argmax as a labels output; each run takes `sleep_s`."""
    spec = spec_for("threshold", "two", size_multiple=4)
    assert spec.labels_output == "labels" and spec.logits_output == "logits"

    def runner(output: str, x: np.ndarray) -> np.ndarray:
        time.sleep(sleep_s)
        logits = np.concatenate([x[:, :1], 2 * x[:, :1]], axis=1).astype(np.float32)
        return logits.argmax(1).astype(np.uint8) if output == "labels" else logits

    return ModelEntry(file="two.onnx", spec=spec, session=None, providers=["numpy"],
                      runner=runner)  # fmt: skip


def test_one_pass_answers_only_what_was_asked() -> None:
    model = two_output_entry()
    pixels = np.array([[0, 255, 128]], np.uint8)
    for asked in ({}, {"tta": True}):
        plain = segment(model, pixels, **asked)  # type: ignore[arg-type]
        assert plain.probabilities is None and plain.confidence is None
        assert plain.labels.tolist() == [[0, 1, 1]]
    with_confidence = segment(model, pixels, confidence=True)
    assert with_confidence.probabilities is None and with_confidence.confidence is not None
    with_probabilities = segment(model, pixels, probabilities=True)
    assert with_probabilities.confidence is None and with_probabilities.probabilities is not None


def test_one_pass_timings_are_milliseconds() -> None:
    model = two_output_entry(sleep_s=0.03)
    pixels = np.random.default_rng(1).integers(0, 256, (2000, 2000), np.uint8)
    started = time.perf_counter()
    result = segment(model, pixels, probabilities=True)
    wall_ms = (time.perf_counter() - started) * 1000
    preprocess, inference = result.timings_ms["preprocess"], result.timings_ms["inference"]
    assert 27 <= inference <= wall_ms
    # 4 million pixels converted, padded and normalised: far more than half a millisecond
    assert 0.5 <= preprocess <= wall_ms - inference + 1
