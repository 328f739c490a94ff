"""A graph that answers class labels only: each entry point refuses what needs scores
itself, before any session run, and names exactly what was asked for."""

from __future__ import annotations

import numpy as np
import pytest

from app.errors import ScoresUnavailable
from app.inference.model_entry import ModelEntry
from app.inference.pipeline import segment
from app.inference.tiling import TilePlan, segment_tiled
from tests.app.tiny_models import spec_for


def labels_only() -> tuple[ModelEntry, list[str]]:
    spec = spec_for("threshold", "labels-only", logits_output=None, labels_output="labels")
    runs: list[str] = []

    def runner(output: str, x: np.ndarray) -> np.ndarray:
        runs.append(output)
        return np.zeros((x.shape[0], *x.shape[2:]), np.uint8)

    entry = ModelEntry(file="lo.onnx", spec=spec, session=None, providers=["numpy"],
                       runner=runner)  # fmt: skip
    return entry, runs


ASKED = [
    ({"probabilities": True}, "probabilities"),
    ({"confidence": True}, "confidence"),
    ({"tta": True}, "tta"),
    ({"probabilities": True, "confidence": True}, "probabilities and confidence"),
    ({"confidence": True, "tta": True}, "confidence and tta"),
]


@pytest.mark.parametrize(("asked", "named"), ASKED)
@pytest.mark.parametrize("tiled", [False, True])
def test_each_request_for_scores_is_refused_by_name(
    asked: dict[str, bool], named: str, tiled: bool
) -> None:
    model, runs = labels_only()
    pixels = np.zeros((20, 20), np.uint8)
    with pytest.raises(ScoresUnavailable) as refused:
        p, c, t = (asked.get(k, False) for k in ("probabilities", "confidence", "tta"))
        if tiled:
            segment_tiled(model, pixels, TilePlan(16, 4), probabilities=p, confidence=c, tta=t)
        else:
            segment(model, pixels, probabilities=p, confidence=c, tta=t)
    assert f"so {named} cannot be computed" in refused.value.detail
    assert runs == []


@pytest.mark.parametrize("tiled", [False, True])
def test_the_class_map_alone_is_served(tiled: bool) -> None:
    model, runs = labels_only()
    pixels = np.zeros((20, 20), np.uint8)
    result = segment_tiled(model, pixels, TilePlan(16, 4)) if tiled else segment(model, pixels)
    assert result.labels.shape == (20, 20) and set(runs) == {"labels"}


def test_the_refusal_says_what_to_ask_for_instead() -> None:
    """The 422's detail is all a client gets: it names the model and the ways to get a
    class map from it, word for word."""
    model, _ = labels_only()
    with pytest.raises(ScoresUnavailable) as refused:
        segment(model, np.zeros((20, 20), np.uint8), tta=True)
    assert refused.value.detail == (
        f"model 'labels-only' version {model.spec.version} answers class labels only (its "
        "graph has no per-class scores output), so tta cannot be computed: ask for the class "
        "map alone (format png, json, overlay, coco or geojson; the v2 output 'labels') "
        "without tta"
    )
