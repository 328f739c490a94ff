"""The model metadata contract (app/spec.py) at its edges: what the service accepts from an
ONNX file's metadata, what it refuses (and says why), and the defaults a minimal document
gets. The registry refuses a model whose spec fails here, so each bound matters."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from app.spec import SPEC_KEY, ModelSpec, TileSpec


def minimal(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": "m",
        "version": "1",
        "classes": ["a", "b"],
        "palette": [[0, 0, 0], [255, 255, 255]],
        "input_channels": 1,
        "mean": [0.5],
        "std": [0.25],
    }
    fields.update(overrides)
    return fields


def test_a_minimal_document_gets_the_documented_defaults() -> None:
    spec = ModelSpec.model_validate(minimal())
    assert spec.model_dump() == {
        "schema_version": 1,
        "name": "m",
        "version": "1",
        "description": "",
        "architecture": "",
        "classes": ["a", "b"],
        "palette": [(0, 0, 0), (255, 255, 255)],
        "input_channels": 1,
        "mean": [0.5],
        "std": [0.25],
        "size_multiple": 1,
        "input_dtype": "float32",
        "precision": "fp32",
        "input_name": "image",
        "logits_output": "logits",
        "labels_output": "labels",
        "tile": None,
        "training_data": "",
        "data_terms": "",
        "metrics": {},
        "git_commit": "",
        "exported_at": "",
    }
    assert spec.num_classes == 2
    assert TileSpec(size=16, overlap=0).batch == 1


def test_metadata_round_trips_under_its_key() -> None:
    spec = ModelSpec.model_validate(
        minimal(schema_version=2, input_dtype="uint8", precision="int8", size_multiple=32,
                tile={"size": 256, "overlap": 32, "batch": 4}, metrics={"miou": 0.5})
    )  # fmt: skip
    props = spec.to_metadata()
    assert list(props) == [SPEC_KEY] == ["segserve.spec"]
    assert json.loads(props[SPEC_KEY])["tile"] == {"size": 256, "overlap": 32, "batch": 4}
    assert ModelSpec.from_metadata(props) == spec


def test_missing_or_broken_metadata_is_a_readable_value_error() -> None:
    with pytest.raises(ValueError, match=r"'segserve\.spec' is missing"):
        ModelSpec.from_metadata({"other": "{}"})
    with pytest.raises(ValueError, match=r"'segserve\.spec' is not valid JSON"):
        ModelSpec.from_metadata({SPEC_KEY: "{not json"})
    with pytest.raises(ValidationError):
        ModelSpec.from_metadata({SPEC_KEY: json.dumps(minimal(classes=["a"]))})


ACCEPTED = [
    {"schema_version": 2},
    {"name": "a"},
    {"name": "0" + "x" * 63},
    {"name": "a.b_c-d"},
    {"version": "v" * 64},
    {"classes": [str(i) for i in range(256)], "palette": [[0, 0, 0]] * 256},
    {"palette": [[255, 0, 255], [0, 255, 0]]},
    {"input_channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3},
    {"std": [1e-9]},
    {"size_multiple": 1024},
    {"labels_output": None},
    {"logits_output": None},  # a graph that answers labels only
    {"size_multiple": 16, "tile": {"size": 48, "overlap": 23}},
]

REFUSED = [
    ({"schema_version": 3}, "schema_version"),
    ({"name": ""}, "name"),
    ({"name": "A"}, "name"),
    ({"name": "-a"}, "name"),
    ({"name": "a" * 65}, "name"),
    ({"name": "a/b"}, "name"),
    ({"version": ""}, "version"),
    ({"version": "v" * 65}, "version"),
    ({"classes": ["a"], "palette": [[0, 0, 0]]}, "classes"),
    ({"classes": [str(i) for i in range(257)], "palette": [[0, 0, 0]] * 257}, "classes"),
    ({"classes": ["a", "a"]}, "non-empty and unique"),
    ({"classes": ["a", ""]}, "non-empty and unique"),
    ({"palette": [[0, 0, 0], [256, 0, 0]]}, "palette"),
    ({"palette": [[0, 0, 0], [0, -1, 0]]}, "palette"),
    ({"palette": [[0, 0, 0]]}, "one colour per class"),
    ({"input_channels": 2, "mean": [0, 0], "std": [1, 1]}, "input_channels"),
    ({"std": [0.0]}, "std values must be positive"),
    ({"std": [-1.0]}, "std values must be positive"),
    ({"mean": [0.5, 0.5]}, "one value per input channel"),
    ({"std": [1.0, 1.0]}, "one value per input channel"),
    ({"size_multiple": 0}, "size_multiple"),
    ({"size_multiple": 1025}, "size_multiple"),
    ({"input_dtype": "float16"}, "input_dtype"),
    ({"precision": "int4"}, "precision"),
    ({"size_multiple": 16, "tile": {"size": 40, "overlap": 8}}, "multiple of size_multiple"),
    ({"tile": {"size": 15, "overlap": 0}}, "size"),
    ({"tile": {"size": 16, "overlap": -1}}, "overlap"),
    ({"tile": {"size": 16, "overlap": 8}}, "less than half the tile size"),
    ({"tile": {"size": 16, "overlap": 0, "batch": 0}}, "batch"),
    ({"tile": {"size": 16, "overlap": 0, "stride": 8}}, "stride"),
    ({"colours": []}, "colours"),
    ({"logits_output": None, "labels_output": None}, "needs labels_output"),
]


@pytest.mark.parametrize("overrides", ACCEPTED)
def test_documents_at_the_edges_are_accepted(overrides: dict[str, Any]) -> None:
    spec = ModelSpec.model_validate(minimal(**overrides))
    for key, value in overrides.items():
        got = getattr(spec, key)
        if isinstance(got, TileSpec):
            got = got.model_dump(exclude={"batch"})
        elif key == "palette":
            got = [list(colour) for colour in got]
        assert got == value


@pytest.mark.parametrize(("overrides", "reason"), REFUSED)
def test_documents_past_the_edges_are_refused_naming_the_field(
    overrides: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason):
        ModelSpec.model_validate(minimal(**overrides))


def test_a_spec_cannot_change_once_loaded() -> None:
    spec = ModelSpec.model_validate(minimal())
    with pytest.raises(ValidationError):
        spec.name = "other"  # type: ignore[misc]
    tile = TileSpec(size=16, overlap=2)
    with pytest.raises(ValidationError):
        tile.size = 32  # type: ignore[misc]
