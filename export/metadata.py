"""Build the `ModelSpec` for a trained checkpoint and write it into the ONNX file."""

from __future__ import annotations

import math
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx

from app.spec import ModelSpec, TileSpec
from models.tasks import Task


def git_commit(cwd: Path | None = None) -> str:
    """The current commit, with `-dirty` when the tree has changes; empty outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f"{sha}-dirty" if dirty else sha


def build_spec(
    task: Task, version: str, metrics: dict[str, Any], size_multiple: int, architecture: str
) -> ModelSpec:
    finite = {
        k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)
    }
    return ModelSpec(
        name=task.name,
        version=version,
        description=task.description,
        architecture=architecture,
        classes=task.classes,
        palette=task.palette,
        input_channels=1 if task.in_channels == 1 else 3,
        mean=task.mean,
        std=task.std,
        size_multiple=size_multiple,
        tile=TileSpec(**task.tile) if task.tile else None,
        training_data=task.training_data,
        data_terms=task.data_terms,
        metrics=finite,
        git_commit=git_commit(),
        exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def write_metadata(path: Path, spec: ModelSpec) -> None:
    """Replace the file's `metadata_props` with the spec (and keep producer info)."""
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in spec.to_metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = spec.description
    proto.model_version = int(version_number(spec.version))
    onnx.save(proto, str(path))


def version_number(version: str) -> int:
    """ONNX wants an integer model_version: 1.2.3 -> 10203."""
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0] * 10000 + parts[1] * 100 + parts[2]
