"""The /v2 wire format at its edges, in process: `parse_request` and `encode_response`.

tests/app/test_v2.py drives a real server with the Triton client; these pin what a
mutation run found unpinned there: exact boundaries (header length, value ranges,
nesting depth, element sizes), every refusal naming the input, and the response layout.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from app.errors import BadInferenceRequest
from app.inference.v2_codec import MAX_JSON_DEPTH, encode_response, parse_request

NAME = "input-\u00e9"  # every refusal must name it (quoted)


def request(*tensors: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(tensors), **extra}).encode()


def tensor(datatype: str, shape: list[int], data: Any = None, **parameters: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": NAME, "datatype": datatype, "shape": shape}
    if data is not None:
        entry["data"] = data
    if parameters:
        entry["parameters"] = parameters
    return entry


def binary(head: bytes, raw: bytes) -> tuple[bytes, str]:
    return head + raw, str(len(head))


def refused(body: bytes, header_length: str | None = None) -> str:
    with pytest.raises(BadInferenceRequest) as caught:
        parse_request(body, header_length)
    return str(caught.value.detail)


def parsed(body: bytes, header_length: str | None = None) -> Any:
    return parse_request(body, header_length)[1][NAME]


@pytest.mark.parametrize(
    ("datatype", "values", "dtype"),
    [
        ("UINT8", [0, 255, 1.0], np.uint8),
        ("INT32", [-(2**31), 2**31 - 1, 7], np.int32),
        ("INT64", [-(2**62), 2**62, -1.0], np.int64),
        ("FP32", [-3.0e38, 3.0e38, 0.5], np.float32),
    ],
)
def test_json_values_at_the_ends_of_their_range_are_accepted(
    datatype: str, values: list[float], dtype: type
) -> None:
    array = parsed(request(tensor(datatype, [3], values)))
    assert array.dtype == dtype
    assert np.array_equal(array, np.asarray(values, dtype))


@pytest.mark.parametrize(
    ("datatype", "values", "reason"),
    [
        ("UINT8", [256], "out of range"),
        ("UINT8", [-1], "out of range"),
        ("UINT8", [255.5], "whole numbers"),
        ("UINT8", [256.0], "out of range"),
        ("UINT8", [-1.0], "out of range"),
        ("INT32", [2**31], "out of range"),
        ("INT32", [-(2**31) - 1], "out of range"),
        ("FP32", [1e39], "finite"),
        ("FP32", [-1e39], "finite"),
        ("UINT8", ["7"], "numbers"),
        ("UINT8", [[1], [2, 3]], "numbers"),
    ],
)
def test_json_values_outside_their_type_are_refused_naming_the_input(
    datatype: str, values: list[Any], reason: str
) -> None:
    message = refused(request(tensor(datatype, [len(values)], values)))
    assert reason in message and repr(NAME) in message


def test_json_value_count_must_match_the_shape() -> None:
    message = refused(request(tensor("UINT8", [2, 2], [1, 2, 3])))
    assert "3 values" in message and repr(NAME) in message
    assert parsed(request(tensor("UINT8", [2, 0], []))).shape == (2, 0)


def test_json_bytes_are_utf8_strings() -> None:
    assert parsed(request(tensor("BYTES", [2], ["abc", "\u00e9"]))) == [b"abc", b"\xc3\xa9"]
    for data in (["abc"], ["a", 1]):
        assert "BYTES data must be 2 strings" in refused(request(tensor("BYTES", [2], data)))
    lone = b'{"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"data":["\\ud800"]}]}'
    assert "not valid Unicode" in refused(lone)


def test_binary_tensors_are_read_in_order_by_their_sizes() -> None:
    first = {**tensor("INT32", [2, 3], binary_data_size=24), "name": "a"}
    second = {**tensor("UINT8", [3], binary_data_size=3), "name": "b"}
    empty = {**tensor("UINT8", [0], binary_data_size=0), "name": "c"}
    raw = np.arange(6, dtype="<i4").tobytes() + b"\x01\x02\x03"
    body, length = binary(request(first, empty, second), raw)
    tensors = parse_request(body, length)[1]
    assert np.array_equal(tensors["a"], np.arange(6).reshape(2, 3))
    assert tensors["c"].shape == (0,)
    assert tensors["b"].tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("size", "raw", "reason"),
    [
        (True, b"\x01", "binary_data_size exceeds the body"),
        (-1, b"\x01", "binary_data_size exceeds the body"),
        (5, b"\x01\x02\x03\x04", "binary_data_size exceeds the body"),
        (3, b"\x01\x02\x03", "do not match shape"),
    ],
)
def test_binary_sizes_that_do_not_fit_are_refused(size: object, raw: bytes, reason: str) -> None:
    body, length = binary(request(tensor("INT32", [1], binary_data_size=size)), raw)
    message = refused(body, length)
    assert reason in message and repr(NAME) in message


def test_binary_bytes_elements() -> None:
    raw = struct.pack("<I", 0) + struct.pack("<I", 3) + b"abc"
    body, length = binary(request(tensor("BYTES", [2], binary_data_size=len(raw))), raw)
    assert parsed(body, length) == [b"", b"abc"]
    for bad, reason in [
        (raw[:-1], "truncated BYTES element"),
        (raw[:3], "truncated BYTES element"),
        (raw + b"!", "extra bytes after 2 BYTES elements"),
    ]:
        body, length = binary(request(tensor("BYTES", [2], binary_data_size=len(bad))), bad)
        message = refused(body, length)
        assert reason in message and repr(NAME) in message


def test_the_header_length_must_be_ascii_digits_within_the_body() -> None:
    head = request(tensor("UINT8", [1], binary_data_size=1))
    assert parsed(head + b"\x07", str(len(head))).tolist() == [7]
    for length in (str(len(head) + 2), "", "-1", "1e3", "\u00b2", " 10"):
        assert "does not fit the body" in refused(head + b"\x07", length)
    whole = request(tensor("UINT8", [1], [9]))
    assert parsed(whole, str(len(whole))).tolist() == [9]  # exactly the body's length


def test_refusals_name_the_input_and_the_problem() -> None:
    twice = request(tensor("UINT8", [1], [1]), tensor("UINT8", [1], [2]))
    assert "given twice" in refused(twice)
    assert "neither data nor binary_data_size" in refused(request(tensor("UINT8", [1])))
    assert "negative dimension" in refused(request(tensor("UINT8", [-1, 1], [1])))
    assert "is not supported" in refused(request(tensor("FP16", [1], [1])))
    for message in (refused(twice), refused(request(tensor("FP16", [1], [1])))):
        assert repr(NAME) in message
    assert "'FP16'" in refused(request(tensor("FP16", [1], [1])))
    assert "declares 1000000 elements" in refused(request(tensor("UINT8", [1000, 1000], [1])))
    long_name = "n" * 61
    message = refused(request({**tensor("FP16", [1], [1]), "name": long_name}))
    assert repr("n" * 60) + "..." in message
    message = refused(request({**tensor("FP16", [1], [1]), "name": "n" * 60}))
    assert repr("n" * 60) + ":" in message


def test_invalid_documents_say_where() -> None:
    assert "inputs" in refused(b'{"inputs": []}')
    assert "inputs" in refused(b"{}") and "request" not in refused(b"{}").split(":", 1)[1][:3]
    assert "request: Input should be" in refused(b"[1]")
    assert "not valid JSON" in refused(b'{"inputs": NaN}')
    assert "not valid JSON" in refused(b"{")


def nested(depth: int, filler: str = "") -> bytes:
    """A valid request whose `parameters` nest lists `depth` levels deep in total."""
    inner = "[" * (depth - 2) + "]" * (depth - 2)  # inside the document and parameters
    tensor_json = '{"name":"x","datatype":"UINT8","shape":[1],"data":[1]}'
    return f'{{"id":"{filler}","parameters":{{"p":{inner}}},"inputs":[{tensor_json}]}}'.encode()


def test_nesting_is_refused_just_past_the_limit() -> None:
    parse_request(nested(MAX_JSON_DEPTH), None)
    assert f"deeper than {MAX_JSON_DEPTH}" in refused(nested(MAX_JSON_DEPTH + 1))


@pytest.mark.parametrize(
    "filler",
    ["[" * 40, '\\"' + "[" * 40, "\\\\" + "{" * 40, "x" * ((1 << 20) - 20) + "[" * 60],
)
def test_brackets_inside_strings_do_not_count(filler: str) -> None:
    parse_request(nested(MAX_JSON_DEPTH, filler), None)
    assert "deeper" in refused(nested(MAX_JSON_DEPTH + 1, filler))


def test_nesting_is_counted_across_the_scan_chunks() -> None:
    # 1 MiB of padding inside a string, then the deep list: quotes and depth carry over.
    pad = "y" * (1 << 20)
    deep = "[" * (MAX_JSON_DEPTH) + "]" * (MAX_JSON_DEPTH)
    body = f'{{"id":"{pad}","parameters":{{"p":{deep}}},"inputs":[]}}'.encode()
    assert "deeper" in refused(body)
    shallow = nested(MAX_JSON_DEPTH - 1, pad)
    parse_request(shallow, None)


def test_response_layout_json_and_binary() -> None:
    labels = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    probabilities = np.linspace(0, 1, 4, dtype=np.float32).reshape(1, 1, 2, 2)
    body, length = encode_response({"model_name": "m"}, [("labels", labels, False)])
    assert length is None and b" " not in body
    assert json.loads(body) == {
        "model_name": "m",
        "outputs": [
            {"name": "labels", "datatype": "UINT8", "shape": [1, 2, 3], "data": list(range(6))}
        ],
    }
    body, length = encode_response(
        {"id": "r"}, [("labels", labels, True), ("probabilities", probabilities, True)]
    )
    assert length is not None
    head = json.loads(body[:length])
    assert [o["parameters"] for o in head["outputs"]] == [
        {"binary_data_size": 6},
        {"binary_data_size": 16},
    ]
    assert [o["name"] for o in head["outputs"]] == ["labels", "probabilities"]
    assert body[length:] == labels.tobytes() + probabilities.tobytes()


def test_edge_values_and_unprintable_names() -> None:
    biggest = float(np.finfo(np.float32).max)
    assert parsed(request(tensor("FP32", [2], [biggest, -biggest]))).tolist() == [
        biggest,
        -biggest,
    ]
    for datatype in ("FP32", "UINT8", "INT64"):
        assert parsed(request(tensor(datatype, [0], []))).shape == (0,)
    ragged = request(tensor("BYTES", [2], [["a"], ["b", "c"]]))
    assert "BYTES data must be 2 strings" in refused(ragged)
    lone = b'{"inputs":[{"name":"\\ud800","datatype":"FP16","shape":[1],"data":[1]}]}'
    message = refused(lone)
    assert "\\ud800" in message and "is not supported" in message
    message.encode("utf-8")  # printable in a JSON answer


def test_more_edges_a_mutation_run_found() -> None:
    assert "declares 2147483647 elements" in refused(request(tensor("UINT8", [2**31 - 1], [1])))
    overflowing = b'{"inputs":[{"name":"x","datatype":"UINT8","shape":[1],"data":[1e400]}]}'
    assert "out of range for UINT8" in refused(overflowing)  # json reads 1e400 as inf
    assert "BYTES data must be 2 strings" in refused(request(tensor("BYTES", [2], ["a"])))
    assert repr(NAME) in refused(request(tensor("BYTES", [2], ["a"])))
    raw = struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0)  # the last element empty
    body, length = binary(request(tensor("BYTES", [2], binary_data_size=len(raw))), raw)
    assert parsed(body, length) == [b"abc", b""]
    huge = struct.pack("<I", 2**31) + b"abc"
    body, length = binary(request(tensor("BYTES", [1], binary_data_size=len(huge))), huge)
    assert "truncated BYTES element" in refused(body, length)
    # No Inference-Header-Content-Length: nothing binary follows the JSON.
    message = refused(request(tensor("UINT8", [1], binary_data_size=1)))
    assert "binary_data_size exceeds the body" in message
    assert refused(b"{}", "9") == "Inference-Header-Content-Length does not fit the body"


def test_validation_problems_are_listed_five_at_most() -> None:
    message = refused(b'{"inputs":[{"name":"x"}]}')
    assert "inputs.0.shape: Field required; inputs.0.datatype: Field required" in message
    assert "errors.pydantic.dev" not in message
    six = json.dumps({"inputs": [{"name": i} for i in range(3)]}).encode()  # 3 x 3 problems
    assert refused(six).count("; ") == 4


def deep_after_a_long_string(levels: int) -> bytes:
    """20 open lists, a string of 2**20 brackets (the nesting scan's chunks end inside it),
    then `levels` more lists: quotes and depth must carry across the chunks."""
    inner = "[" * levels + "]" * levels
    value = "[" * 20 + '"' + "[" * (1 << 20) + '",' + inner + "]" * 20
    head = f'{{"parameters":{{"p":{value}}},'
    return (head + '"inputs":[{"name":"x","datatype":"UINT8","shape":[1],"data":[1]}]}').encode()


def test_nesting_scan_carries_quotes_and_depth_across_chunks() -> None:
    parse_request(deep_after_a_long_string(MAX_JSON_DEPTH - 22), None)
    assert "deeper" in refused(deep_after_a_long_string(MAX_JSON_DEPTH - 21))


def test_a_string_ending_in_an_escaped_backslash_closes() -> None:
    parse_request(nested(MAX_JSON_DEPTH, "x\\\\"), None)
    assert "deeper" in refused(nested(MAX_JSON_DEPTH + 1, "x\\\\"))
