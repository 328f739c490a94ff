"""The service layer's one path (decode -> plan -> infer -> encode) called directly: the
stop event reaches one-pass TTA and the tiles, the answer reports the image's own size and
tile count, the decode time is counted in milliseconds, the decode span names the size."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image
from rasterio.transform import from_origin

from app import tracing
from app.inference.model_entry import ModelEntry
from app.inference.pipeline import Stopped
from app.service.budget import Limits
from app.service.segmenting import SegmentOptions, infer_pixels, segment_file
from tests.app.test_masks import write_geotiff
from tests.app.tiny_models import spec_for

LIMITS = Limits(max_pixels=10**6, whole_image_max_pixels=400, max_answer_bytes=10**7)


def threshold_entry() -> tuple[ModelEntry, list[tuple[int, ...]]]:
    """Class 1 where the grey value is above 127.5 (logits [-x, x] of the input)."""
    spec = spec_for("threshold", "svc", labels_output=None, tile={"size": 16, "overlap": 4})
    shapes: list[tuple[int, ...]] = []

    def runner(output: str, x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape)
        return np.concatenate([-x[:, :1], x[:, :1]], axis=1).astype(np.float32)

    entry = ModelEntry(file="svc.onnx", spec=spec, session=None,
                       providers=["numpy"], runner=runner)  # fmt: skip
    return entry, shapes


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(("shape", "tiles"), [((10, 13), 1), ((40, 60), 28)])
def test_a_set_stop_event_stops_one_pass_tta_and_tiles(shape: tuple[int, int], tiles: int) -> None:
    model, shapes = threshold_entry()
    pixels = np.zeros(shape, np.uint8)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        infer_pixels(model, pixels, LIMITS, tta=True, stop=stop)
    with pytest.raises(Stopped):
        segment_file(model, png(pixels), SegmentOptions(tta=True), LIMITS, stop=stop)
    assert shapes == []  # nothing ran
    done = infer_pixels(model, pixels, LIMITS, tta=True, stop=threading.Event())
    assert done.tiles == tiles and done.labels.shape == shape


def test_the_answer_reports_the_images_size_and_tiles() -> None:
    model, _ = threshold_entry()
    pixels = np.zeros((40, 60), np.uint8)
    pixels[:, 30:] = 200
    result = segment_file(model, png(pixels), SegmentOptions(format="json"), LIMITS)
    assert (result.width, result.height, result.tiles) == (60, 40, 28)
    assert result.media_type == "application/json"
    one = segment_file(model, png(pixels[:10, :13]), SegmentOptions(), LIMITS)
    assert (one.width, one.height, one.tiles) == (13, 10, 1)
    assert one.media_type == "image/png"
    served = np.asarray(Image.open(io.BytesIO(one.body)))
    assert served.shape[:2] == (10, 13)


class SlowRead(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        time.sleep(0.01)
        return super().read(size)


def test_decode_time_is_in_milliseconds() -> None:
    model, _ = threshold_entry()
    started = time.perf_counter()
    result = segment_file(model, SlowRead(png(np.zeros((10, 13), np.uint8))), SegmentOptions(),
                          LIMITS)  # fmt: skip
    wall_ms = (time.perf_counter() - started) * 1000
    assert 10 <= result.timings_ms["decode"] <= wall_ms
    assert set(result.timings_ms) >= {"decode", "preprocess", "inference"}


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


def test_decode_and_encode_spans_name_the_size_and_format(spans: InMemorySpanExporter) -> None:
    model, _ = threshold_entry()
    segment_file(model, png(np.zeros((10, 13), np.uint8)), SegmentOptions(format="json"), LIMITS)
    by_name = {s.name: dict(s.attributes or {}) for s in spans.get_finished_spans()}
    assert by_name["decode"] == {"segserve.image.width": 13, "segserve.image.height": 10}
    assert by_name["encode"] == {"segserve.format": "json"}


def test_geotiff_bytes_are_read_for_their_georeference(tmp_path: Path) -> None:
    """segment_file takes encoded bytes as well as a file (jobs and /v2 pass bytes): the
    GeoJSON of a GeoTIFF given as bytes is in its map coordinates, not in pixels."""
    model, _ = threshold_entry()
    pixels = np.zeros((8, 10), np.uint8)
    pixels[2:6, 3:7] = 200
    tiff = write_geotiff(tmp_path / "in.tif", pixels, "EPSG:32633",
                         from_origin(500_000.0, 4_600_000.0, 10.0, 10.0))  # fmt: skip
    result = segment_file(model, tiff, SegmentOptions(format="geojson"), LIMITS)
    collection = json.loads(result.body)
    assert collection["coordinate_space"] == "map"
    assert collection["crs"]["properties"]["name"].endswith("32633")
    square = next(f for f in collection["features"] if f["properties"]["class_index"] == 1)
    xs = {x for ring in square["geometry"]["coordinates"][0] for x, _ in ring}
    assert xs == {500_030.0, 500_070.0}  # columns 3 to 7 at 10 m from x = 500,000
