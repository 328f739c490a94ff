"""API keys (SEG_API_KEYS) and CORS (SEG_CORS_ORIGINS)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.security import key_matches
from app.config import Settings
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready
from tests.app.test_api import grey_pattern


def make_client(model_dir: Path, **overrides: object) -> TestClient:
    settings = Settings(model_dir=model_dir, intra_op_threads=1, **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings))


@pytest.fixture
def keyed(model_dir: Path) -> Iterator[TestClient]:
    with make_client(model_dir, api_keys="k-one, k-two") as client:
        yield client


def segment(client: TestClient, **headers: str) -> int:
    return client.post(
        "/v1/models/tiny-grey/segment",
        content=png_bytes(grey_pattern(16, 16)),
        headers={"content-type": "image/png", **headers},
    ).status_code


def test_without_keys_everything_is_open(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 200


def test_keys_are_required_and_accepted_in_both_headers(keyed: TestClient) -> None:
    missing = keyed.get("/v1/models")
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "API key is required" in missing.json()["detail"]
    assert keyed.get("/v1/models", headers={"x-api-key": "wrong"}).status_code == 401
    assert keyed.get("/v1/models", headers={"authorization": "Bearer k-one"}).status_code == 200
    assert keyed.get("/v1/models", headers={"x-api-key": "k-two"}).status_code == 200
    assert segment(keyed) == 401
    wait_ready(keyed)  # health stays open; the key-protected route must then answer 200
    assert segment(keyed, authorization="Bearer k-two") == 200
    assert keyed.post("/v2/models/tiny-grey/infer", content=b"{}").status_code == 401
    assert keyed.get("/no/such/route").status_code == 401  # no probing of routes without a key


def test_health_metrics_and_page_stay_open_unless_configured(
    keyed: TestClient, model_dir: Path
) -> None:
    for path in ("/health/live", "/metrics", "/", "/static/app.js", "/v2/health/live"):
        assert keyed.get(path).status_code == 200, path
    with make_client(model_dir, api_keys="k", open_health=False, open_metrics=False) as closed:
        assert closed.get("/health/live").status_code == 401
        assert closed.get("/metrics").status_code == 401
        assert closed.get("/health/live", headers={"x-api-key": "k"}).status_code == 200


def test_key_comparison() -> None:
    assert key_matches("b", ["a", "b"])
    assert not key_matches("", ["a"])
    assert not key_matches("a", [])
    assert not key_matches("ab", ["a"])


def test_cors_closed_by_default_and_open_to_configured_origins(
    client: TestClient, model_dir: Path
) -> None:
    origin = {"origin": "https://viewer.example"}
    assert "access-control-allow-origin" not in client.get("/v1/models", headers=origin).headers
    with make_client(model_dir, cors_origins="https://viewer.example", api_keys="k") as cors:
        preflight = cors.options(
            "/v1/models/tiny-grey/segment",
            headers={**origin, "access-control-request-method": "POST",
                     "access-control-request-headers": "x-api-key"},
        )  # fmt: skip
        assert preflight.status_code == 200  # preflights need no key
        assert preflight.headers["access-control-allow-origin"] == "https://viewer.example"
        other = cors.get("/health/live", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_keys_never_appear_in_settings_repr(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, api_keys="super-secret")
    assert "super-secret" not in repr(settings) and "super-secret" not in str(settings)
