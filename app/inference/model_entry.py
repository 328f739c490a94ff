"""A model as the registry hands it out (ModelEntry: loaded, with its spec, session and
runner always there) and as /health/ready reports a file (ModelStatus)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import onnxruntime as ort

from app.inference.batching import BatcherClosed, DynamicBatcher, RunFn
from app.inference.repository import Fingerprint
from app.spec import ModelSpec


class ModelState(StrEnum):
    loading = "loading"
    ready = "ready"
    failed = "failed"


@dataclass
class ModelStatus:
    """A model file as /health/ready and /v1/models report it."""

    file: str
    name: str
    state: ModelState
    version: str | None = None
    precision: str | None = None
    reason: str | None = None  # why it does not serve
    note: str | None = None  # e.g. the precision asked for is missing
    providers: list[str] = field(default_factory=list)


@dataclass
class ModelEntry:
    """A loaded, warmed-up model that serves."""

    file: str
    spec: ModelSpec
    session: ort.InferenceSession
    providers: list[str]
    runner: RunFn  # a SessionRunner, or a wrapper of one (jobs)
    batcher: DynamicBatcher | None = None
    tile_batch: int = 1  # tiles per session run
    pipelined_tiles: bool = False  # prepare the next tile batch while one runs (CUDA)
    note: str | None = None
    variants: list[str] = field(default_factory=list)  # precisions found for this version
    fingerprint: Fingerprint | None = None

    def run(self, output: str, x: np.ndarray, batchable: bool = True) -> np.ndarray:
        """`output` for the NCHW batch `x`; through the dynamic batcher when it is on and
        `x` is one request's image (tile batches are batches already). A request that got
        this entry before a reload replaced it runs directly once its batcher is closed."""
        if self.batcher is not None and batchable:
            try:
                return self.batcher.submit(output, x)
            except BatcherClosed:
                pass
        return self.runner(output, x)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return self.spec.version

    def status(self) -> ModelStatus:
        return ModelStatus(
            self.file, self.name, ModelState.ready, self.version, self.spec.precision,
            None, self.note, list(self.providers),
        )  # fmt: skip
