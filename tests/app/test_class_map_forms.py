"""The class map's JSON forms as `app.imaging.encode` builds them for clients and tests:
the exact keys and values of both encodings, and the decoded map's dtype (pinned because
the mutation run showed no other test looked at them)."""

from __future__ import annotations

import json

import numpy as np

from app.imaging.encode import class_map_json, decode_run_length

LABELS = np.array([[0, 0, 2], [2, 2, 1]], np.uint8)


def test_list_form_is_the_rows_as_python_ints() -> None:
    form = class_map_json(LABELS, "list")
    assert form == {"encoding": "list", "rows": [[0, 0, 2], [2, 2, 1]]}
    assert all(type(v) is int for row in form["rows"] for v in row)
    assert json.dumps(form) == '{"encoding": "list", "rows": [[0, 0, 2], [2, 2, 1]]}'


def test_rle_form_is_row_major_class_count_pairs() -> None:
    form = class_map_json(LABELS, "rle")
    assert form == {"encoding": "rle", "order": "row-major", "counts": [0, 2, 2, 3, 1, 1]}


def test_decoded_run_length_is_a_uint8_map() -> None:
    decoded = decode_run_length([0, 2, 2, 3, 1, 1], 2, 3)
    assert decoded.dtype == np.uint8
    assert decoded.tolist() == LABELS.tolist()
