"""The page and its sample-image routes, without a browser."""

from pathlib import Path

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready
from tests.app.test_api import grey_pattern


def test_page_and_static_files_are_served_by_the_app(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    texts = [page.text]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        response = client.get(asset)
        assert response.status_code == 200
        texts.append(response.text)
    assert not any("http://" in t or "https://" in t for t in texts)  # nothing from a CDN


def test_no_samples_without_a_samples_dir(client: TestClient) -> None:
    assert client.get("/v1/samples").json() == {"models": []}
    response = client.get("/v1/samples/tiny-grey")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_samples_only_for_served_models_and_never_outside_the_folder(
    model_dir: Path, tmp_path: Path
) -> None:
    samples = tmp_path / "samples"
    samples.mkdir()
    sample = png_bytes(grey_pattern(10, 12))
    (samples / "tiny-grey.png").write_bytes(sample)
    (samples / "not-served.png").write_bytes(sample)
    (tmp_path / "secret.png").write_bytes(b"outside the samples folder")
    settings = Settings(model_dir=model_dir, samples_dir=samples, intra_op_threads=1)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert client.get("/v1/samples").json() == {"models": ["tiny-grey"]}
        response = client.get("/v1/samples/tiny-grey")
        assert response.status_code == 200 and response.content == sample
        assert response.headers["content-type"] == "image/png"
        for name in ("not-served", "..%2Fsecret", "../secret", "tiny-rgb"):
            assert client.get(f"/v1/samples/{name}").status_code == 404, name
