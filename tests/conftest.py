"""Suite-wide rules.

Tests that read ../shared/datasets carry `@pytest.mark.shared_data` (or `pytestmark`).
Outside CI they skip quietly when the folder is missing; in CI (CI=true, as every CI
system sets it) they fail instead, so a missing data mount can never turn the real-data
checks into silent skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("shared_data") is None or SHARED_DATA.is_dir():
        return
    if in_ci():
        pytest.fail(f"CI=true but {SHARED_DATA} is missing: the real-data tests cannot run")
    pytest.skip(f"{SHARED_DATA} is not beside the checkout")
