"""onnxruntime sessions with deliberate threading and honest provider reporting."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import onnxruntime as ort

from app.config import Device

# A service never reports usage to anyone (Windows builds send ETW events otherwise).
ort.disable_telemetry_events()

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
log = logging.getLogger("segserve.session")


class ProviderUnavailable(RuntimeError):
    """SEG_DEVICE=cuda but the session did not get the CUDA provider."""


def requested_providers(device: Device, available: list[str]) -> list[str]:
    if device is Device.cpu:
        return [CPU]
    if device is Device.cuda:
        return [CUDA, CPU]  # ask even if not listed: the check below reports the outcome
    return [CUDA, CPU] if CUDA in available else [CPU]


def default_workers(active: Iterable[str]) -> int:
    """Request threads when SEG_WORKERS is unset, from the providers the sessions really run
    on (not the ones asked for: onnxruntime falls back to CPU silently): on CPU one inference
    already uses every core, so one at a time; with CUDA, enough to decode and encode on the
    CPU while the GPU runs, and to fill a dynamic batch."""
    return 8 if CUDA in active else 1


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads that spin steal the cores from the other sessions' work: measured
    # on 2 cores with two sessions, spinning doubled latency.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


Provider = str | tuple[str, dict[str, str]]  # a name, or a name with provider options
SessionFactory = Callable[[str, ort.SessionOptions, list[Provider]], ort.InferenceSession]


@functools.cache  # once per process
def _preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of the `nvidia-*` wheels (onnxruntime-gpu's `cuda`
    and `cudnn` extras) so that the CUDA provider finds them without LD_LIBRARY_PATH.
    Missing libraries are not an error here: the provider check after session creation
    reports what the session really got."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21 only
    if preload is None:
        return
    try:
        preload(directory="")  # "": the nvidia site packages first, then the default paths
    except Exception as exc:  # best effort: the provider check after creation decides
        log.info("could not preload CUDA libraries: %s", exc)


def ort_session(
    path: str, options: ort.SessionOptions, providers: list[Provider]
) -> ort.InferenceSession:
    """The default SessionFactory: an onnxruntime session (CUDA's libraries preloaded first
    when CUDA is asked for)."""
    if any(p == CUDA or (isinstance(p, tuple) and p[0] == CUDA) for p in providers):
        _preload_cuda_libraries()
    return ort.InferenceSession(path, options, providers=providers)


def create_session(
    path: Path,
    device: Device,
    intra_op_threads: int,
    factory: SessionFactory = ort_session,
    available: Callable[[], list[str]] | None = None,
    cuda_options: dict[str, str] | None = None,
) -> tuple[ort.InferenceSession, list[str]]:
    """A session and the providers it really got (onnxruntime falls back silently)."""
    listed = available() if available is not None else ort.get_available_providers()
    providers = requested_providers(device, list(listed))
    with_options: list[Provider] = [
        (p, cuda_options) if p == CUDA and cuda_options else p for p in providers
    ]
    session = factory(str(path), session_options(intra_op_threads), with_options)
    active = list(session.get_providers())
    if CUDA in providers and CUDA not in active:
        log.warning("CUDA provider requested for %s but the session runs on %s", path.name, active)
    if device is Device.cuda and CUDA not in active:
        raise ProviderUnavailable(
            f"SEG_DEVICE=cuda but the session runs on {', '.join(active)} "
            "(CUDA libraries or GPU missing)"
        )
    return session, active
