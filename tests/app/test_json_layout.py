"""The JSON answer's exact layout and the softmax's numerical safety, pinned where a
mutation run found them unpinned (key names, a one-pixel map, rounding, tile counts)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.inference.pipeline import softmax
from tests.app.conftest import png_bytes

PNG = {"content-type": "image/png"}


def answer(client: TestClient, pixels: np.ndarray, query: str) -> dict[str, object]:
    response = client.post(
        f"/v1/models/tiny-grey/segment?format=json&{query}", content=png_bytes(pixels), headers=PNG
    )
    assert response.status_code == 200, response.text
    document: dict[str, object] = response.json()
    return document


def test_rle_and_list_class_maps_have_exactly_their_documented_keys(
    probe_client: TestClient,
) -> None:
    grey = np.array([[200, 200, 10], [10, 10, 200]], np.uint8)  # bright = class 0
    rle = answer(probe_client, grey, "encoding=rle")
    assert rle["class_map"] == {
        "encoding": "rle",
        "order": "row-major",
        "counts": [0, 2, 1, 3, 0, 1],
    }
    listed = answer(probe_client, grey, "encoding=list")
    assert listed["class_map"] == {"encoding": "list", "rows": [[0, 0, 1], [1, 1, 0]]}
    assert listed["width"] == 3 and listed["height"] == 2


@pytest.mark.parametrize("value", [255, 0])
def test_a_one_pixel_image(probe_client: TestClient, value: int) -> None:
    document = answer(probe_client, np.full((1, 1), value, np.uint8), "")
    label = 0 if value else 1
    assert document["class_map"] == {"encoding": "rle", "order": "row-major", "counts": [label, 1]}
    stats = document["stats"]
    assert isinstance(stats, list)
    assert [s["fraction"] for s in stats] == [1.0 - label, float(label)]


def test_fractions_are_rounded_to_six_places_and_timings_to_three(
    probe_client: TestClient,
) -> None:
    grey = np.array([[200, 10, 10]], np.uint8)
    document = answer(probe_client, grey, "")
    stats = document["stats"]
    assert isinstance(stats, list)
    assert [(s["name"], s["pixels"], s["fraction"]) for s in stats] == [
        ("bright", 1, 0.333333),
        ("dark", 2, 0.666667),
    ]
    timings = document["timings_ms"]
    assert isinstance(timings, dict)
    assert set(timings) == {"decode", "preprocess", "inference", "encode"}
    for value in timings.values():
        assert 0 <= value < 60_000
        assert value == round(value, 3)


def test_a_tiled_answer_reports_its_tiles(probe_client: TestClient) -> None:
    grey = np.random.default_rng(6).integers(0, 256, (150, 140), dtype=np.uint8)
    tiled = answer(probe_client, grey, "tiling=on&tile_size=64&tile_overlap=8")
    whole = answer(probe_client, grey, "tiling=off")
    assert tiled["tiles"] == 9 and whole["tiles"] == 1  # 152/144 padded: 3 x 3 tiles of 64
    assert tiled["class_map"] == whole["class_map"]


def test_softmax_is_shifted_by_each_pixels_own_maximum() -> None:
    # Pixel 0 has huge logits, pixel 1 small ones: shifting by anything but each pixel's
    # own maximum overflows one and underflows the other to 0 / 0.
    logits = np.array([[[1000.0, 0.0]], [[999.0, -1.0]]], np.float32)  # (K=2, H=1, W=2)
    p = softmax(logits)
    expected = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(p[0, 0], [expected, expected], rtol=1e-6)
    np.testing.assert_allclose(p.sum(axis=0), 1.0, rtol=1e-6)
    batch = softmax(logits[None], axis=1)
    np.testing.assert_allclose(batch[0], p, rtol=1e-6)
    assert p.dtype == np.float32


@pytest.mark.parametrize("query", ["", "tiling=on&tile_size=64&tile_overlap=8"])
def test_server_timing_names_every_stage_in_milliseconds(
    probe_client: TestClient, query: str
) -> None:
    grey = np.random.default_rng(7).integers(0, 256, (100, 90), dtype=np.uint8)
    response = probe_client.post(
        f"/v1/models/tiny-grey/segment?{query}", content=png_bytes(grey), headers=PNG
    )
    assert response.status_code == 200
    stages = dict(part.split(";dur=") for part in response.headers["server-timing"].split(", "))
    assert set(stages) == {"decode", "preprocess", "inference", "encode"}
    assert all(0 <= float(value) < 60_000 for value in stages.values())
