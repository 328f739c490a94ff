"""Service settings, read from `SEG_*` environment variables (pydantic-settings)."""

from __future__ import annotations

import os
import tempfile
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "shipped_models"


class Device(StrEnum):
    auto = "auto"  # CUDA when it really initialises, else CPU
    cuda = "cuda"  # CUDA or not ready: never a silent CPU fallback
    cpu = "cpu"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEG_", frozen=True, extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    model_dir: Path = Field(SHIPPED_MODEL_DIR, description="Folder of *.onnx models to serve.")
    device: Device = Field(Device.auto, description="Execution provider: auto, cuda or cpu.")
    # Model repository (REG).
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto",
        description="Which precision variant of a model serves: auto (int8 on the CPU "
        "provider, fp16 on CUDA, when the model has one; else fp32), or fp32, fp16, int8 "
        "(a model without that variant serves fp32 and says so in its status).",
    )
    model_poll_s: float | None = Field(
        None,
        gt=0,
        description="Seconds between reads of SEG_MODEL_DIR for added, changed and removed "
        "models (off when unset).",
    )
    admin_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated keys for the repository API (/v2/repository/...: index, "
        "load, unload); the API is off (404) when none is set.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Requests decoded, run and encoded at once (thread pool size; default: 1 "
        "when the sessions run on CPU, where one inference uses every core, 8 when they run "
        "on CUDA; decided from the providers in use, not the ones installed).",
    )
    intra_op_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=256,
        description="onnxruntime threads per inference (default: the CPU count).",
    )
    batch_max_size: int = Field(
        1,
        ge=1,
        le=256,
        description="Most images in one dynamic batch of same-shape requests; 1 turns "
        "batching off, the default: it measured a loss on 2 CPU cores and on an H200, where "
        "per-request decoding and encoding, not the GPU, bound throughput.",
    )
    batch_max_delay_ms: float = Field(
        2.0, ge=0, le=1000, description="Longest wait for more requests to fill a batch."
    )
    tile_batch: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Tiles per session run for tiled images (default: the model's metadata "
        "on CPU, 8 on CUDA).",
    )
    cudnn_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = Field(
        "HEURISTIC",
        description="cuDNN convolution algorithm choice on CUDA. Measured on an H200: the "
        "first run of a new input shape took 36-48 ms with HEURISTIC and 100-200 ms with "
        "EXHAUSTIVE, later runs about the same.",
    )
    io_binding: bool = Field(
        False,
        description="On CUDA, run through onnxruntime IO binding. Off by default: measured on "
        "an H200 no faster than a plain run, which already fetches only the output asked for.",
    )
    max_pending: int = Field(
        16, ge=1, description="Inferences running or queued at once; 503 with Retry-After above."
    )
    max_pending_pixels: int = Field(
        2 * 8192 * 8192,
        ge=1,
        description="Pixels of images being segmented or queued at once, synchronous requests "
        "and jobs' tile batches together; a request past it gets 503 with Retry-After, a job "
        "waits (a single larger image is admitted when nothing else holds any).",
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="Deadline per inference request (504 when exceeded)."
    )
    max_upload_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above)."
    )
    max_pixels: int = Field(
        8192 * 8192,
        ge=1,
        description="Largest image width x height, as declared and as padded to the model's "
        "size multiple (413 above).",
    )
    max_answer_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Largest answer body, estimated before it is built (413 above): overlays "
        "(3 bytes a pixel), run-length JSON of noisy maps, /v2 tensors.",
    )
    spool_bytes: int = Field(
        1024 * 1024,
        ge=0,
        description="Upload bytes held in memory per request; the rest is spooled to disk.",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="Time for a request body to arrive in full (408 after)."
    )
    v2_max_batch: int = Field(
        16, ge=1, le=1024, description="Most images in one /v2 inference request (N)."
    )
    v2_max_json_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest JSON part of a /v2 request; larger tensors use the binary "
        "tensor data extension (parsing JSON holds the interpreter).",
    )
    whole_image_max_pixels: int = Field(
        1024 * 1024,
        ge=1,
        description="Images up to this many pixels run in one pass; larger ones are tiled.",
    )
    samples_dir: Path | None = Field(
        None,
        description="Folder of sample images named <model>.png|jpg|tif the web page offers.",
    )
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated API keys; when set, every API call needs one.",
    )
    open_health: bool = Field(True, description="Health endpoints need no key.")
    open_metrics: bool = Field(True, description="/metrics needs no key.")
    cors_origins: str = Field(
        "", description="Comma-separated origins allowed by CORS (none by default; * for any)."
    )
    log_level: str = Field(
        "info", pattern="^(critical|error|warning|info|debug)$", description="Log level."
    )
    shutdown_timeout_s: float = Field(
        30.0, ge=0, description="Seconds to drain in-flight requests on SIGTERM."
    )
    drain_delay_s: float = Field(
        0.0,
        ge=0,
        description="Seconds between SIGTERM and closing the listener: readiness is 503 "
        "meanwhile, so load balancers stop sending before connections are refused.",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Open HTTP connections at most: past it a new connection closes the one "
        "that has waited longest without a request in progress (503 when all have one).",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Time for a request's line and headers to arrive once a connection is "
        "open or its previous answer sent; then the connection is closed (408).",
    )
    # Worker processes (PROC).
    processes: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto",
        description="Worker processes serving SEG_PORT, each with its own sessions (on the same "
        "GPU on CUDA): a number, or auto: 1 when the sessions run on CPU (one inference "
        "already uses every core), one per two cores, 2 to 8, when they really run on CUDA. "
        "Limits (SEG_MAX_PENDING, SEG_MAX_PENDING_PIXELS, SEG_MAX_CONNECTIONS) hold per "
        "process; the job worker and gRPC run in the first process only.",
    )
    grpc_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="TCP port of the Open Inference Protocol (KServe v2) over gRPC, on SEG_HOST "
        "beside HTTP; off when unset or empty. Messages up to SEG_MAX_UPLOAD_BYTES are "
        "received.",
    )

    @field_validator("grpc_port", mode="before")
    @classmethod
    def _empty_port_is_off(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("grpc_port")
    @classmethod
    def _grpc_port_is_not_http(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value == info.data.get("port"):
            raise ValueError("SEG_GRPC_PORT must differ from SEG_PORT (HTTP)")
        return value

    job_dir: Path = Field(
        Path(tempfile.gettempdir()) / "segserve-jobs",
        description="Folder of the job database (SQLite) and the jobs' inputs and results; "
        "keep it on a volume for jobs to survive a restart.",
    )
    job_ttl_s: float = Field(
        24 * 3600.0, gt=0, description="Seconds a finished job and its result are kept."
    )
    job_disk_bytes: int = Field(
        20 * 1024**3, ge=1, description="Disk used by jobs' inputs and results at most (507)."
    )
    job_max_queued: int = Field(
        16, ge=1, description="Jobs queued or running at once; 503 with Retry-After above."
    )
    job_max_upload_bytes: int = Field(
        2 * 1024**3, ge=1024, description="Largest job upload, streamed to disk (413 above)."
    )
    job_max_pixels: int = Field(
        16384 * 16384,
        ge=1,
        description="Largest job image, width x height, in formats decoded whole (413 above).",
    )
    job_max_tiff_pixels: int = Field(
        65536 * 65536,
        ge=1,
        description="Largest TIFF job image: read region by region, never decoded whole.",
    )

    @field_validator("api_keys")
    @classmethod
    def _keys_or_nothing(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if raw and not any(k.strip() for k in raw.split(",")):
            raise ValueError(
                "SEG_API_KEYS is set but holds no key (only commas or spaces); unset it to "
                "run without authentication, or give at least one key"
            )
        return value

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    @property
    def admin_key_list(self) -> list[str]:
        return [k.strip() for k in self.admin_keys.get_secret_value().split(",") if k.strip()]

    @field_validator("model_poll_s", mode="before")
    @classmethod
    def _empty_poll_is_off(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @cached_property
    def resolved_model_dir(self) -> Path:
        return self.model_dir.expanduser().resolve()
