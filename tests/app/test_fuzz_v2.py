"""Property-based fuzzing of /v2/models/{name}/infer: request documents drawn from the
Open Inference Protocol's request model (valid ones, nearly valid ones and hostile ones),
JSON or binary tensor data, with any Inference-Header-Content-Length. The service must
never answer 5xx, and every 4xx must be a JSON `{"error": ...}`.

Reproducible: derandomized, no example database. About 10-15 s on one free core.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from app.config import Settings
from app.errors import BadInferenceRequest
from app.inference.v2_codec import parse_request
from app.main import create_app
from tests.app.conftest import wait_ready
from tests.app.tiny_models import write_model

pytestmark = pytest.mark.timeout(300)
HEADER = "Inference-Header-Content-Length"
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

HUGE = [2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62 + 1, 2**63 - 1, 2**63, 2**64, 2**70, 10**30]
big_ints = st.sampled_from(HUGE + [-n for n in HUGE])
weird_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["\ud800", "a\udfffb", "\u00b2", "\x00", "image\n", "[[[[", '"\\']),
)
scalars = st.one_of(
    st.integers(-300, 300),
    big_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    weird_text,
    st.booleans(),
    st.none(),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(weird_text, inner, max_size=3),
    max_leaves=12,
)
names = st.one_of(st.sampled_from(["image", "image_bytes", "labels", ""]), weird_text)
datatypes = st.one_of(
    st.sampled_from(["UINT8", "BYTES", "FP32", "INT32", "INT64", "BOOL", "FP16", ""]), weird_text
)
int_dims = st.one_of(st.integers(-2, 6), big_ints)
odd_dims = st.one_of(st.floats(), weird_text, st.none(), st.booleans())
# Mostly whole numbers (small, huge, negative), so that shapes reach the element count.
shapes = st.one_of(
    st.lists(int_dims, max_size=10), st.lists(st.one_of(int_dims, odd_dims), max_size=10)
)
rarely = st.sampled_from([False] * 5 + [True])
sizes = st.one_of(st.integers(0, 64), big_ints, st.integers(-5, -1), st.booleans(), weird_text)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@st.composite
def plausible_tensors(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """A tensor near the model's contract: an [N, H, W, C] UINT8 image as JSON or binary
    data, or an encoded image as BYTES; sometimes with one detail wrong."""
    if draw(st.booleans()):
        shape = [draw(st.integers(0, 3)), draw(st.integers(0, 12)), draw(st.integers(0, 12))]
        shape.append(draw(st.sampled_from([1, 3, 4])))
        values = np.arange(math.prod(shape), dtype=np.int64) * draw(st.integers(1, 97)) % 256
        tensor: dict[str, Any] = {"name": "image", "datatype": "UINT8", "shape": shape}
        raw = values.astype(np.uint8).tobytes()
        if draw(st.booleans()):
            tensor["parameters"] = {"binary_data_size": len(raw)}
        else:
            tensor["data"] = values.tolist()
            raw = b""
    else:
        side = draw(st.integers(1, 9))
        raw = png(np.full((side, side + 1), draw(st.integers(0, 255)), np.uint8))
        if draw(st.booleans()):
            raw = raw[: draw(st.integers(0, len(raw)))]
        tensor = {"name": "image_bytes", "datatype": "BYTES", "shape": [1]}
        if draw(st.booleans()):
            raw = len(raw).to_bytes(4, "little") + raw
            tensor["parameters"] = {"binary_data_size": len(raw)}
        else:
            tensor["data"] = [raw.decode("latin-1")]
            raw = b""
    fields = ["dim"] * 3 + ["name", "datatype", "shape", "data", "parameters"]
    field = draw(st.sampled_from([None] * 4 + fields))
    if field == "dim":  # one dimension huge, negative or off by a little
        at = draw(st.integers(0, len(tensor["shape"]) - 1))
        tensor["shape"][at] = draw(st.sampled_from([*HUGE, -1, -(2**63), 0, 7]))
    elif field == "shape":
        tensor["shape"] = draw(shapes)
    elif field == "data":
        tensor["data"] = draw(json_values)
    elif field == "parameters":
        tensor["parameters"] = {"binary_data_size": draw(sizes)}
    elif field is not None:
        tensor[field] = draw(names if field == "name" else datatypes)
    return tensor, raw


@st.composite
def wild_tensors(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    tensor = {
        "name": draw(names),
        "datatype": draw(datatypes),
        "shape": draw(shapes),
    }
    if draw(st.booleans()):
        tensor["data"] = draw(json_values)
    if draw(st.booleans()):
        tensor["parameters"] = draw(st.dictionaries(st.just("binary_data_size"), sizes))
    return tensor, draw(st.binary(max_size=32))


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    """A body and its Inference-Header-Content-Length (raw header bytes, or None)."""
    # Weights by sampled_from: Hypothesis draws integers near their bounds far more often.
    count = draw(st.sampled_from([1] * 6 + [0, 2, 5]))
    tensors = [draw(wild_tensors() if draw(rarely) else plausible_tensors()) for _ in range(count)]
    document: Any = {"inputs": [tensor for tensor, _ in tensors]}
    if draw(st.booleans()):
        outputs = st.fixed_dictionaries(
            {"name": st.sampled_from(["labels", "probabilities", "logits"])},
            optional={"parameters": st.fixed_dictionaries({"binary_data": st.booleans()})},
        )
        document["outputs"] = draw(st.lists(outputs, max_size=3))
    if draw(st.booleans()):
        document["parameters"] = {"binary_data_output": draw(scalars)}
        document["id"] = draw(st.one_of(weird_text, scalars))
    if draw(rarely):
        document = draw(json_values)  # not a request at all
    head = json.dumps(document).encode()  # NaN and Infinity too
    tail = b"".join(raw for _, raw in tensors)
    how = draw(st.sampled_from(["exact"] * 3 + ["none"] * 3 + ["any", "number"]))
    if how == "exact" or (how == "none" and tail):
        length: bytes | None = str(len(head)).encode()
    elif how == "any":
        length = draw(st.sampled_from([b"\xb2", b"\xb9", b"-1", b"0x10", b" 5", b"", b"1" * 13]))
    elif how == "number":
        length = str(draw(st.integers(0, len(head) + len(tail) + 2))).encode()
    else:
        length = None
    body = head + tail
    if draw(rarely):  # damage a byte or cut the body short
        at = draw(st.integers(0, max(0, len(body) - 1)))
        body = body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
        body = body[: draw(st.integers(at, len(body)))]
    return body, length


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder: Path = tmp_path_factory.mktemp("fuzz-v2-models")
    write_model(folder, "threshold", "tiny-grey", size_multiple=8)
    write_model(folder, "brightest", "tiny-rgb")
    settings_ = Settings(model_dir=folder, intra_op_threads=1, max_pixels=64 * 64)
    with TestClient(create_app(settings_), raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


def check_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/json", response.headers
        answer = response.json()
        assert set(answer) == {"error"} and isinstance(answer["error"], str), answer
    elif HEADER in response.headers:
        head = response.content[: int(response.headers[HEADER])]
        assert "outputs" in json.loads(head)
    else:
        assert "outputs" in response.json()


@settings(FUZZ, max_examples=400)
@given(request=requests(), model=st.sampled_from(["tiny-grey", "tiny-rgb"]))
def test_infer_never_500(
    client: TestClient, request: tuple[bytes, bytes | None], model: str
) -> None:
    body, length = request
    headers = {} if length is None else {HEADER: length}
    check_answer(client.post(f"/v2/models/{model}/infer", content=body, headers=headers))


@settings(FUZZ, max_examples=300)
@given(request=requests())
def test_codec_answers_or_refuses(request: tuple[bytes, bytes | None]) -> None:
    """The codec alone, faster than HTTP: a parse or a BadInferenceRequest, nothing else."""
    body, length = request
    try:
        parse_request(body, None if length is None else length.decode("latin-1"))
    except BadInferenceRequest as exc:
        exc.detail.encode("utf-8")  # printable in a JSON answer
        assert len(exc.detail) < 2000


@settings(FUZZ, max_examples=25)
@given(st.binary(max_size=200))
def test_nesting_and_raw_bytes(client: TestClient, noise: bytes) -> None:
    """Raw bytes, and raw bytes at the bottom of deep [ and { nesting: json.loads recurses
    once per level, and past the recursion limit that was a RecursionError and a 500.
    (Hypothesis raises the recursion limit while it runs: 50,000 levels stay above it.)"""
    check_answer(client.post("/v2/models/tiny-grey/infer", content=noise))
    for depth, opener, closer in [(33, b"[", b"]"), (1000, b"[", b"]"), (50_000, b'{"k": ', b"}")]:
        nested = b'{"inputs": ' + opener * depth + noise + closer * depth + b"}"
        check_answer(client.post("/v2/models/tiny-grey/infer", content=nested))
