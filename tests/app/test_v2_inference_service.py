"""The shared Open Inference Protocol service (app/service/v2_infer.py), in process.

test_v2.py drives the same code through a real server and the Triton client; these tests
pin, without a server process, the numbers a client reads: the model metadata, the
labels and probabilities of a batch, the input checks and their limits at their exact
edges, the pixels a request counts for the budget and the answer-size estimate."""

from __future__ import annotations

import io
import json
import math
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.errors import AnswerTooLarge, BadInferenceRequest, PayloadTooLarge
from app.inference.pipeline import Stopped
from app.inference.v2_codec import InferenceRequest
from app.main import create_app
from app.service import v2_infer
from app.service.budget import Limits
from tests.app.conftest import png_bytes, wait_ready


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from tests.app.tiny_models import write_model

    directory = tmp_path_factory.mktemp("v2-service")
    write_model(directory, "threshold", "tiny-grey", size_multiple=8)
    write_model(directory, "brightest", "tiny-rgb")
    settings = Settings(
        model_dir=directory, intra_op_threads=1, max_pixels=1000, v2_max_batch=3,
        max_answer_bytes=10_000,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def settings_of(client: TestClient) -> Settings:
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    return settings


def entry_of(client: TestClient, name: str) -> Any:
    return client.app.state.registry.get(name)  # type: ignore[attr-defined]


def infer(client: TestClient, name: str, array: np.ndarray, **request: Any) -> Any:
    tensor = {"name": "image", "shape": list(array.shape), "datatype": "UINT8",
              "data": array.ravel().tolist()}  # fmt: skip
    return client.post(
        f"/v2/models/{name}/infer", content=json.dumps({"inputs": [tensor], **request})
    )


def bright_share(value: int) -> float:
    """tiny-grey's probability of class 0 ("bright"): softmax of logits (x, -x) with
    x = (value / 255 - 0.5) / 0.5."""
    x = (value / 255 - 0.5) / 0.5
    return math.exp(x) / (math.exp(x) + math.exp(-x))


def test_model_metadata_names_the_inputs_outputs_and_classes(served: TestClient) -> None:
    grey = served.get("/v2/models/tiny-grey").json()
    assert grey["name"] == "tiny-grey" and "0.0.1" in grey["versions"]
    assert grey["platform"] == "onnxruntime_onnx"
    assert grey["inputs"] == [
        {"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 1]},
        {"name": "image_bytes", "datatype": "BYTES", "shape": [1]},
    ]
    assert grey["outputs"] == [
        {"name": "labels", "datatype": "UINT8", "shape": [-1, -1, -1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2, -1, -1]},
    ]
    assert grey["parameters"]["classes"] == ["bright", "dark"]
    providers = grey["parameters"]["providers"]
    assert isinstance(providers, list) and providers and all(isinstance(p, str) for p in providers)
    rgb = served.get("/v2/models/tiny-rgb").json()
    assert rgb["inputs"][0]["shape"] == [-1, -1, -1, 3]
    assert rgb["outputs"][1]["shape"] == [-1, 3, -1, -1]
    assert rgb["parameters"]["classes"] == ["red", "green", "blue"]


def test_a_batch_gives_each_image_its_labels_and_probabilities(served: TestClient) -> None:
    batch = np.array([[[0, 255, 100], [200, 127, 128]], [[255, 255, 0], [0, 30, 240]]], np.uint8)
    response = infer(
        served, "tiny-grey", batch[..., None],
        outputs=[{"name": "labels"}, {"name": "probabilities"}],
    )  # fmt: skip
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    labels = outputs["labels"]
    assert labels["shape"] == [2, 2, 3] and labels["datatype"] == "UINT8"
    assert labels["data"] == [1, 0, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0]  # 0 = above 127.5
    probabilities = outputs["probabilities"]
    assert probabilities["shape"] == [2, 2, 2, 3] and probabilities["datatype"] == "FP32"
    got = np.array(probabilities["data"]).reshape(2, 2, 2, 3)
    bright = np.vectorize(bright_share)(batch)
    np.testing.assert_allclose(got[:, 0], bright, atol=1e-5)
    np.testing.assert_allclose(got[:, 1], 1 - bright, atol=1e-5)


def test_an_rgb_tensor_and_an_encoded_file_give_the_same_labels(served: TestClient) -> None:
    pixels = np.array([[[200, 10, 10], [10, 200, 10]], [[10, 10, 200], [90, 10, 80]]], np.uint8)
    tensor = infer(served, "tiny-rgb", pixels[None])
    assert tensor.status_code == 200, tensor.text
    assert tensor.json()["outputs"][0]["data"] == [0, 1, 2, 0]
    data = png_bytes(pixels)
    images = v2_infer.request_images({"image_bytes": [data]}, settings_of(served))
    assert len(images) == 1 and np.array_equal(images[0], pixels)


def test_an_unknown_output_is_refused_naming_it_cut_to_64_characters() -> None:
    with pytest.raises(BadInferenceRequest) as unknown:
        v2_infer.check_output_name("x" * 100)
    assert unknown.value.detail == (
        f"unknown output {'x' * 64 + '...'!r}; outputs are ['labels', 'probabilities']"
    )
    v2_infer.check_output_name("labels")
    v2_infer.check_output_name("probabilities")


GREY = np.zeros((1, 2, 3, 1), np.uint8)


@pytest.mark.parametrize(
    "tensors",
    [
        {},
        {"image": GREY, "image_bytes": [b"x"]},
        {"image": GREY, "extra": GREY},
        {"pixels": GREY},
    ],
    ids=["none", "both", "an-extra-tensor", "an-unknown-name"],
)
def test_a_request_needs_exactly_one_known_input(tensors: dict[str, Any]) -> None:
    with pytest.raises(BadInferenceRequest) as refused:
        v2_infer.request_images(tensors, Settings())
    assert refused.value.detail == v2_infer.ONE_INPUT


BYTES_SHAPE = r"'image_bytes' must be a BYTES tensor of shape \[1\]"
UINT8 = "'image' must be a UINT8 tensor"
NCHW = r"'image' must have shape \[N, H, W, C\] with C 1 or 3 and no empty side"


@pytest.mark.parametrize(
    ("tensors", "reason"),
    [
        ({"image_bytes": b"raw"}, BYTES_SHAPE),
        ({"image_bytes": []}, BYTES_SHAPE),
        ({"image_bytes": [b"a", b"b"]}, BYTES_SHAPE),
        ({"image": GREY.astype(np.int16)}, UINT8),
        ({"image": GREY.tolist()}, UINT8),
        ({"image": GREY[0]}, NCHW),
        ({"image": np.zeros((1, 2, 3, 2), np.uint8)}, NCHW),
        ({"image": np.zeros((1, 2, 3, 4), np.uint8)}, NCHW),
        ({"image": np.zeros((0, 2, 3, 1), np.uint8)}, NCHW),
        ({"image": np.zeros((1, 0, 3, 1), np.uint8)}, NCHW),
        ({"image": np.zeros((1, 2, 0, 3), np.uint8)}, NCHW),
        ({"image": np.zeros((1, 2, 3, 1, 1), np.uint8)}, NCHW),
    ],
)
def test_malformed_image_tensors_are_bad_requests_saying_what_is_expected(
    tensors: dict[str, Any], reason: str
) -> None:
    with pytest.raises(BadInferenceRequest, match=reason):
        v2_infer.request_images(tensors, Settings())


def test_the_batch_and_pixel_limits_hold_at_their_exact_edges() -> None:
    settings = Settings(v2_max_batch=3, max_pixels=60)
    assert len(v2_infer.request_images({"image": np.zeros((3, 4, 5, 1), np.uint8)}, settings)) == 3
    with pytest.raises(PayloadTooLarge) as batch:
        v2_infer.request_images({"image": np.zeros((4, 1, 1, 1), np.uint8)}, settings)
    assert "SEG_V2_MAX_BATCH" in batch.value.detail and batch.value.status == 413
    with pytest.raises(PayloadTooLarge) as pixels:  # 3 x 4 x 5 = 60 fits; 61 does not
        v2_infer.request_images({"image": np.zeros((1, 61, 1, 1), np.uint8)}, settings)
    assert "SEG_MAX_PIXELS=60" in pixels.value.detail
    # the pixels of the whole batch count, not those of one image
    with pytest.raises(PayloadTooLarge):
        v2_infer.request_images({"image": np.zeros((2, 5, 7, 3), np.uint8)}, settings)


def test_images_keep_their_pixels_grey_as_two_dimensions_rgb_as_three() -> None:
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (2, 3, 4, 1), np.uint8)
    images = v2_infer.request_images({"image": grey}, Settings())
    assert [i.shape for i in images] == [(3, 4), (3, 4)]
    assert np.array_equal(images[1], grey[1, :, :, 0])
    rgb = rng.integers(0, 256, (1, 3, 4, 3), np.uint8)
    (image,) = v2_infer.request_images({"image": rgb}, Settings())
    assert image.shape == (3, 4, 3) and np.array_equal(image, rgb[0])


def test_the_pixels_a_request_counts_for_the_budget() -> None:
    assert v2_infer.tensor_pixels({"image": np.zeros((2, 3, 5, 1), np.uint8)}) == 30
    buffer = io.BytesIO()
    Image.new("L", (7, 11)).save(buffer, format="PNG")
    assert v2_infer.tensor_pixels({"image_bytes": [buffer.getvalue()]}) == 77
    assert v2_infer.tensor_pixels({"image": np.zeros((3, 5, 1), np.uint8)}) == 0
    assert v2_infer.tensor_pixels({"image": [[1]]}) == 0
    assert v2_infer.tensor_pixels({"image_bytes": [buffer.getvalue()] * 2}) == 0
    assert v2_infer.tensor_pixels({"image_bytes": ["text"]}) == 0
    assert v2_infer.tensor_pixels({}) == 0


def request_of(**fields: Any) -> InferenceRequest:
    tensor = {"name": "image", "shape": [1], "datatype": "UINT8", "data": [0]}
    return InferenceRequest.model_validate({"inputs": [tensor], **fields})


def test_wanted_outputs_follow_the_binary_data_extension() -> None:
    assert v2_infer.wanted_outputs(request_of()) == [("labels", False)]
    binary = {"binary_data_output": True}
    assert v2_infer.wanted_outputs(request_of(parameters=binary)) == [("labels", True)]
    outputs = [{"name": "probabilities"}, {"name": "labels", "parameters": {"binary_data": True}}]
    assert v2_infer.wanted_outputs(request_of(outputs=outputs)) == [
        ("probabilities", False), ("labels", True),
    ]  # fmt: skip
    outputs = [{"name": "probabilities"}, {"name": "labels", "parameters": {"binary_data": False}}]
    assert v2_infer.wanted_outputs(request_of(outputs=outputs, parameters=binary)) == [
        ("probabilities", True), ("labels", False),
    ]  # fmt: skip
    with pytest.raises(BadInferenceRequest):
        v2_infer.wanted_outputs(request_of(outputs=[{"name": "logits"}]))


@pytest.mark.parametrize(
    ("wanted", "size"),
    [
        ([("labels", True)], 6),  # one byte a label
        ([("labels", False)], 24),  # "255," as JSON text
        ([("probabilities", True)], 48),  # 2 classes x 4-byte floats
        ([("probabilities", False)], 192),  # 2 classes x "0.12345678,"-like 16 bytes
        ([("labels", True), ("probabilities", True)], 54),
        ([("probabilities", True), ("labels", False)], 72),  # every output adds its size
    ],
)
def test_the_answer_size_estimate_is_refused_one_byte_over_the_limit(
    served: TestClient, wanted: v2_infer.Wanted, size: int
) -> None:
    entry = entry_of(served, "tiny-grey")
    images = [np.zeros((2, 3), np.uint8)]  # 6 pixels
    v2_infer.check_answer_size(entry, images, wanted, Limits(10**6, 10**6, size))
    with pytest.raises(AnswerTooLarge) as refused:
        v2_infer.check_answer_size(entry, images, wanted, Limits(10**6, 10**6, size - 1))
    detail = refused.value.detail
    assert detail.startswith(f"the requested outputs would be about {size} bytes")
    assert "SEG_MAX_ANSWER_BYTES" in detail and "ask for binary_data or fewer pixels" in detail


def test_the_answer_size_counts_every_image_of_a_batch(served: TestClient) -> None:
    entry = entry_of(served, "tiny-grey")
    images = [np.zeros((2, 3), np.uint8), np.zeros((1, 4), np.uint8)]  # 6 + 4 pixels
    v2_infer.check_answer_size(entry, images, [("labels", True)], Limits(10**6, 10**6, 10))
    with pytest.raises(AnswerTooLarge):
        v2_infer.check_answer_size(entry, images, [("labels", True)], Limits(10**6, 10**6, 9))


def test_inference_stops_between_images_once_told(served: TestClient) -> None:
    entry = entry_of(served, "tiny-grey")
    images = [np.zeros((2, 3), np.uint8), np.full((2, 3), 255, np.uint8)]
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped, match="after 0 of 2 images"):
        v2_infer.infer_images(entry, images, [("labels", True)], settings_of(served), stop)
    result = v2_infer.infer_images(
        entry, images, [("labels", True)], settings_of(served), threading.Event()
    )
    assert set(result.arrays) == {"labels"}
    assert result.arrays["labels"].tolist() == [[[1] * 3] * 2, [[0] * 3] * 2]
    assert result.inference_ms > 0


def test_inference_refuses_an_oversized_answer_before_running(served: TestClient) -> None:
    entry = entry_of(served, "tiny-grey")
    settings = Settings(max_answer_bytes=1024, max_pixels=10**6)
    stop = threading.Event()
    wanted = [("probabilities", False)]  # 2 classes x 16 bytes x 32 pixels = 1024: fits
    v2_infer.infer_images(entry, [np.zeros((4, 8), np.uint8)], wanted, settings, stop)
    with pytest.raises(AnswerTooLarge):  # 33 pixels
        v2_infer.infer_images(entry, [np.zeros((3, 11), np.uint8)], wanted, settings, stop)


class SetAfterFirstLook(threading.Event):
    """A stop event that reads as set from its second look on: infer_images's own check
    between images passes, and the next check comes from inside the image's work."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks > 1


def test_the_stop_reaches_the_tiles_of_an_image(served: TestClient) -> None:
    entry = entry_of(served, "tiny-grey")
    settings = Settings(whole_image_max_pixels=64, max_pixels=10**6)  # 64 x 64 is tiled
    image = np.zeros((64, 64), np.uint8)
    stop = SetAfterFirstLook()
    with pytest.raises(Stopped):
        v2_infer.infer_images(entry, [image], [("labels", True)], settings, stop)
    assert stop.looks >= 2
    done = v2_infer.infer_images(entry, [image], [("labels", True)], settings, threading.Event())
    assert done.arrays["labels"].shape == (1, 64, 64)
