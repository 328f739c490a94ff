"""Discovers, loads and warms up every model in the model directory.

A file that cannot be served (unloadable, missing or invalid metadata, duplicate
name, graph not matching its metadata, CUDA required but absent) is marked failed
with a reason; the other models still serve.
"""

from __future__ import annotations

import logging
import re
import stat
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.config import Settings
from app.errors import ModelNotFound, ModelNotReady
from app.inference.batching import DynamicBatcher, RunFn
from app.inference.runner import SessionRunner
from app.inference.session import CUDA, SessionFactory, _ort_session, create_session
from app.spec import ModelSpec

log = logging.getLogger("segserve.registry")

CUDA_TILE_BATCH = 8  # tiles per run on CUDA unless SEG_TILE_BATCH says otherwise


class ModelState(StrEnum):
    loading = "loading"
    ready = "ready"
    failed = "failed"


@dataclass
class ModelEntry:
    file: str
    state: ModelState = ModelState.loading
    reason: str | None = None
    spec: ModelSpec | None = None
    session: ort.InferenceSession | None = None
    providers: list[str] = field(default_factory=list)
    runner: RunFn | None = None  # a SessionRunner, or a wrapper of one (jobs)
    batcher: DynamicBatcher | None = None
    tile_batch: int = 1  # tiles per session run
    pipelined_tiles: bool = False  # prepare the next tile batch while one runs (CUDA)

    def run(self, output: str, x: np.ndarray, batchable: bool = True) -> np.ndarray:
        """`output` for the NCHW batch `x`; through the dynamic batcher when it is on and
        `x` is one request's image (tile batches are batches already)."""
        if self.batcher is not None and batchable:
            return self.batcher.submit(output, x)
        if self.runner is None:
            raise ModelNotReady(f"model {self.name!r} is {self.state.value}")
        return self.runner(output, x)

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else Path(self.file).stem


class ModelRegistry:
    def __init__(self, settings: Settings, factory: SessionFactory = _ort_session) -> None:
        self.settings = settings
        self.factory = factory
        self.entries: list[ModelEntry] = []
        self.problem: str | None = None
        self.loaded = threading.Event()
        self.draining = False  # set on SIGTERM: readiness turns 503 while requests drain

    def discover(self) -> None:
        directory = self.settings.resolved_model_dir
        if not directory.is_dir():
            self.problem = "the model directory does not exist (SEG_MODEL_DIR)"
            log.error("model directory %s does not exist", directory)
            return
        self.entries = [ModelEntry(p.name) for p in sorted(directory.glob("*.onnx"))]
        for entry in self.entries:
            problem = _not_a_model_file(directory / entry.file)
            if problem is not None:  # never opened: a FIFO would block the loader for good
                entry.state, entry.reason = ModelState.failed, problem
                log.error("model %s not served: %s", entry.file, problem)
        if not self.entries:
            self.problem = "no *.onnx models in the model directory (SEG_MODEL_DIR)"
            log.error("no *.onnx files in %s", directory)

    def load_all(self) -> None:
        """Blocking: load and warm up each model in turn (run it off the event loop)."""
        try:
            for entry in self.entries:
                if entry.state is ModelState.loading:
                    self._load(entry)
        finally:
            self.loaded.set()

    def _load(self, entry: ModelEntry) -> None:
        path = self.settings.resolved_model_dir / entry.file
        try:
            problem = _not_a_model_file(path)  # again: it may have been replaced since
            if problem is not None:
                raise ValueError(problem)
            session, providers = create_session(
                path,
                self.settings.device,
                self.settings.intra_op_threads,
                self.factory,
                cuda_options={"cudnn_conv_algo_search": self.settings.cudnn_algo_search},
            )
            spec = ModelSpec.from_metadata(dict(session.get_modelmeta().custom_metadata_map))
            if any(e.spec and e.spec.name == spec.name for e in self.entries if e is not entry):
                raise ValueError(f"another file already serves the model name {spec.name!r}")
            _check_graph(session, spec)
            entry.spec, entry.session, entry.providers = spec, session, providers
            warm_up(session, spec)
            self._attach_runner(entry, session, spec)
        except Exception as exc:  # any failure marks this model only
            entry.state = ModelState.failed
            entry.reason = public_reason(str(exc), path)
            entry.session = None
            log.error("model %s not served: %s", entry.file, exc)  # the full text
            return
        entry.state = ModelState.ready
        log.info("model %s (%s) ready on %s", spec.name, entry.file, ",".join(providers))

    def _attach_runner(
        self, entry: ModelEntry, session: ort.InferenceSession, spec: ModelSpec
    ) -> None:
        on_cuda = CUDA in entry.providers
        bind_on = "cuda" if on_cuda and self.settings.io_binding else None
        entry.runner = SessionRunner(session, spec.input_name, bind_on)
        default_tiles = spec.tile.batch if spec.tile else 1
        entry.tile_batch = self.settings.tile_batch or (
            CUDA_TILE_BATCH if on_cuda else default_tiles
        )
        entry.pipelined_tiles = on_cuda
        max_batch = self.settings.batch_max_size
        if max_batch > 1:
            delay_s = self.settings.batch_max_delay_ms / 1000
            entry.batcher = DynamicBatcher(entry.runner, max_batch, delay_s, spec.name)

    def close(self) -> None:
        """Stops the batching threads (after running what waits)."""
        for entry in self.entries:
            if entry.batcher is not None:
                entry.batcher.close()
                entry.batcher = None

    @property
    def ready(self) -> bool:
        if self.draining:
            return False
        return bool(self.entries) and all(e.state is ModelState.ready for e in self.entries)

    def start_draining(self) -> None:
        self.draining = True
        self.problem = "shutting down: finishing in-flight requests"

    def get(self, name: str) -> ModelEntry:
        """The ready model called `name`; 404 when unknown, 503 when not ready."""
        for entry in self.entries:
            if entry.spec is not None and entry.spec.name == name:
                if entry.state is not ModelState.ready:
                    raise ModelNotReady(f"model {name!r} is {entry.state.value}")
                return entry
        if any(e.state is ModelState.loading for e in self.entries):
            raise ModelNotReady("models are still loading; retry shortly", {"Retry-After": "2"})
        raise ModelNotFound(f"no model named {name!r}; GET /v1/models lists them")

    def served(self) -> list[ModelEntry]:
        return [e for e in self.entries if e.spec is not None]

    def providers_in_use(self) -> set[str]:
        """The providers the ready models' sessions really run on."""
        return {p for e in self.entries if e.state is ModelState.ready for p in e.providers}


def _check_graph(session: ort.InferenceSession, spec: ModelSpec) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if spec.input_name not in inputs:
        raise ValueError(f"graph has no input {spec.input_name!r} named in its metadata")
    shape = inputs[spec.input_name].shape
    wanted = "tensor(uint8)" if spec.input_dtype == "uint8" else "tensor(float)"
    if inputs[spec.input_name].type != wanted:
        raise ValueError(
            f"input {spec.input_name!r} is {inputs[spec.input_name].type}, but the metadata's "
            f"input_dtype {spec.input_dtype!r} needs {wanted}"
        )
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != spec.input_channels):
        raise ValueError(f"input shape {shape} does not match {spec.input_channels} channels NCHW")
    missing = {spec.logits_output, spec.labels_output} - {None} - outputs
    if missing:
        raise ValueError(
            f"graph lacks outputs {sorted(str(m) for m in missing)} named in its metadata"
        )


def warm_up(session: ort.InferenceSession, spec: ModelSpec) -> None:
    """One run on a dummy input, so the first request does not pay for initialisation."""
    side = spec.size_multiple * max(1, -(-64 // spec.size_multiple))
    dtype = np.uint8 if spec.input_dtype == "uint8" else np.float32
    dummy = np.zeros((1, spec.input_channels, side, side), dtype)
    outputs = session.run(None, {spec.input_name: dummy})
    logits = outputs[[o.name for o in session.get_outputs()].index(spec.logits_output)]
    if logits.shape[1] != spec.num_classes or logits.shape[2:] != (side, side):
        raise ValueError(
            f"warm-up output {tuple(logits.shape)} does not match {spec.num_classes} classes "
            "at input resolution"
        )


def _not_a_model_file(path: Path) -> str | None:
    """Why `path` cannot be a model without opening it, or None: only regular files (or links
    to them) are read; opening a FIFO blocks until someone writes to it."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        return "not a regular file (a directory, FIFO, socket or device); models are files"
    return None


# onnxruntime's source locations, with the C++ function after them:
# "/onnxruntime_src/onnxruntime/core/graph/model.cc:256 onnxruntime::Model::Model(...)".
_SOURCE_LOCATION = re.compile(
    r"(?:/[\w.+-]+)+\.(?:cc|cpp|cxx|c|h|hpp|cu|cuh):\d+(?:\s+[^()]*?::[^()]*?\([^)]*\)(?:\s*const)?)?"
)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(?:/[^\s/'\"(),;:\[\]]+)+/?")


def public_reason(message: str, path: Path) -> str:
    """A failure's text as clients see it (on /health/ready, open without a key): file names
    only, no directories, no onnxruntime source paths. The log has the full text."""
    message = message.replace(str(path), path.name).replace(str(path.parent), "<model dir>")
    message = _SOURCE_LOCATION.sub("", message)
    message = _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], message)
    return " ".join(message.split())[:500]
