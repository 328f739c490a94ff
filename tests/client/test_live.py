"""The client against a real server process (tiny models): answers, keep-alive, API keys."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from segserve import BadRequest, Client, NotFound, Unauthorized
from tests.app.conftest import png_bytes, running_server
from tests.app.test_api import expected_grey, grey_pattern, read_png
from tests.app.tiny_models import write_model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("models")
    write_model(directory, "threshold", "tiny-grey", size_multiple=8)
    with running_server(directory) as (base, _):
        yield base


def local_ports(client: Client) -> set[int]:
    """Records the client-side port of every answer's connection from now on."""
    ports: set[int] = set()

    def record(response: httpx.Response) -> None:
        stream = response.extensions["network_stream"]
        ports.add(stream.get_extra_info("client_addr")[1])

    client.http.event_hooks["response"] = [record]
    return ports


def test_segment_every_input_kind_and_format(server: str, tmp_path: Path) -> None:
    pixels = grey_pattern(40, 50)
    expected = expected_grey(pixels)
    path = tmp_path / "image.png"
    path.write_bytes(png_bytes(pixels))
    with Client(server) as client:
        for image in (path, str(path), png_bytes(pixels), pixels, np.dstack([pixels] * 3)):
            labels = client.segment(image, "tiny-grey")
            assert labels.dtype == np.uint8 and np.array_equal(labels, expected)
        answer = client.segment(pixels, "tiny-grey", "json", encoding="list")
        assert answer["model"]["name"] == "tiny-grey"
        assert np.array_equal(np.array(answer["class_map"]["rows"]), expected)
        overlay = client.segment(pixels, "tiny-grey", "overlay", alpha=1.0)
        assert read_png(overlay).shape == (40, 50, 3)
        confidence = client.segment(pixels, "tiny-grey", "confidence")
        assert read_png(confidence).shape == (40, 50)
        raw = client.segment_raw(pixels, "tiny-grey", tiling="on", tile_size=64, tile_overlap=8)
        assert (raw.model, raw.media_type) == ("tiny-grey", "image/png")
        assert raw.request_id and len(raw.request_id) == 32
        assert [m["spec"]["name"] for m in client.models()] == ["tiny-grey"]
        assert client.model("tiny-grey")["spec"]["name"] == "tiny-grey"
        assert client.health()["ready"] is True


def test_problems_arrive_typed_with_the_servers_request_id(server: str) -> None:
    with Client(server) as client:
        with pytest.raises(BadRequest) as bad:
            client.segment(b"not an image", "tiny-grey")
        with pytest.raises(NotFound) as unknown:
            client.segment(grey_pattern(8, 8), "no-such-model")
    assert bad.value.status == 400 and bad.value.title == "Bad Request"
    assert bad.value.problem["instance"] == "/v1/models/tiny-grey/segment"
    assert bad.value.request_id and len(bad.value.request_id) == 32
    assert unknown.value.status == 404 and "no-such-model" in unknown.value.detail


def test_one_keep_alive_connection_serves_many_requests(server: str) -> None:
    pixels = grey_pattern(16, 16)
    with Client(server) as client:
        ports = local_ports(client)
        for _ in range(10):
            client.segment(pixels, "tiny-grey")
        assert len(ports) == 1
        ports.clear()
        items = client.segment_many([pixels] * 24, "tiny-grey", concurrency=3, progress=False)
        assert all(item.ok for item in items)
        assert 1 <= len(ports) <= 3  # one connection per worker at most, reused


def test_api_key(tmp_path: Path) -> None:
    write_model(tmp_path, "threshold", "tiny-grey", size_multiple=8)
    pixels = grey_pattern(8, 8)
    with running_server(tmp_path, SEG_API_KEYS="k-one,k-two") as (base, _):
        with Client(base, api_key="k-two") as client:
            assert np.array_equal(client.segment(pixels, "tiny-grey"), expected_grey(pixels))
        for key in (None, "wrong"):
            with Client(base, api_key=key) as client, pytest.raises(Unauthorized) as caught:
                client.segment(pixels, "tiny-grey")
            assert caught.value.status == 401
            assert "API key" in caught.value.detail


def test_coco_and_geojson_are_parsed(server: str) -> None:
    mask_utils = pytest.importorskip("pycocotools.mask")
    pixels = grey_pattern(24, 40)
    with Client(server) as client:
        labels = client.segment(pixels, "tiny-grey")
        coco = client.segment(pixels, "tiny-grey", "coco")
        geojson = client.segment(pixels, "tiny-grey", "geojson", simplify=0)
    present = sorted(int(c) for c in np.unique(labels))
    assert sorted(a["category_id"] for a in coco["annotations"]) == present
    for annotation in coco["annotations"]:
        mask = mask_utils.decode(annotation["segmentation"])
        assert np.array_equal(mask.astype(bool), labels == annotation["category_id"])
    assert geojson["type"] == "FeatureCollection" and len(geojson["features"]) == len(present)
