"""The image installs from hash-locked requirements that match pyproject's runtime dependencies."""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"


def name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pinned(lock: Path) -> dict[str, str]:
    """name -> version of every `name==version \\` entry, each of which must carry hashes."""
    text = lock.read_text()
    hashes = r"((?:\s*\\\s*--hash=sha256:[0-9a-f]{64})+)"
    entries = re.findall(r"^([A-Za-z0-9_.\-\[\],]+)==([^\s\\]+)" + hashes, text, re.M)
    requirement_lines = [line for line in text.splitlines() if re.match(r"^[A-Za-z0-9]", line)]
    assert len(entries) == len(requirement_lines), "every locked package needs its hashes"
    return {name(n): v for n, v, _ in entries}


# Extras the image installs too: it traces when the OTEL_* settings ask for it.
IMAGE_EXTRAS = ("tracing",)


def runtime_dependencies() -> set[str]:
    """pyproject's dependencies and the extras the image carries."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return {name(r) for r in project["dependencies"]} | {
        name(r) for extra in IMAGE_EXTRAS for r in extras.get(extra, [])
    }


@pytest.mark.parametrize(
    ("variant", "onnxruntime"), [("cpu", "onnxruntime"), ("gpu", "onnxruntime-gpu")]
)
def test_lock_pins_exactly_the_runtime_dependencies(variant: str, onnxruntime: str) -> None:
    wanted = (runtime_dependencies() - {"onnxruntime-gpu"}) | {onnxruntime}
    inputs = {
        name(line)
        for line in (LOCKS / f"runtime-{variant}.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert inputs == wanted
    locked = pinned(LOCKS / f"runtime-{variant}.txt")
    assert wanted <= set(locked)
    assert "torch" not in locked and "grpcio-tools" not in locked  # generated code is committed
    other = "onnxruntime-gpu" if onnxruntime == "onnxruntime" else "onnxruntime"
    assert other not in locked  # never both in one environment


def test_gpu_lock_carries_cuda_and_cudnn_libraries() -> None:
    locked = pinned(LOCKS / "runtime-gpu.txt")
    assert any(n.startswith("nvidia-cudnn") for n in locked)
    assert any(n.startswith("nvidia-cublas") for n in locked)


def test_build_lock_pins_a_setuptools_that_reads_pyproject() -> None:
    locked = pinned(LOCKS / "build.txt")
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    minimum = int(re.findall(r"setuptools>=(\d+)", " ".join(required))[0])
    assert int(locked["setuptools"].split(".")[0]) >= minimum
