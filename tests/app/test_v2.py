"""Open Inference Protocol endpoints, driven by the real Triton HTTP client."""

import json
import math
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from app.errors import BadInferenceRequest
from app.inference.v2_codec import parse_request
from tests.app.conftest import png_bytes, running_server
from tests.app.test_api import expected_grey, grey_pattern, read_png
from tests.app.tiny_models import write_model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("v2models")
    write_model(directory, "threshold", "tiny-grey", size_multiple=8)
    write_model(directory, "brightest", "tiny-rgb")
    with running_server(directory) as (base, _):
        yield base


@pytest.fixture
def client(server: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.removeprefix("http://"))


def v1_labels(server: str, model: str, data: bytes) -> np.ndarray:
    response = httpx.post(
        f"{server}/v1/models/{model}/segment", content=data, headers={"content-type": "image/png"}
    )
    return read_png(response.content)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny-grey") and client.is_model_ready("tiny-grey", "0.0.1")
    assert client.get_server_metadata()["name"] == "segserve"
    meta = client.get_model_metadata("tiny-rgb")
    assert meta["versions"] == ["0.0.1"]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        "image": "UINT8",
        "image_bytes": "BYTES",
    }
    assert meta["inputs"][0]["shape"] == [-1, -1, -1, 3]
    assert {o["name"] for o in meta["outputs"]} == {"labels", "probabilities"}
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")
    assert not client.is_model_ready("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_uint8_tensor_matches_v1(
    client: triton.InferenceServerClient, server: str, binary: bool
) -> None:
    pixels = grey_pattern(19, 26)
    image = triton.InferInput("image", [1, 19, 26, 1], "UINT8")
    image.set_data_from_numpy(pixels[None, ..., None], binary_data=binary)
    outputs = [triton.InferRequestedOutput("labels", binary_data=binary)]
    result = client.infer("tiny-grey", [image], outputs=outputs, request_id="req-7")
    labels = result.as_numpy("labels")
    assert labels.shape == (1, 19, 26) and labels.dtype == np.uint8
    assert result.get_response()["id"] == "req-7"
    assert np.array_equal(labels[0], expected_grey(pixels))
    assert np.array_equal(labels[0], v1_labels(server, "tiny-grey", png_bytes(pixels)))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_encoded_image_bytes_and_probabilities(
    client: triton.InferenceServerClient, server: str, binary: bool
) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (12, 9, 3), dtype=np.uint8)
    data = png_bytes(rgb)
    image = triton.InferInput("image_bytes", [1], "BYTES")
    image.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=True)
    outputs = [
        triton.InferRequestedOutput("labels", binary_data=binary),
        triton.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = client.infer("tiny-rgb", [image], outputs=outputs)
    labels, probs = result.as_numpy("labels"), result.as_numpy("probabilities")
    assert np.array_equal(labels[0], v1_labels(server, "tiny-rgb", data))
    assert np.array_equal(labels[0], rgb.argmax(2))
    assert probs.shape == (1, 3, 12, 9) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5) and np.array_equal(
        probs[0].argmax(0), labels[0]
    )


def test_batch_and_default_outputs(client: triton.InferenceServerClient) -> None:
    batch = np.stack([grey_pattern(8, 8), 255 - grey_pattern(8, 8)])[..., None]
    image = triton.InferInput("image", list(batch.shape), "UINT8")
    image.set_data_from_numpy(batch)
    result = client.infer("tiny-grey", [image])  # no outputs named: labels, binary
    labels = result.as_numpy("labels")
    assert labels.shape == (2, 8, 8) and np.array_equal(labels[1], 1 - labels[0])


def test_protocol_errors(client: triton.InferenceServerClient, server: str) -> None:
    wrong_type = triton.InferInput("image", [1, 4, 4, 1], "FP32")
    wrong_type.set_data_from_numpy(np.zeros((1, 4, 4, 1), np.float32))
    with pytest.raises(InferenceServerException, match="UINT8"):
        client.infer("tiny-grey", [wrong_type])
    bad_bytes = triton.InferInput("image_bytes", [1], "BYTES")
    bad_bytes.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="not an image"):
        client.infer("tiny-grey", [bad_bytes])

    def tensor(**fields: object) -> bytes:
        return json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", **fields}]}).encode()

    for body in [
        b"{not json",
        b'{"inputs": []}',
        tensor(shape=[1, 2, 2, 1], data=[1, 2]),  # too few values
        tensor(shape=[1, 1, 1, 1], data=[300]),  # out of UINT8 range
        tensor(shape=[1, 2, 2, 4], data=[0] * 16),  # 4 channels
    ]:
        response = httpx.post(f"{server}/v2/models/tiny-grey/infer", content=body)
        assert response.status_code == 400 and set(response.json()) == {"error"}, response.text
    missing = httpx.post(f"{server}/v2/models/nope/infer", content=b"{}")
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
    short = httpx.post(
        f"{server}/v2/models/tiny-grey/infer",
        content=tensor(shape=[1, 2, 2, 1], parameters={"binary_data_size": 4}),
        headers={"Inference-Header-Content-Length": "9999"},
    )
    assert short.status_code == 400 and "does not fit" in short.json()["error"]


def uint8_tensor(**fields: object) -> dict[str, object]:
    return {"name": "image", "datatype": "UINT8", **fields}


def v2_request(*inputs: dict[str, object], tail: bytes = b"") -> tuple[bytes, str | None]:
    """A body and its Inference-Header-Content-Length (None when there is no binary tail)."""
    head = json.dumps({"inputs": list(inputs)}).encode()
    return head + tail, (str(len(head)) if tail else None)


def binary_tensor(shape: list[int], raw: bytes) -> tuple[bytes, str | None]:
    return v2_request(
        uint8_tensor(shape=shape, parameters={"binary_data_size": len(raw)}), tail=raw
    )


SURROGATE = {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["\ud800"]}
HOSTILE_V2 = {
    "shape holding 2**70": (v2_request(uint8_tensor(shape=[2**70, 1, 1, 1], data=[1])), "above"),
    "2**32 x 2**32 overflows int64": (binary_tensor([2**32, 2**32, 1, 1], b""), "above"),
    "(2**62+1) x 4 wraps to 4": (binary_tensor([2**62 + 1, 4, 1, 1], b"abcd"), "above"),
    "2**21 x 2**21 x 2**21 x 2 wraps to 0": (binary_tensor([2**21] * 3 + [2], b""), "elements"),
    "nested 2000 deep": ((b"[" * 2000 + b"]" * 2000, None), "nested deeper"),
    "nested in data": (
        (b'{"inputs": [{"name": "image", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}]}", None),
        "nested deeper",
    ),
    "lone surrogate in BYTES": (v2_request(SURROGATE), "not valid Unicode"),
    "superscript two as header length": ((b"{}", "\u00b2"), "does not fit"),
    "NaN in UINT8 data": (v2_request(uint8_tensor(shape=[1, 1, 1, 1], data=[math.nan])), "NaN"),
    "1.7 in UINT8 data": (
        v2_request(uint8_tensor(shape=[1, 1, 1, 1], data=[1.7])),
        "whole numbers",
    ),
    "strings as UINT8 data": (v2_request(uint8_tensor(shape=[1, 1, 1, 1], data=["7"])), "numbers"),
    "true as binary_data_size": (
        v2_request(
            uint8_tensor(shape=[1, 1, 1, 1], parameters={"binary_data_size": True}), tail=b"x"
        ),
        "binary_data_size",
    ),
    "one name twice": (
        v2_request(*[uint8_tensor(shape=[1, 1, 1, 1], data=[1])] * 2),
        "given twice",
    ),
}


@pytest.mark.parametrize(("request_", "message"), HOSTILE_V2.values(), ids=HOSTILE_V2.keys())
def test_hostile_requests_are_bad_requests(
    request_: tuple[bytes, str | None], message: str
) -> None:
    body, header_length = request_
    with pytest.raises(BadInferenceRequest, match=message) as caught:
        parse_request(body, header_length)
    caught.value.detail.encode("utf-8")  # printable in a JSON answer


def test_valid_edge_requests_still_parse() -> None:
    nested = uint8_tensor(shape=[1, 2, 2, 1], data=[[[[0], [255]], [[7.0], [8]]]])
    limits = {"name": "n", "datatype": "INT64", "shape": [2], "data": [-(2**63), 2**63 - 1]}
    text = {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["[[[[{{{{" * 50]}
    body, _ = v2_request(nested, limits, text)
    _, tensors = parse_request(body, None)
    image = tensors["image"]
    assert image.dtype == np.uint8 and image.ravel().tolist() == [0, 255, 7, 8]
    assert tensors["n"].tolist() == [-(2**63), 2**63 - 1]
    assert tensors["s"] == [b"[[[[{{{{" * 50]
    body, length = binary_tensor([1, 2, 2, 1], bytes([1, 2, 3, 4]))
    assert parse_request(body, length)[1]["image"].ravel().tolist() == [1, 2, 3, 4]


def test_hostile_requests_over_http(server: str) -> None:
    url = f"{server}/v2/models/tiny-grey/infer"
    for name in ["shape holding 2**70", "(2**62+1) x 4 wraps to 4", "nested 2000 deep",
                 "lone surrogate in BYTES"]:  # fmt: skip
        (body, length), _ = HOSTILE_V2[name]
        headers = {} if length is None else {"Inference-Header-Content-Length": length}
        response = httpx.post(url, content=body, headers=headers)
        assert response.status_code == 400 and set(response.json()) == {"error"}, name
    superscript = httpx.post(
        url, content=b"{}", headers={"Inference-Header-Content-Length": b"\xb2"}
    )
    assert superscript.status_code == 400 and "does not fit" in superscript.json()["error"]
