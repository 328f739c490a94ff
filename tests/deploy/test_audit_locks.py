"""The dependency audit: vulnerable pins fail it, pins behind the latest release are
reported unchecked (never clean), and an unreachable PyPI is an error, not a pass."""

import importlib.util
import sys
import urllib.error
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("audit_locks", ROOT / "scripts" / "audit_locks.py")
assert spec is not None and spec.loader is not None
audit_locks = importlib.util.module_from_spec(spec)
sys.modules["audit_locks"] = audit_locks  # dataclasses look their module up there
spec.loader.exec_module(audit_locks)

PROJECTS: dict[str, dict[str, Any]] = {
    "fastapi": {"info": {"version": "1.0"}, "vulnerabilities": []},
    "jinja2": {
        "info": {"version": "2.10"},
        "vulnerabilities": [
            {"id": "PYSEC-2019-217", "withdrawn": None},
            {"id": "GHSA-old", "withdrawn": "2020-01-01"},
        ],
    },
    "numpy": {"info": {"version": "2.5.5"}, "vulnerabilities": []},
}


def fake_fetch(name: str) -> dict[str, Any]:
    return PROJECTS[name]


def lock(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "runtime.txt"
    path.write_text(text)
    return path


def test_pins_parse_a_hash_locked_file() -> None:
    text = (
        "# header\nFastAPI==1.0 \\\n    --hash=sha256:"
        + "0" * 64
        + "\nnumpy==2.4.6 ; python_version < '3.13'\n"
    )
    assert audit_locks.pins(text.splitlines()) == {"fastapi": "1.0", "numpy": "2.4.6"}


def test_vulnerable_pin_fails_and_withdrawn_advisories_do_not_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = lock(tmp_path, "fastapi==1.0\njinja2==2.10\nnumpy==2.4.6\n")
    assert audit_locks.main([str(path)], fetch=fake_fetch) == 1
    out = capsys.readouterr().out
    assert "vulnerable jinja2==2.10 PYSEC-2019-217" in out and "GHSA-old" not in out
    assert "unchecked  numpy==2.4.6 latest is 2.5.5" in out
    assert "1 without known vulnerabilities, 1 vulnerable, 1 unchecked" in out


def test_clean_and_unchecked_pins_pass(tmp_path: Path) -> None:
    path = lock(tmp_path, "fastapi==1.0\nnumpy==2.4.6\n")
    assert audit_locks.main([str(path)], fetch=fake_fetch) == 0


def test_unreachable_pypi_is_an_error(tmp_path: Path) -> None:
    def offline(name: str) -> dict[str, Any]:
        raise urllib.error.URLError("no route")

    assert audit_locks.main([str(lock(tmp_path, "fastapi==1.0\n"))], fetch=offline) == 2


def test_the_real_locks_have_pins() -> None:
    for name in ("runtime-cpu.txt", "runtime-gpu.txt"):
        locked = audit_locks.pins((ROOT / "requirements" / name).read_text().splitlines())
        assert "fastapi" in locked and "pillow" in locked
