"""The model metadata contract, shared by `export/` (writes it) and `app/` (reads it).

Every served ONNX file carries one JSON document under the `metadata_props` key
`SPEC_KEY`. It describes how to feed the graph (channels, normalisation, size
multiple), how to read its outputs (class names, palette) and where the model came
from (training data, metrics, commit). This module is torch-free on purpose.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SPEC_KEY = "segserve.spec"

RGB = tuple[
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
]


class TileSpec(BaseModel):
    """Overlap-tile defaults for images larger than one comfortable pass."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(ge=16, description="Square input tile side in pixels.")
    overlap: int = Field(ge=0, description="Context pixels on each side that are discarded.")
    batch: int = Field(default=1, ge=1, description="Tiles per session run.")

    @model_validator(mode="after")
    def _overlap_fits(self) -> TileSpec:
        if 2 * self.overlap >= self.size:
            raise ValueError("tile overlap must be less than half the tile size")
        return self


class ModelSpec(BaseModel):
    """Everything the service needs to know about one ONNX segmentation model.

    Graph contract: input `input_name` is NCHW with `input_channels` channels, height
    and width multiples of `size_multiple` (the service mirror-pads and crops back).
    With `input_dtype` "float32" the service feeds `(v / 255 - mean[c]) / std[c]`; with
    "uint8" it feeds the pixel values themselves and the graph normalises (so a quarter
    of the bytes travel, and the GPU does the arithmetic). Output `logits_output` is
    float32 (N, num_classes, H, W) at input resolution; the optional `labels_output` is
    its argmax over classes, uint8 or int64 (N, H, W). A graph that answers class labels
    only (its argmax inside, as `segserve import --output-kind labels` wraps one) has
    `logits_output` None and `labels_output` set: it serves class maps, but nothing that
    needs scores (probabilities, confidence, test-time augmentation). `precision` is the
    arithmetic inside the graph (an INT8 or FP16 variant keeps the same inputs and outputs).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1, 2] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = Field(min_length=1, max_length=64)
    description: str = ""
    architecture: str = ""
    classes: list[str] = Field(min_length=2, max_length=256)
    palette: list[RGB]
    input_channels: Literal[1, 3]
    mean: list[float]
    std: list[float]
    size_multiple: int = Field(default=1, ge=1, le=1024)
    input_dtype: Literal["float32", "uint8"] = "float32"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    input_name: str = "image"
    logits_output: str | None = "logits"  # None: the graph answers labels only
    labels_output: str | None = "labels"
    tile: TileSpec | None = None
    training_data: str = ""
    data_terms: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    git_commit: str = ""
    exported_at: str = ""

    @field_validator("classes")
    @classmethod
    def _classes_unique(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes) or any(not c for c in classes):
            raise ValueError("class names must be non-empty and unique")
        return classes

    @field_validator("std")
    @classmethod
    def _std_positive(cls, std: list[float]) -> list[float]:
        if any(s <= 0 for s in std):
            raise ValueError("std values must be positive")
        return std

    @model_validator(mode="after")
    def _lengths_agree(self) -> ModelSpec:
        if len(self.palette) != len(self.classes):
            raise ValueError("palette needs one colour per class")
        if len(self.mean) != self.input_channels or len(self.std) != self.input_channels:
            raise ValueError("mean and std need one value per input channel")
        if self.tile is not None and self.tile.size % self.size_multiple:
            raise ValueError("tile size must be a multiple of size_multiple")
        if self.logits_output is None and self.labels_output is None:
            raise ValueError(
                "a graph without scores (logits_output null) needs labels_output: "
                "the class map has to come from somewhere"
            )
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_scores(self) -> bool:
        """The graph answers per-class scores (probabilities, confidence and TTA need them)."""
        return self.logits_output is not None

    def to_metadata(self) -> dict[str, str]:
        """The `metadata_props` entries to write into the ONNX file."""
        return {SPEC_KEY: self.model_dump_json()}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> ModelSpec:
        """Parse the spec from an ONNX file's `metadata_props`.

        Raises `ValueError` (pydantic's `ValidationError` is one) with a readable
        reason when the key is missing or the document is invalid.
        """
        raw = props.get(SPEC_KEY)
        if raw is None:
            raise ValueError(f"metadata key {SPEC_KEY!r} is missing")
        try:
            document = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"metadata key {SPEC_KEY!r} is not valid JSON: {exc}") from exc
        return cls.model_validate(document)
