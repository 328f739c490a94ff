"""The short load test of CI: concurrency 32 of mixed valid and invalid requests against
the real server with tiny models, a SIGTERM during the load; no 5xx except 503, nothing
accepted is lost. The full run on the shipped models is `python -m bench.load_test`."""

from pathlib import Path

import numpy as np

from bench.load_test import run
from tests.app.conftest import png_bytes
from tests.app.tiny_models import write_model


def test_short_load_with_sigterm_loses_nothing(tmp_path: Path) -> None:
    model_dir = tmp_path
    write_model(model_dir, "threshold", "tiny-grey", size_multiple=8)
    write_model(model_dir, "brightest", "tiny-rgb")
    rng = np.random.default_rng(0)
    models = {
        "tiny-grey": png_bytes(rng.integers(0, 256, (400, 400), np.uint8)),
        "tiny-rgb": png_bytes(rng.integers(0, 256, (300, 300, 3), np.uint8)),
    }
    report = run(model_dir, duration=12, concurrency=32, sigterm_at=8,
                 env={"SEG_MAX_PENDING": "8", "SEG_DRAIN_DELAY_S": "2"}, models=models)  # fmt: skip
    print(report)
    statuses = report["statuses"]
    assert isinstance(statuses, dict)
    assert statuses.get(200, 0) > 20
    assert {400, 404, 415, 422} <= set(statuses)  # the invalid mix got its 4xx answers
    assert report["other_5xx"] == 0, report
    assert report["accepted_lost"] == 0, report
    assert report["server_exit_code"] in (0, -15), report
