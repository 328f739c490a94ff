"""`app.service.render`: the answer's bytes for each format, called directly (no server):
the mask documents' header, the media types, the 413 texts that name the answer and the
way out, and the encode time in milliseconds, rounded to 3 decimals in the JSON answer.
Pinned because the mutation run found no other test looking at them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from app.errors import AnswerTooLarge
from app.imaging.encode import rle_text_bytes
from app.imaging.georef import GeoReference
from app.imaging.masks.geojson import geojson_size_bound
from app.inference.pipeline import Segmentation
from app.service import render as render_module
from app.service.budget import Limits
from app.service.render import render
from app.service.segmenting import SegmentOptions
from tests.app.tiny_models import spec_for

SPEC = spec_for("rgb", "render-probe")
MODEL = SimpleNamespace(spec=SPEC, providers=["CPUExecutionProvider"])
LABELS = np.array([[0, 0, 1, 1, 2], [0, 2, 2, 1, 1], [0, 0, 0, 0, 2]], np.uint8)
ROOMY = Limits(max_pixels=10**6, whole_image_max_pixels=10**6, max_answer_bytes=10**6)
GEOREF = GeoReference(a=10.0, b=0.0, c=500000.0, d=0.0, e=-10.0, f=4000000.0, epsg=32633)


def answer(fmt: str, limits: Limits = ROOMY, georef: GeoReference | None = None, **options):
    return render(
        MODEL,  # type: ignore[arg-type]
        np.zeros((*LABELS.shape, 3), np.uint8),
        Segmentation(labels=LABELS),
        SegmentOptions(format=fmt, **options),  # type: ignore[arg-type]
        limits,
        {},
        georef,
    )


def tight(size: int) -> Limits:
    return Limits(max_pixels=10**6, whole_image_max_pixels=10**6, max_answer_bytes=size)


@pytest.mark.parametrize(
    ("fmt", "media_type"), [("coco", "application/json"), ("geojson", "application/geo+json")]
)
def test_mask_documents_carry_the_model_and_the_size(fmt: str, media_type: str) -> None:
    body, served_type = answer(fmt)
    document = json.loads(body)
    assert served_type == media_type
    assert document["model"] == {"name": "render-probe", "version": "0.0.1"}
    assert (document["width"], document["height"]) == (5, 3)


@pytest.mark.parametrize(
    ("fmt", "what", "hint"),
    [
        ("coco", "the COCO RLE of 5x3", "use format=png"),
        ("geojson", "the GeoJSON polygons of 5x3", "use format=png or format=coco"),
    ],
)
def test_mask_answers_over_the_budget_name_themselves_and_the_way_out(
    fmt: str, what: str, hint: str
) -> None:
    with pytest.raises(AnswerTooLarge) as raised:
        answer(fmt, tight(10))
    detail = str(raised.value.detail)
    assert detail.startswith(f"{what} would be about ")
    assert detail.endswith(f"the limit is 10 (SEG_MAX_ANSWER_BYTES); {hint}")


def test_the_rle_json_over_the_budget_names_itself_and_the_way_out() -> None:
    with pytest.raises(AnswerTooLarge) as raised:
        answer("json", tight(rle_text_bytes(LABELS) - 1), encoding="rle")
    assert str(raised.value.detail) == (
        f"the run-length class map of 5x3 would be about {rle_text_bytes(LABELS)} bytes; the "
        f"limit is {rle_text_bytes(LABELS) - 1} (SEG_MAX_ANSWER_BYTES); use format=png"
    )


def test_geojson_is_sized_for_pixel_or_map_coordinates() -> None:
    """The estimate for pixel coordinates is the smaller one: a budget of exactly that
    passes without a georeference and refuses with one."""
    pixel_bound = geojson_size_bound(LABELS, SPEC.classes, False)
    assert geojson_size_bound(LABELS, SPEC.classes, True) > pixel_bound  # the precondition
    body, _ = answer("geojson", tight(pixel_bound))
    assert json.loads(body)["type"] == "FeatureCollection"
    with pytest.raises(AnswerTooLarge):
        answer("geojson", tight(pixel_bound), GEOREF)
    body, _ = answer("geojson", tight(geojson_size_bound(LABELS, SPEC.classes, True)), GEOREF)
    assert json.loads(body)["type"] == "FeatureCollection"


class Clock:
    """perf_counter as render sees it: 2.0 s, then 2.25 s (an encode of 250 ms)."""

    def __init__(self) -> None:
        self.readings = iter([2.0, 2.25, 2.25, 2.25])

    def perf_counter(self) -> float:
        return next(self.readings)


@pytest.mark.parametrize("fmt", ["png", "confidence", "overlay", "json", "coco", "geojson"])
def test_encode_time_is_recorded_in_milliseconds(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render_module, "time", Clock())
    timings: dict[str, float] = {}
    render(
        MODEL,  # type: ignore[arg-type]
        np.zeros((*LABELS.shape, 3), np.uint8),
        Segmentation(labels=LABELS, confidence=np.full(LABELS.shape, 200, np.uint8)),
        SegmentOptions(format=fmt),  # type: ignore[arg-type]
        ROOMY,
        timings,
    )
    assert timings["encode"] == pytest.approx(250.0)


def test_json_timings_are_milliseconds_rounded_to_three_decimals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(render_module, "time", Clock())
    timings = {"decode": 1.23456789, "infer": 12.0004}
    body, media_type = render(
        MODEL,  # type: ignore[arg-type]
        np.zeros((*LABELS.shape, 3), np.uint8),
        Segmentation(labels=LABELS),
        SegmentOptions(format="json"),
        ROOMY,
        timings,
    )
    assert media_type == "application/json"
    assert json.loads(body)["timings_ms"] == {"decode": 1.235, "infer": 12.0, "encode": 250.0}
