"""SEG_V2_MAX_JSON_BYTES bounds the JSON part of a /v2 body, with or without the binary
tensor data extension: with Inference-Header-Content-Length only the declared JSON part
counts (binary tensors after it may be large), and a malformed header is a 400, not a
crash, whatever the bound."""

from __future__ import annotations

import json

import pytest

from app.errors import BadInferenceRequest, PayloadTooLarge
from app.inference.v2_codec import parse_request


def binary_body(pixels: int) -> tuple[bytes, int]:
    tensor = {"name": "image", "datatype": "UINT8", "shape": [1, 1, pixels, 1],
              "parameters": {"binary_data_size": pixels}}  # fmt: skip
    head = json.dumps({"inputs": [tensor]}).encode()
    return head + bytes(pixels), len(head)


def test_only_the_declared_json_part_counts() -> None:
    body, head = binary_body(5000)
    _, tensors = parse_request(body, str(head), max_json_bytes=head)  # the JSON part fits
    assert tensors["image"].shape == (1, 1, 5000, 1)
    with pytest.raises(PayloadTooLarge, match=f"the JSON part has {head} bytes"):
        parse_request(body, str(head), max_json_bytes=head - 1)


def test_without_the_header_the_whole_body_is_json() -> None:
    tensor = {"name": "image", "datatype": "UINT8", "shape": [1, 1, 3, 1], "data": [1, 2, 3]}
    body = json.dumps({"inputs": [tensor]}).encode()
    parse_request(body, None, max_json_bytes=len(body))
    with pytest.raises(PayloadTooLarge, match="SEG_V2_MAX_JSON_BYTES"):
        parse_request(body, None, max_json_bytes=len(body) - 1)


@pytest.mark.parametrize("header", ["abc", "-1", "12x", "", "²"])
def test_a_malformed_header_is_a_bad_request_under_a_bound(header: str) -> None:
    body, _ = binary_body(10)
    with pytest.raises(BadInferenceRequest, match="does not fit the body"):
        parse_request(body, header, max_json_bytes=1024)


def test_a_header_past_the_body_counts_only_the_body() -> None:
    body, _ = binary_body(10)
    with pytest.raises(BadInferenceRequest, match="does not fit the body"):
        parse_request(body, str(len(body) + 1), max_json_bytes=len(body))
    with pytest.raises(PayloadTooLarge, match=f"has {len(body)} bytes"):
        parse_request(body, str(10**9), max_json_bytes=len(body) - 1)
