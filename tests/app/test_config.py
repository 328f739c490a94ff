from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import SHIPPED_MODEL_DIR, Device, Settings


def test_defaults_serve_the_shipped_models() -> None:
    settings = Settings()
    assert settings.model_dir == SHIPPED_MODEL_DIR and settings.device is Device.auto
    assert settings.max_pixels == 8192 * 8192


def test_env_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEG_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("SEG_DEVICE", "cuda")
    monkeypatch.setenv("SEG_WORKERS", "3")
    monkeypatch.setenv("MODEL_DIR", "/ignored-without-prefix")
    settings = Settings()
    assert (
        settings.model_dir == tmp_path and settings.device is Device.cuda and settings.workers == 3
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("SEG_DEVICE", "tpu"), ("SEG_PORT", "70000"), ("SEG_WORKERS", "0"), ("SEG_LOG_LEVEL", "loud")],
)
def test_invalid_values_are_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_readme_documents_every_setting() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`SEG_{name.upper()}`" in readme, name


@pytest.mark.parametrize("value", [",", " ", " , ,", "\t"])
def test_api_keys_that_hold_no_key_are_refused(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SEG_API_KEYS="," or whitespace used to turn authentication off without a word."""
    monkeypatch.setenv("SEG_API_KEYS", value)
    with pytest.raises(ValidationError, match="SEG_API_KEYS is set but holds no key"):
        Settings()
    from app.cli import main

    assert main(["serve", "--port", "1"]) == 2  # refused before anything starts
    assert "SEG_API_KEYS is set but holds no key" in capsys.readouterr().err


def test_unset_or_real_api_keys_are_accepted() -> None:
    assert Settings(api_keys="").api_key_list == []
    assert Settings(api_keys=" a, ,b ").api_key_list == ["a", "b"]
