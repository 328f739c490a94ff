"""Open Inference Protocol endpoints, driven by the real Triton HTTP client."""

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

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
