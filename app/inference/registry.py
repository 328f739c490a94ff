"""The models being served: loaded, warmed up, found by name and version in one place.

`ModelRegistry.get(name, version)` hands out a `ModelEntry`: a loaded model whose spec,
session and runner are always there. What could not be served (unreadable file, invalid
or missing metadata, duplicate, graph not matching its metadata, CUDA required but
absent) is a `ModelStatus` with its reason, beside the status of every served file; the
other models still serve. The directory is read by app/inference/repository.py.

Reloads (SEG_MODEL_POLL_S, or the repository routes) load and warm a new or changed file
before it takes traffic; requests holding the previous entry finish on it. A file that
fails keeps its reason in the statuses while the version it would replace keeps serving.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import onnxruntime as ort

from app.config import Settings
from app.errors import ModelNotFound, ModelNotReady
from app.inference.batching import DynamicBatcher
from app.inference.loading import check_graph, public_reason, warm_up
from app.inference.model_entry import ModelEntry, ModelState, ModelStatus
from app.inference.repository import (
    Fingerprint,
    ModelFile,
    ModelGroup,
    Scan,
    choose_variant,
    not_a_model_file,
    scan,
    served_spec,
    version_key,
)
from app.inference.runner import SessionRunner
from app.inference.session import (
    CUDA,
    SessionFactory,
    create_session,
    ort_session,
    requested_providers,
)
from app.spec import ModelSpec

__all__ = ["ModelEntry", "ModelRegistry", "ModelState", "ModelStatus", "public_reason"]

log = logging.getLogger("segserve.registry")

CUDA_TILE_BATCH = 8  # tiles per run on CUDA unless SEG_TILE_BATCH says otherwise


Served = dict[str, dict[str, ModelEntry]]  # name -> version -> entry


class ModelRegistry:
    def __init__(self, settings: Settings, factory: SessionFactory = ort_session) -> None:
        self.settings = settings
        self.factory = factory
        self.statuses: list[ModelStatus] = []
        self.problem: str | None = None
        self.loaded = threading.Event()
        self.draining = False  # set on SIGTERM: readiness turns 503 while requests drain
        self._served: Served = {}  # replaced, never changed in place: readers need no lock
        self._scan: Scan | None = None
        self._update = threading.Lock()  # one scan and load at a time
        self._unloaded: set[str] = set()  # names unloaded through the repository API
        self._startup_failed: set[str] = set()  # files that failed at startup
        self._failed: dict[str, tuple[Fingerprint | None, ModelStatus]] = {}
        self._cuda_fell_back = False  # a session asked for CUDA ran on the CPU
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None

    # Discovering and loading.

    def discover(self) -> None:
        """Reads the directory (no model is loaded yet): every file is loading or failed."""
        found = scan(self.settings.resolved_model_dir)
        self._scan, self.problem = found, found.problem
        if found.problem:
            log.error("%s: %s", found.problem, self.settings.resolved_model_dir)
        statuses = [self._broken_status(m) for m in found.broken]
        for group in found.groups:
            chosen, note = choose_variant(group.variants, self.settings.precision, self._on_cuda())
            statuses.append(
                ModelStatus(chosen.file, group.name, ModelState.loading, group.version,
                            _precision(chosen), note=note)
            )  # fmt: skip
        self.statuses = statuses

    def load_all(self) -> None:
        """Blocking: load and warm up each model in turn (run it off the event loop); then
        poll the directory every SEG_MODEL_POLL_S, when set, in a thread of its own."""
        try:
            with self._update:
                found = self._scan or scan(self.settings.resolved_model_dir)
                self._apply(found, initial=True)
        finally:
            self.loaded.set()
        if self.settings.model_poll_s and self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="poll-models", daemon=True)
            self._poller.start()

    def reload(self, only: str | None = None) -> None:
        """Reads the directory again: loads what is new or changed (ready before it takes
        traffic), stops serving what is gone. `only`: that model name alone."""
        with self._update:
            self._apply(scan(self.settings.resolved_model_dir), initial=False, only=only)

    def load_model(self, name: str) -> None:
        """The repository API's load: serve `name` again (after an unload) from the files
        there are now; 404 when the directory has no such model."""
        found = scan(self.settings.resolved_model_dir)
        known = {g.name for g in found.groups} | {m.name for m in found.broken}
        if name not in known:
            raise ModelNotFound(f"no model {shown(name)!r} in the model directory")
        with self._update:
            self._unloaded.discard(name)
            self._apply(found, initial=False, only=name)

    def unload_model(self, name: str) -> None:
        """The repository API's unload: stop serving every version of `name` (requests in
        progress finish) until it is loaded again."""
        with self._update:
            if name not in self._served and not any(s.name == name for s in self.statuses):
                raise ModelNotFound(f"unknown model {shown(name)!r}")
            self._unloaded.add(name)
            self._publish(name, None, None)
            self.statuses = [s for s in self.statuses if s.name != name]
        log.info("model %s unloaded", name)

    def _apply(self, found: Scan, initial: bool, only: str | None = None) -> None:
        self.problem = found.problem
        kept = [s for s in self.statuses if only is not None and s.name != only]
        statuses: list[ModelStatus] = []
        wanted: set[tuple[str, str]] = set()
        for model in found.broken:
            if only is None or model.name == only:
                statuses.append(self._broken_status(model, initial))
        for group in found.groups:
            if group.name in self._unloaded or (only is not None and group.name != only):
                continue
            wanted.add((group.name, group.version))
            statuses.extend(self._serve_group(group, initial))
        for name, versions in list(self._served.items()):
            if only is not None and name != only:
                continue
            for version in list(versions):
                if (name, version) not in wanted:
                    log.info("model %s version %s removed", name, version)
                    self._publish(name, version, None)
        self.statuses = kept + statuses
        if not initial:
            self._startup_failed &= {s.file for s in self.statuses if s.state is ModelState.failed}

    def _serve_group(self, group: ModelGroup, initial: bool) -> list[ModelStatus]:
        """Load the group's chosen variant unless it serves already; its statuses."""
        current = self._served.get(group.name, {}).get(group.version)
        chosen, note = choose_variant(group.variants, self.settings.precision, self._on_cuda())
        if current is not None and (current.file, current.fingerprint, current.note) == (
            chosen.file, chosen.fingerprint, note
        ):  # fmt: skip
            return [current.status()]
        failed = self._failed.get(chosen.file)
        if failed is not None and failed[0] == chosen.fingerprint and not initial:
            return [failed[1]] + ([current.status()] if current is not None else [])
        entry, status = self._load(chosen, group, note)
        if entry is not None and self._wants_cpu_variant(entry, group, note):
            cpu_choice, cpu_note = choose_variant(group.variants, self.settings.precision, False)
            log.info("model %s runs on CPU: serving its %s variant", group.name, cpu_choice.file)
            self._retire(entry)
            entry, status = self._load(cpu_choice, group, cpu_note)
        if entry is None:
            if initial:
                self._startup_failed.add(status.file)
            return [status] + ([current.status()] if current is not None else [])
        self._publish(group.name, group.version, entry)
        return [entry.status()]

    def _wants_cpu_variant(self, entry: ModelEntry, group: ModelGroup, note: str | None) -> bool:
        """auto chose the CUDA variant (fp16), but the session fell back to the CPU."""
        return (
            self.settings.precision == "auto"
            and CUDA not in entry.providers
            and choose_variant(group.variants, "auto", False)[0].file != entry.file
        )

    def _load(
        self, model: ModelFile, group: ModelGroup, note: str | None
    ) -> tuple[ModelEntry | None, ModelStatus]:
        path = model.path
        try:
            problem = not_a_model_file(path)  # again: it may have been replaced since
            if problem is not None:
                raise ValueError(problem)
            session, providers = create_session(
                path,
                self.settings.device,
                self.settings.intra_op_threads,
                self.factory,
                cuda_options={"cudnn_conv_algo_search": self.settings.cudnn_algo_search},
            )
            if CUDA not in providers and self._on_cuda():
                self._cuda_fell_back = True
            spec = served_spec(
                ModelSpec.from_metadata(dict(session.get_modelmeta().custom_metadata_map)),
                model.folder_name,
                model.folder_version,
            )
            if spec != model.spec:
                raise ValueError("the file changed while it was loading; reload to read it again")
            check_graph(session, spec)
            warm_up(session, spec)
            entry = self._entry(model, spec, session, providers)
        except Exception as exc:  # any failure marks this file only
            status = ModelStatus(
                model.file, group.name, ModelState.failed, group.version, _precision(model),
                public_reason(str(exc), path), note,
            )  # fmt: skip
            self._failed[model.file] = (model.fingerprint, status)
            log.error("model %s not served: %s", model.file, exc)  # the full text
            return None, status
        entry.note, entry.variants = note, sorted(group.variants)
        self._failed.pop(model.file, None)
        log.info(
            "model %s version %s (%s, %s) ready on %s",
            spec.name, spec.version, model.file, spec.precision, ",".join(providers),
        )  # fmt: skip
        return entry, entry.status()

    def _entry(
        self,
        model: ModelFile,
        spec: ModelSpec,
        session: ort.InferenceSession,
        providers: list[str],
    ) -> ModelEntry:
        on_cuda = CUDA in providers
        bind_on = "cuda" if on_cuda and self.settings.io_binding else None
        runner = SessionRunner(session, spec.input_name, bind_on)
        default_tiles = spec.tile.batch if spec.tile else 1
        entry = ModelEntry(
            model.file,
            spec,
            session,
            providers,
            runner,
            tile_batch=self.settings.tile_batch or (CUDA_TILE_BATCH if on_cuda else default_tiles),
            pipelined_tiles=on_cuda,
            fingerprint=model.fingerprint,
        )
        max_batch = self.settings.batch_max_size
        if max_batch > 1:
            delay_s = self.settings.batch_max_delay_ms / 1000
            entry.batcher = DynamicBatcher(runner, max_batch, delay_s, spec.name)
        return entry

    def _broken_status(self, model: ModelFile, initial: bool = True) -> ModelStatus:
        previous = self._failed.get(model.file)
        status = ModelStatus(
            model.file, model.name, ModelState.failed, model.folder_version, reason=model.reason
        )
        if previous is None or previous[0] != model.fingerprint:
            log.error("model %s not served: %s", model.file, model.reason)
        self._failed[model.file] = (model.fingerprint, status)
        if initial:
            self._startup_failed.add(model.file)
        return status

    def _publish(self, name: str, version: str | None, entry: ModelEntry | None) -> None:
        """Swap what serves `name` (`version`; None: every version): readers see the old
        mapping or the new one, never a half-made one."""
        served = {n: dict(v) for n, v in self._served.items()}
        versions = served.setdefault(name, {})
        old = list(versions.values()) if version is None else [versions.get(version)]
        if version is None:
            versions.clear()
        elif entry is None:
            versions.pop(version, None)
        else:
            versions[version] = entry
        if not versions:
            del served[name]
        self._served = served
        for retired in old:
            if retired is not None and retired is not entry:
                self._retire(retired)

    @staticmethod
    def _retire(entry: ModelEntry) -> None:
        """Requests holding the entry finish on it: its session lives while they hold it,
        and their runs go straight to it once the batcher is closed."""
        if entry.batcher is not None:
            entry.batcher.close()

    def _on_cuda(self) -> bool:
        """Whether sessions run on CUDA, as far as is known: asked for, and not seen to fall
        back (onnxruntime-gpu lists CUDA on hosts where it cannot initialise)."""
        if self._cuda_fell_back:
            return False
        return CUDA in requested_providers(self.settings.device, ort.get_available_providers())

    def _poll(self) -> None:
        while not self._stop_polling.wait(self.settings.model_poll_s or 1.0):
            try:
                self.reload()
            except Exception:  # the poller keeps going; the next round tries again
                log.exception("reading the model directory failed")

    def close(self) -> None:
        """Stops the poller and the batching threads (after running what waits)."""
        self._stop_polling.set()
        for entry in self.all_served():
            self._retire(entry)
            entry.batcher = None

    # What serves.

    @property
    def ready(self) -> bool:
        """Every model loaded (none loading) and none failed at startup; a file that fails
        on a later reload is reported without taking readiness away, since what it would
        have replaced keeps serving."""
        if self.draining or not self.loaded.is_set() or not self._served:
            return False
        return not any(
            s.state is ModelState.loading
            or (s.state is ModelState.failed and s.file in self._startup_failed)
            for s in self.statuses
        )

    def start_draining(self) -> None:
        self.draining = True
        self.problem = "shutting down: finishing in-flight requests"

    def get(self, name: str, version: str | None = None) -> ModelEntry:
        """The model `name` at `version` (None: its highest version that serves): 404 when
        unknown, 503 when still loading or failed."""
        versions = self._served.get(name)
        if versions:
            if version is None:
                return versions[max(versions, key=version_key)]
            if version in versions:
                return versions[version]
        which = f"model {shown(name)!r}" + (f" version {shown(version)!r}" if version else "")
        for status in self.statuses:
            if status.name == name and version in (None, status.version):
                if status.state is ModelState.loading:
                    raise ModelNotReady(f"{which} is loading", {"Retry-After": "2"})
                if status.state is ModelState.failed:
                    raise ModelNotReady(f"{which} is failed: {status.reason}")
        if not self.loaded.is_set():
            raise ModelNotReady("models are still loading; retry shortly", {"Retry-After": "2"})
        raise ModelNotFound(f"unknown {which}; GET /v1/models lists them")

    def versions(self, name: str) -> list[ModelEntry]:
        """The versions of `name` that serve, highest first."""
        return _highest_first(self._served.get(name, {}))

    def served(self) -> list[ModelEntry]:
        """One entry per model name: its default (highest) version."""
        served = self._served  # one snapshot: a reload may swap it meanwhile
        return [_highest_first(served[name])[0] for name in sorted(served)]

    def all_served(self) -> list[ModelEntry]:
        """Every version that serves, by name, highest version first."""
        served = self._served
        return [e for name in sorted(served) for e in _highest_first(served[name])]

    def providers_in_use(self) -> set[str]:
        """The providers the serving models' sessions really run on."""
        return {p for e in self.all_served() for p in e.providers}

    def index(self) -> list[dict[str, Any]]:
        """Triton's repository index: every model version in the directory, its state."""
        found = scan(self.settings.resolved_model_dir)
        rows: list[dict[str, Any]] = []
        for group in found.groups:
            entry = self._served.get(group.name, {}).get(group.version)
            status = next(
                (s for s in self.statuses if (s.name, s.version) == (group.name, group.version)),
                None,
            )
            state, reason = "UNAVAILABLE", "not loaded"
            if group.name in self._unloaded:
                reason = "unloaded"
            elif entry is not None:
                state, reason = "READY", ""
            elif status is not None:
                state = "LOADING" if status.state is ModelState.loading else "UNAVAILABLE"
                reason = status.reason or ""
            rows.append(
                {"name": group.name, "version": group.version, "state": state, "reason": reason}
            )
        for model in found.broken:
            rows.append({"name": model.name, "state": "UNAVAILABLE", "reason": model.reason or ""})
        return rows


def _highest_first(versions: dict[str, ModelEntry]) -> list[ModelEntry]:
    return [versions[v] for v in sorted(versions, key=version_key, reverse=True)]


def _precision(model: ModelFile) -> str | None:
    return model.spec.precision if model.spec is not None else None


def shown(text: str, limit: int = 64) -> str:
    """A client's name as echoed in an error: cut to `limit` characters (names come from
    request bodies and gRPC messages of up to SEG_MAX_UPLOAD_BYTES)."""
    return text if len(text) <= limit else text[:limit] + "..."
