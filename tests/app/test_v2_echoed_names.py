"""A client's tensor name echoed in a /v2 error stays bounded: quoted, at most 60 of its
characters, and the quoted text cut to 500 characters even when every character needs a
ten-character escape (a 400 with a short detail, never the client's megabytes back)."""

from __future__ import annotations

import json

import pytest

from app.errors import BadInferenceRequest
from app.inference.v2_codec import parse_request

NO_DATA = " has neither data nor binary_data_size"


def echoed(name: str) -> str:
    body = json.dumps({"inputs": [{"name": name, "shape": [1], "datatype": "UINT8"}]})
    with pytest.raises(BadInferenceRequest) as refused:
        parse_request(body.encode(), None)
    detail = refused.value.detail
    assert detail.startswith("input ") and detail.endswith(NO_DATA)
    return detail[len("input ") : -len(NO_DATA)]


def test_a_short_name_is_quoted_whole() -> None:
    assert echoed("x" * 60) == repr("x" * 60)


def test_a_long_name_keeps_its_first_60_characters() -> None:
    assert echoed("y" * 61) == repr("y" * 60) + "..."
    assert echoed("z" * 100_000) == repr("z" * 60) + "..."


def test_escaped_characters_are_cut_to_500_characters_of_text() -> None:
    tag = "\U000e0001"  # not printable: repr writes it as 10 characters
    quoted = echoed(tag * 61)
    assert len(quoted) == 500
    assert quoted == (repr(tag * 60) + "...")[:500]
