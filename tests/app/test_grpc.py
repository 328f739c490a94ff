"""The Open Inference Protocol over gRPC (SEG_GRPC_PORT), driven by `tritonclient.grpc` against
a real server process: the same class maps as /v1, the same errors as status codes, API keys
in metadata, message limits, readiness, admission and stop on a passed deadline."""

from __future__ import annotations

import io
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.app.conftest import free_port, png_bytes, running_server
from tests.app.tiny_models import write_model

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"
LIMITS = {
    "SEG_MAX_UPLOAD_BYTES": "2000000",
    "SEG_MAX_PIXELS": "250000",
    "SEG_MAX_ANSWER_BYTES": "300000",
    "SEG_V2_MAX_BATCH": "4",
    "SEG_WHOLE_IMAGE_MAX_PIXELS": "4096",  # larger images are tiled, as on /v1
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("grpc-models")
    write_model(directory, "threshold", "tiny-grey", size_multiple=8)
    write_model(directory, "brightest", "tiny-rgb")
    write_model(directory, "box", "tiny-box", size_multiple=4)
    return directory


@pytest.fixture(scope="module")
def server(models: Path) -> Iterator[tuple[str, str]]:
    """(HTTP base URL, gRPC address) of one server process."""
    port = free_port()
    with running_server(models, SEG_GRPC_PORT=str(port), **LIMITS) as (base, _):
        yield base, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(server: tuple[str, str]) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server[1]) as grpc_client:
        yield grpc_client


def image_input(pixels: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    return tensor


def bytes_input(data: bytes) -> triton.InferInput:
    tensor = triton.InferInput("image_bytes", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
    return tensor


def v1_map(base: str, model: str, encoded: bytes) -> np.ndarray:
    answer = httpx.post(
        f"{base}/v1/models/{model}/segment",
        content=encoded,
        headers={"content-type": "application/octet-stream"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return np.asarray(Image.open(io.BytesIO(answer.content)))


def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def status(call: Any, *args: Any) -> tuple[str, str]:
    """The status code and message of the error `call(*args)` raises."""
    with pytest.raises(InferenceServerException) as caught:
        call(*args)
    return str(caught.value.status()), str(caught.value.message())


# Same class maps as /v1.


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        ("tiny-grey", (1, 37, 53, 1)),  # padded to the size multiple 8
        ("tiny-rgb", (3, 21, 34, 3)),  # a batch of three
        ("tiny-box", (1, 90, 100, 1)),  # tiled: above SEG_WHOLE_IMAGE_MAX_PIXELS, seams matter
    ],
)
def test_uint8_pixels_give_v1_class_maps(
    server: tuple[str, str],
    client: triton.InferenceServerClient,
    model: str,
    shape: tuple[int, ...],
) -> None:
    pixels = noise(shape)
    result = client.infer(model, [image_input(pixels)], request_id="req-1")
    labels = result.as_numpy("labels")
    assert labels.dtype == np.uint8 and labels.shape == shape[:3]
    assert result.get_response().id == "req-1"
    assert result.get_response().model_version == "0.0.1"
    for image, served in zip(pixels, labels, strict=True):
        grey = image[..., 0] if image.shape[2] == 1 else image
        assert np.array_equal(served, v1_map(server[0], model, png_bytes(grey)))


def test_encoded_image_bytes_give_v1_class_maps(
    server: tuple[str, str], client: triton.InferenceServerClient
) -> None:
    buffer = io.BytesIO()
    Image.fromarray(noise((40, 52, 3), seed=3)).save(buffer, format="JPEG", quality=80)
    encoded = buffer.getvalue()
    result = client.infer("tiny-rgb", [bytes_input(encoded)])
    assert np.array_equal(result.as_numpy("labels")[0], v1_map(server[0], "tiny-rgb", encoded))


def test_probabilities_are_fp32_softmax_of_the_labels(client: triton.InferenceServerClient) -> None:
    pixels = noise((2, 16, 24, 3), seed=5)
    outputs = [triton.InferRequestedOutput("probabilities"), triton.InferRequestedOutput("labels")]
    result = client.infer("tiny-rgb", [image_input(pixels)], outputs=outputs)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 3, 16, 24)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(probabilities.argmax(axis=1), result.as_numpy("labels"))
    assert np.array_equal(result.as_numpy("labels"), pixels.argmax(axis=-1))


def test_typed_contents_are_accepted_like_raw_contents(
    server: tuple[str, str], client: triton.InferenceServerClient
) -> None:
    """`contents.uint_contents` and `contents.bytes_contents`, which tritonclient never sends."""
    pixels = noise((1, 9, 11, 1), seed=7)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server[1]))
    request = service_pb2.ModelInferRequest(model_name="tiny-grey")
    tensor = request.inputs.add(name="image", datatype="UINT8", shape=pixels.shape)
    tensor.contents.uint_contents.extend(pixels.ravel().tolist())
    answer = stub.ModelInfer(request, timeout=30)
    labels = np.frombuffer(answer.raw_output_contents[0], np.uint8).reshape(1, 9, 11)
    raw = client.infer("tiny-grey", [image_input(pixels)]).as_numpy("labels")
    assert np.array_equal(labels, raw)
    request = service_pb2.ModelInferRequest(model_name="tiny-grey")
    tensor = request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(png_bytes(pixels[0, ..., 0]))
    answer = stub.ModelInfer(request, timeout=30)
    assert np.array_equal(np.frombuffer(answer.raw_output_contents[0], np.uint8), raw.ravel())


@pytest.mark.shared_data
def test_shipped_model_on_isbi_gives_the_v1_class_map(models: Path) -> None:
    """The shipped U-Net on a real ISBI slice, tiled as /v1 tiles it."""
    encoded = (SHARED / "isbi2012" / "images" / "20.png").read_bytes()
    port = free_port()
    shipped = Path(__file__).resolve().parents[2] / "app" / "shipped_models"
    with (
        running_server(shipped, SEG_GRPC_PORT=str(port)) as (base, _),
        triton.InferenceServerClient(f"127.0.0.1:{port}") as grpc_client,
    ):
        expected = v1_map(base, "unet-isbi", encoded)
        pixels = np.asarray(Image.open(io.BytesIO(encoded)).convert("L"))[None, ..., None]
        raw = grpc_client.infer("unet-isbi", [image_input(pixels)], client_timeout=120)
        coded = grpc_client.infer("unet-isbi", [bytes_input(encoded)], client_timeout=120)
    assert np.array_equal(raw.as_numpy("labels")[0], expected)
    assert np.array_equal(coded.as_numpy("labels")[0], expected)
    assert set(np.unique(expected)) == {0, 1}  # membrane and cell both found


# Metadata and readiness.


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny-grey") and client.is_model_ready("tiny-grey", "0.0.1")
    assert client.get_server_metadata(as_json=True)["name"] == "segserve"
    metadata = client.get_model_metadata("tiny-rgb", as_json=True)
    assert metadata["versions"] == ["0.0.1"]
    assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [
        ("image", "UINT8"),
        ("image_bytes", "BYTES"),
    ]
    assert metadata["outputs"][1]["shape"] == ["-1", "3", "-1", "-1"]
    assert status(lambda: client.is_model_ready("nope"))[0] == "StatusCode.NOT_FOUND"
    assert status(lambda: client.get_model_metadata("tiny-rgb", "9"))[0] == "StatusCode.NOT_FOUND"


def test_calls_are_counted_in_the_metrics(
    server: tuple[str, str], client: triton.InferenceServerClient
) -> None:
    client.infer("tiny-grey", [image_input(noise((1, 8, 8, 1)))])
    status(lambda: client.infer("nope", [image_input(noise((1, 8, 8, 1)))]))
    text = httpx.get(f"{server[0]}/metrics").text
    assert 'segserve_grpc_requests_total{code="OK",method="ModelInfer",model="tiny-grey"}' in text
    assert 'code="NOT_FOUND",method="ModelInfer",model="unknown"' in text
    assert 'segserve_inference_seconds_count{model="tiny-grey"}' in text


# Errors as status codes.


def two_inputs() -> list[triton.InferInput]:
    return [image_input(noise((1, 8, 8, 1))), bytes_input(png_bytes(noise((8, 8))))]


def fp32_input() -> list[triton.InferInput]:
    tensor = triton.InferInput("image", [1, 8, 8, 1], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 8, 8, 1), np.float32))
    return [tensor]


ERRORS: dict[str, tuple[str, Any, list[str], str, str]] = {
    # id: (model, inputs, outputs, status code, part of the message)
    "unknown model": ("nope", lambda: [image_input(noise((1, 8, 8, 1)))], [], "NOT_FOUND",
                      "unknown model 'nope'"),
    "FP32 image": ("tiny-grey", fp32_input, [], "INVALID_ARGUMENT", "UINT8"),
    "two inputs": ("tiny-grey", two_inputs, [], "INVALID_ARGUMENT", "exactly one input"),
    "two channels": ("tiny-grey", lambda: [image_input(noise((1, 8, 8, 2)))], [],
                     "INVALID_ARGUMENT", "C 1 or 3"),
    "not an image": ("tiny-grey", lambda: [bytes_input(b"GIF89a not really")], [],
                     "INVALID_ARGUMENT", "image"),
    "unknown output": ("tiny-grey", lambda: [image_input(noise((1, 8, 8, 1)))], ["logits"],
                       "INVALID_ARGUMENT", "unknown output 'logits'"),
    "batch above SEG_V2_MAX_BATCH": ("tiny-grey", lambda: [image_input(noise((5, 8, 8, 1)))], [],
                                     "RESOURCE_EXHAUSTED", "SEG_V2_MAX_BATCH"),
    "pixels above SEG_MAX_PIXELS": ("tiny-grey", lambda: [image_input(noise((2, 300, 500, 1)))],
                                    [], "RESOURCE_EXHAUSTED", "SEG_MAX_PIXELS"),
    "message above SEG_MAX_UPLOAD_BYTES": ("tiny-rgb",
                                           lambda: [image_input(noise((4, 400, 600, 3)))], [],
                                           "RESOURCE_EXHAUSTED", "larger than max"),
    "answer above SEG_MAX_ANSWER_BYTES": ("tiny-rgb",
                                          lambda: [image_input(noise((1, 200, 200, 3)))],
                                          ["probabilities"], "RESOURCE_EXHAUSTED",
                                          "SEG_MAX_ANSWER_BYTES"),
}  # fmt: skip


@pytest.mark.parametrize(("model", "inputs", "outputs", "code", "message"), ERRORS.values(),
                         ids=ERRORS.keys())  # fmt: skip
def test_errors_are_status_codes(
    client: triton.InferenceServerClient,
    model: str, inputs: Any, outputs: list[str], code: str, message: str,
) -> None:  # fmt: skip
    wanted = [triton.InferRequestedOutput(name) for name in outputs] or None
    got_code, got_message = status(lambda: client.infer(model, inputs(), outputs=wanted))
    assert got_code == f"StatusCode.{code}"
    assert message in got_message
    assert client.is_server_ready()  # and the server goes on serving


def raw_request(shape: list[int], raw: bytes, name: str = "image", datatype: str = "UINT8") -> Any:
    request = service_pb2.ModelInferRequest(model_name="tiny-grey", raw_input_contents=[raw])
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    return request


HOSTILE = {
    "raw bytes short of the shape": raw_request([1, 8, 8, 1], b"\0" * 63),
    "shape overflowing int64": raw_request([2**62, 2**62, 1, 1], b"\0"),
    "negative dimension": raw_request([1, -8, -8, 1], b"\0" * 64),
    "BYTES length past the end": raw_request([1], struct.pack("<I", 99) + b"x", "image_bytes",
                                             "BYTES"),
    "BYTES with trailing bytes": raw_request([1], struct.pack("<I", 1) + b"xy", "image_bytes",
                                             "BYTES"),
    "raw and typed contents": raw_request([1, 1, 1, 1], b"\0"),
    "typed element above 255": service_pb2.ModelInferRequest(model_name="tiny-grey"),
}  # fmt: skip
HOSTILE["raw and typed contents"].inputs[0].contents.uint_contents.append(0)
_typed = HOSTILE["typed element above 255"].inputs.add(name="image", datatype="UINT8",
                                                       shape=[1, 1, 2, 1])  # fmt: skip
_typed.contents.uint_contents.extend([3, 300])


@pytest.mark.parametrize("request_", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_requests_are_invalid_arguments(server: tuple[str, str], request_: Any) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server[1]))
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request_, timeout=30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "internal" not in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("method", "data"),
    [
        ("ModelInfer", b"\x0a\x02\xff\xfe"),  # model_name not UTF-8
        ("ModelInfer", b"\x3a\x05ab"),  # raw_input_contents cut short
        ("ModelMetadata", b"\xff\xff\xff"),
        ("ServerLive", b"\x0f"),
    ],
)
def test_malformed_messages_are_invalid_arguments(
    server: tuple[str, str], method: str, data: bytes
) -> None:
    """Bytes that do not parse as the method's message (gRPC itself would say UNKNOWN)."""
    channel = grpc.insecure_channel(server[1])
    call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
    with pytest.raises(grpc.RpcError) as caught:
        call(data, timeout=30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid" in (caught.value.details() or "")


def test_long_names_are_cut_in_errors(client: triton.InferenceServerClient) -> None:
    """A name of a megabyte is not echoed whole into the status details (a header)."""
    pixels = [image_input(noise((1, 8, 8, 1)))]
    code, message = status(lambda: client.infer("m" * 1_000_000, pixels))
    assert code == "StatusCode.NOT_FOUND" and len(message) < 200
    tensor = triton.InferInput("image", [1, 8, 8, 1], "X" * 1_000_000)
    tensor._raw_content = bytes(64)  # tritonclient sends any datatype name as given
    code, message = status(lambda: client.infer("tiny-grey", [tensor]))
    assert code == "StatusCode.INVALID_ARGUMENT" and len(message) < 200


# API keys.


@pytest.fixture(scope="module")
def keyed(models: Path) -> Iterator[triton.InferenceServerClient]:
    port = free_port()
    with (
        running_server(models, SEG_GRPC_PORT=str(port), SEG_API_KEYS="k1, k2"),
        triton.InferenceServerClient(f"127.0.0.1:{port}") as grpc_client,
    ):
        yield grpc_client


def test_api_keys_from_metadata(keyed: triton.InferenceServerClient) -> None:
    assert keyed.is_server_live() and keyed.is_server_ready()  # open, as /v2/health/*
    inputs = [image_input(noise((1, 8, 8, 1)))]
    for call in (
        lambda headers: keyed.infer("tiny-grey", inputs, headers=headers),
        lambda headers: keyed.get_model_metadata("tiny-grey", headers=headers),
        lambda headers: keyed.is_model_ready("tiny-grey", headers=headers),
        lambda headers: keyed.get_server_metadata(headers=headers),
    ):
        assert status(call, None) == (
            "StatusCode.UNAUTHENTICATED",
            "an API key is required: metadata authorization: Bearer <key> or x-api-key: <key>",
        )
        refused = status(call, {"authorization": "Bearer k3"})
        assert refused == ("StatusCode.UNAUTHENTICATED", "the API key is not valid")
        assert status(call, {"x-api-key": "k"})[0] == "StatusCode.UNAUTHENTICATED"
        call({"authorization": "Bearer k2"})
        call({"x-api-key": "k1"})


# Admission, deadlines and readiness, with sessions that sleep before each run.


@pytest.fixture(scope="module")
def slow(models: Path) -> Iterator[tuple[str, str]]:
    from tests.app.slow_server import slow_server

    port = free_port()
    env = {"SEG_GRPC_PORT": str(port), "SEG_MAX_PENDING": "1", "SEG_TILE_BATCH": "1",
           "SEG_WHOLE_IMAGE_MAX_PIXELS": "4096", "SEG_SHUTDOWN_TIMEOUT_S": "2"}  # fmt: skip
    with slow_server(models, 0.3, **env) as (base, _):
        yield base, f"127.0.0.1:{port}"


def test_overloaded_is_unavailable_with_retry_after(slow: tuple[str, str]) -> None:
    with triton.InferenceServerClient(slow[1]) as busy:
        results: list[Any] = []
        busy.async_infer("tiny-grey", [image_input(noise((1, 16, 16, 1)))],
                         lambda result, error: results.append((result, error)))  # fmt: skip
        time.sleep(0.1)  # the first holds the only slot (SEG_MAX_PENDING=1) for 0.3 s
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(slow[1]))
        request = raw_request([1, 8, 8, 1], bytes(64))
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=30)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "SEG_MAX_PENDING" in (caught.value.details() or "")
        assert ("retry-after", "1") in tuple(caught.value.trailing_metadata() or ())
        deadline = time.monotonic() + 10
        while not results and time.monotonic() < deadline:
            time.sleep(0.05)
        assert results and results[0][1] is None  # the admitted one was answered


def test_a_passed_deadline_stops_the_inference(slow: tuple[str, str]) -> None:
    """25 tiles of 512 x 512, 0.3 s each: once the client's 0.8 s deadline passes, the work
    stops at its next tile and frees the only slot, so the next call is served, not refused."""
    with triton.InferenceServerClient(slow[1]) as grpc_client:
        big = [image_input(noise((1, 2048, 2048, 1)))]
        code, _ = status(lambda: grpc_client.infer("tiny-grey", big, client_timeout=0.8))
        assert code == "StatusCode.DEADLINE_EXCEEDED"
        time.sleep(0.8)  # the tile running at the deadline ends, then no other starts
        small = [image_input(noise((1, 8, 8, 1)))]
        result = grpc_client.infer("tiny-grey", small, client_timeout=10)
        assert result.as_numpy("labels").shape == (1, 8, 8)


def test_not_ready_model_is_unavailable(tmp_path: Path) -> None:
    """A model that failed to load: not ready, and its inference UNAVAILABLE; in-process, so
    tritonclient's messages and segserve's (both of package `inference`) share one process."""
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app

    write_model(tmp_path, "threshold", "tiny-grey")

    class Broken:  # a session that fails its warm-up run
        def __init__(self, session: ort.InferenceSession) -> None:
            self.session = session

        def run(self, *args: Any) -> Any:
            raise RuntimeError("no inference today")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.session, name)

    def broken(path: str, options: Any, providers: Any) -> Any:
        return Broken(ort.InferenceSession(path, options, providers=providers))

    port = free_port()
    settings = Settings(model_dir=tmp_path, intra_op_threads=1, grpc_port=port, device="cpu")
    with (
        TestClient(create_app(settings, session_factory=broken)) as http,
        triton.InferenceServerClient(f"127.0.0.1:{port}") as grpc_client,
    ):
        deadline = time.monotonic() + 20
        while http.get("/health/ready").json()["models"][0]["state"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert grpc_client.is_server_live()
        assert not grpc_client.is_server_ready()
        assert not grpc_client.is_model_ready("tiny-grey")
        code, message = status(
            lambda: grpc_client.infer("tiny-grey", [image_input(noise((1, 8, 8, 1)))])
        )
        assert code == "StatusCode.UNAVAILABLE"
        assert message == "model 'tiny-grey' is failed: no inference today"


def test_no_grpc_port_unless_set(models: Path) -> None:
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app

    settings = Settings(model_dir=models, intra_op_threads=1)
    assert settings.grpc_port is None
    with TestClient(create_app(settings)):
        assert not any(t.name.startswith("grpc") for t in threading.enumerate())


def test_grpc_port_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from app.config import Settings

    monkeypatch.setenv("SEG_GRPC_PORT", "")  # empty, as `-e SEG_GRPC_PORT=` turns it off
    assert Settings().grpc_port is None
    monkeypatch.setenv("SEG_GRPC_PORT", "8081")
    assert Settings().grpc_port == 8081
    with pytest.raises(ValidationError, match="must differ from SEG_PORT"):
        Settings(port=8081)
