"""The spec of an imported model (export/importer.py), from the request and the probe:
normalisation (ImageNet's by default), class names and palette, tiling, description.
"""

from __future__ import annotations

from datetime import UTC, datetime

import onnx

from app.spec import ModelSpec, TileSpec
from export.importer_inputs import ImportProblem, ImportRequest, voc_palette
from export.importer_probe import Probe, align

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def normalisation(request: ImportRequest, probe: Probe) -> tuple[list[float], list[float]]:
    """The mean and std per channel: the request's, or the default (a note says which)."""
    mean = request.mean or (IMAGENET_MEAN if probe.channels == 3 else [0.5])
    std = request.std or (IMAGENET_STD if probe.channels == 3 else [0.5])
    mean, std = (v * probe.channels if len(v) == 1 else v for v in (mean, std))  # one for all
    if request.mean is None or request.std is None:
        probe.notes.append(
            f"normalisation: mean {mean}, std {std} (the default; set --mean/--std if the "
            "model was trained with others)"
        )
    if len(mean) != probe.channels or len(std) != probe.channels:
        raise ImportProblem(
            f"the model takes {probe.channels} channels: --mean and --std need "
            f"{probe.channels} values each"
        )
    return mean, std


def class_names(request: ImportRequest, probe: Probe) -> list[str]:
    if request.classes is None:
        raise ImportProblem(
            f"the model answers {probe.classes} classes: name them with --classes a,b,... or "
            "--classes-file"
        )
    return request.classes


def build_spec(
    request: ImportRequest,
    version: str,
    probe: Probe,
    classes: list[str],
    mean: list[float],
    std: list[float],
    original: onnx.ModelProto,
) -> ModelSpec:
    palette = request.palette or voc_palette(len(classes))
    if len(palette) != len(classes):
        raise ImportProblem(f"--palette-file has {len(palette)} colours for {len(classes)} classes")
    multiple = probe.size_multiple
    tile: TileSpec | None = None
    size = request.tile_size
    overlap = request.tile_overlap
    if probe.fixed is not None and probe.fixed[0] == probe.fixed[1] and size is None:
        size = probe.fixed[0]
    if size is not None or overlap is not None or 512 % multiple or 64 % multiple:
        size = size or align(512, multiple)
        overlap = overlap if overlap is not None else align(size // 8, multiple)
        if size % multiple or overlap % multiple:
            raise ImportProblem(
                f"--tile-size and --tile-overlap must be multiples of the size multiple {multiple}"
            )
        try:
            tile = TileSpec(size=size, overlap=overlap)
        except ValueError as exc:
            raise ImportProblem(f"--tile-size/--tile-overlap: {exc}") from exc
    producer = " ".join(p for p in (original.producer_name, original.producer_version) if p)
    try:
        return ModelSpec(
            schema_version=2,
            name=request.name,
            version=version,
            description=" ".join(
                [request.description or f"Imported from {request.source.name}."]
                + [f"Probe: {'; '.join(probe.notes)}."] * bool(probe.notes)
            ),
            architecture=f"imported ONNX ({producer or 'unknown producer'})",
            classes=classes,
            palette=palette,
            input_channels=1 if probe.channels == 1 else 3,
            mean=mean,
            std=std,
            size_multiple=multiple,
            input_dtype="uint8",
            logits_output=None if probe.kind == "labels" else "logits",
            tile=tile,
            exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
    except ValueError as exc:
        raise ImportProblem(f"the spec would be invalid: {exc}") from exc
