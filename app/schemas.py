"""Typed response bodies (they also document the API in /docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.spec import ModelSpec


class ModelStatus(BaseModel):
    name: str
    file: str
    state: Literal["loading", "ready", "failed"]
    reason: str | None = None
    providers: list[str] = Field(default_factory=list, description="Providers really in use.")
    version: str | None = Field(None, description="The model version (unknown: unreadable).")
    precision: str | None = Field(None, description="The variant serving: fp32, fp16, int8.")
    note: str | None = Field(None, description="E.g. the precision asked for is missing.")


class ReadinessReport(BaseModel):
    ready: bool
    problem: str | None = None
    models: list[ModelStatus]


class ModelInfo(BaseModel):
    state: Literal["loading", "ready", "failed"]
    providers: list[str]
    file: str
    spec: ModelSpec
    default: bool = Field(True, description="The version served when none is named.")
    precision: str = Field("fp32", description="The precision variant serving.")
    precisions: list[str] = Field(
        default_factory=list, description="The precision variants found for this version."
    )
    note: str | None = Field(None, description="E.g. the precision asked for is missing.")
    outputs: list[str] = Field(
        default_factory=lambda: ["labels", "probabilities"],
        description="What the model answers: class labels, and per-class probabilities "
        "(which format=confidence, tta and the v2 `probabilities` output need) unless its "
        "graph gives labels only.",
    )


class ModelList(BaseModel):
    models: list[ModelInfo]


class ClassStat(BaseModel):
    index: int
    name: str
    pixels: int
    fraction: float


class ModelRef(BaseModel):
    name: str
    version: str


class SegmentationResponse(BaseModel):
    model: ModelRef
    width: int
    height: int
    classes: list[str]
    class_map: dict[str, Any] = Field(
        description=(
            "encoding 'rle': `counts` = [class, run, class, run, ...] over the row-major map; "
            "encoding 'list': `rows` = nested list [height][width]."
        )
    )
    stats: list[ClassStat]
    providers: list[str]
    tiles: int = Field(1, description="Session inputs the image was cut into (1: one pass).")
    timings_ms: dict[str, float]


class CocoRle(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="pycocotools' compressed RLE string (column-major runs)")


class CocoAnnotation(BaseModel):
    id: int
    image_id: int
    category_id: int = Field(description="The class index (the palette PNG's pixel value).")
    category_name: str
    segmentation: CocoRle
    area: int
    bbox: list[int] = Field(description="[x, y, width, height] of the class's pixels")
    iscrowd: int


class CocoDocument(BaseModel):
    """format=coco: a COCO dataset of the one image, an annotation per class present."""

    model: ModelRef
    width: int
    height: int
    images: list[dict[str, int]]
    categories: list[dict[str, Any]]
    annotations: list[CocoAnnotation]
