"""Property-based tests from the service's own OpenAPI schema (Schemathesis CLI), bounded
for CI: generated requests against the real server process never get a 5xx, and every
response conforms to the schema (status codes, content types, bodies)."""

import subprocess
import sys
from pathlib import Path

from tests.app.conftest import running_server
from tests.app.tiny_models import write_model

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance," + (
    "response_schema_conformance"
)


def test_generated_requests_get_no_5xx_and_conform_to_the_schema(tmp_path: Path) -> None:
    write_model(tmp_path, "threshold", "tiny-grey", size_multiple=8)
    write_model(tmp_path, "brightest", "tiny-rgb")
    schemathesis = Path(sys.executable).parent / "schemathesis"
    with running_server(tmp_path, SEG_MAX_PIXELS=str(512 * 512)) as (base, _):
        result = subprocess.run(
            [str(schemathesis), "run", f"{base}/openapi.json", "--max-examples", "10",
             "--checks", CHECKS, "--seed", "1", "--no-color"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert " passed" in summary and "failures" not in summary.lower().split("summary")[-1]
