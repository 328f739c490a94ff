"""The Label Studio ML backend under /labelstudio/<model>: the protocol's routes and answer
shape, the brush RLE decoded by Label Studio's own converter library, and the image
sources it accepts (data URIs and this server's samples; never another URL)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.imaging.masks.brush import brush_rle, brush_size_bound
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready
from tests.app.tiny_models import write_model

brush = pytest.importorskip("label_studio_converter.brush")

CONFIG = """<View>
  <Image name="img" value="$picture" zoom="true"/>
  <!-- one label per class; "blue" is left out on purpose -->
  <BrushLabels name="paint" toName="img">
    <Label value="Red" background="red"/>
    <Label value="green" background="green"/>
    <Label value="Sky" background="blue"/>
  </BrushLabels>
</View>"""


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    directory = tmp_path_factory.mktemp("ls")
    write_model(directory, "brightest", "tiny-rgb")
    samples = tmp_path_factory.mktemp("samples")
    (samples / "tiny-rgb.png").write_bytes(colour_image(5))
    settings = Settings(
        model_dir=directory, intra_op_threads=1, samples_dir=samples, max_pixels=4_000_000
    )
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


def colour_image(seed: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (9, 13, 3)).astype(np.uint8)
    return png_bytes(np.kron(blocks, np.ones((7, 7, 1), np.uint8)))


def data_uri(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def png_map(client: TestClient, image: bytes) -> np.ndarray:
    response = client.post("/v1/models/tiny-rgb/segment", files={"image": ("x", image)})
    return np.asarray(Image.open(io.BytesIO(response.content)))


def decode(result: dict[str, Any]) -> np.ndarray:
    """The result's mask as Label Studio paints it: its RLE decoded by the converter."""
    height, width = result["original_height"], result["original_width"]
    rgba = brush.decode_rle(result["value"]["rle"]).reshape(height, width, 4)
    assert set(np.unique(rgba).tolist()) <= {0, 255}
    assert (rgba == rgba[..., :1]).all()  # every channel alike, as mask2rle writes
    return rgba[..., 3] == 255


def predict(client: TestClient, tasks: list[dict[str, Any]], config: str | None = CONFIG) -> Any:
    body = {"tasks": tasks, "project": "7.1700000000", "params": {"context": None}}
    if config is not None:
        body["label_config"] = config
    return client.post("/labelstudio/tiny-rgb/predict", json=body)


def test_health_and_setup(client: TestClient) -> None:
    for path in ("/labelstudio/tiny-rgb/health", "/labelstudio/tiny-rgb/"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.json()["status"] == "UP"
    setup = client.post(
        "/labelstudio/tiny-rgb/setup",
        json={"project": "7.1700000000", "schema": CONFIG, "hostname": "http://ls:8080",
              "access_token": "t"},
    )  # fmt: skip
    assert setup.status_code == 200
    assert setup.json() == {"model_version": "tiny-rgb-0.0.1"}


def test_predict_brush_masks_decode_to_the_class_map(client: TestClient) -> None:
    images = [colour_image(3), colour_image(4)]
    response = predict(client, [{"id": n, "data": {"picture": data_uri(i)}} for n, i in
                                enumerate(images)])  # fmt: skip
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_version"] == "tiny-rgb-0.0.1"
    assert len(answer["results"]) == 2
    for image, prediction in zip(images, answer["results"], strict=True):
        expected = png_map(client, image)
        assert 0 < prediction["score"] <= 1
        seen = {}
        for result in prediction["result"]:
            assert result["type"] == "brushlabels"
            assert (result["from_name"], result["to_name"]) == ("paint", "img")
            assert result["value"]["format"] == "rle"
            (label,) = result["value"]["brushlabels"]
            seen[label] = decode(result)
            assert (result["original_height"], result["original_width"]) == expected.shape
        # Classes red (0) and green (1) under the config's own spelling; blue is unlabelled.
        assert set(seen) == {"Red", "green"} & {["Red", "green", "x"][c] for c in
                                                np.unique(expected).tolist()}  # fmt: skip
        for label, index in (("Red", 0), ("green", 1)):
            if label in seen:
                assert np.array_equal(seen[label], expected == index)


def test_without_a_config_every_class_is_answered(client: TestClient) -> None:
    image = colour_image(6)
    response = predict(client, [{"data": {"image": data_uri(image)}}], config=None)
    assert response.status_code == 200, response.text
    expected = png_map(client, image)
    results = response.json()["results"][0]["result"]
    labels = {r["value"]["brushlabels"][0]: decode(r) for r in results}
    assert set(labels) == {["red", "green", "blue"][c] for c in np.unique(expected).tolist()}
    for index, name in enumerate(["red", "green", "blue"]):
        if name in labels:
            assert np.array_equal(labels[name], expected == index)


def test_own_sample_url_is_read_without_a_request(client: TestClient) -> None:
    expected = png_map(client, colour_image(5))
    for url in ("/v1/samples/tiny-rgb", "http://testserver/v1/samples/tiny-rgb"):
        response = predict(client, [{"data": {"picture": url}}])
        assert response.status_code == 200, response.text
        red = [r for r in response.json()["results"][0]["result"]
               if r["value"]["brushlabels"] == ["Red"]]  # fmt: skip
        assert np.array_equal(decode(red[0]), expected == 0)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:8080/data/upload/1/x.png",
        "/data/upload/1/x.png",
        "https://example.com/v1/samples/tiny-rgb",  # another host's path that looks like ours
        "file:///etc/passwd",
        "/v1/samples/../../etc/passwd",
        "/v1/samples/no-such-model",
        "s3://bucket/x.png",
    ],
)
def test_other_urls_are_never_fetched(
    client: TestClient, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the backend tried to open a connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    response = predict(client, [{"data": {"picture": url}}])
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "SSRF" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"tasks": "no"}, 422),
        ({"tasks": [{"data": {"picture": "data:image/png;base64,@@@"}}], "label_config": CONFIG},
         422),
        ({"tasks": [{"data": {"picture": "data:image/png;base64,AAAA"}}], "label_config": CONFIG},
         400),
        ({"tasks": [{"data": {}}], "label_config": CONFIG}, 422),
        ({"tasks": [], "label_config": "<View><Image name='i' value='$i'/></View>"}, 422),
        ({"tasks": [], "label_config": "<View><BrushLabels"}, 422),
        ({"tasks": [], "label_config": '<!DOCTYPE x [<!ENTITY a "aaaa">]><View>&a;</View>'}, 422),
        ({"tasks": [], "label_config": "<View><BrushLabels name='b' toName='i'>"
          "<Label value='cat'/></BrushLabels></View>"}, 422),
        ({"tasks": [{"data": {"image": "x"}}] * 65}, 422),
    ],
)  # fmt: skip
def test_bad_requests_are_problems(client: TestClient, body: Any, status: int) -> None:
    response = client.post("/labelstudio/tiny-rgb/predict", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_malformed_json_and_unknown_model(client: TestClient) -> None:
    response = client.post(
        "/labelstudio/tiny-rgb/predict", content=b"[" * 100_000,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    for path in ("/labelstudio/nope/health", "/labelstudio/nope/predict"):
        call = client.get if path.endswith("health") else client.post
        missing = call(path)
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"


def test_answer_budget(tmp_path: Path) -> None:
    write_model(tmp_path, "brightest", "tiny-rgb")
    settings = Settings(model_dir=tmp_path, intra_op_threads=1, max_answer_bytes=4096)
    noisy = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8))
    with TestClient(create_app(settings)) as small:
        wait_ready(small)
        response = predict(small, [{"data": {"picture": data_uri(noisy)}}])
    assert response.status_code == 413
    assert "SEG_MAX_ANSWER_BYTES" in response.json()["detail"]


@pytest.mark.parametrize("seed", range(6))
def test_brush_rle_is_label_studio_own(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 300, 2)
    mask = rng.random((height, width)) < [0.0, 0.02, 0.5, 0.98, 1.0, 0.5][seed]
    if seed == 5:
        mask = np.ones((300, 300), bool)  # a run over 2**16 RGBA bytes is cut in pieces
        mask[150, 150] = False
    rle = brush_rle(mask)
    assert len(rle) <= brush_size_bound(mask)
    rgba = brush.decode_rle(list(rle)).reshape(mask.shape[0], mask.shape[1], 4)
    assert np.array_equal(rgba[..., 3] == 255, mask)
    reference = brush.mask2rle(mask.astype(np.uint8) * 255)
    assert list(rle) == reference[: len(rle)]  # the converter may add one zero byte


def test_label_studio_basic_auth_carries_the_api_key(tmp_path: Path) -> None:
    """Label Studio's ML backend connection speaks Basic auth only: the key is the password."""
    write_model(tmp_path, "brightest", "tiny-rgb")
    settings = Settings(model_dir=tmp_path, intra_op_threads=1, api_keys="k3y-abc")
    with TestClient(create_app(settings)) as keyed:
        wait_ready(keyed)
        url = "/labelstudio/tiny-rgb/health"
        assert keyed.get(url).status_code == 401
        assert keyed.get(url, auth=("labelstudio", "k3y-abc")).status_code == 200
        assert keyed.get(url, auth=("k3y-abc", "")).status_code == 401  # the user is not the key
        assert keyed.get(url, auth=("labelstudio", "wrong")).status_code == 401
        for broken in ("Basic !!!", "Basic " + base64.b64encode(b"\xff:\xfe").decode()):
            response = keyed.get(url, headers={"Authorization": broken})
            assert response.status_code == 401
            assert response.headers["content-type"] == "application/problem+json"
