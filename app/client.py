"""The client side of the `segserve` command: `segment`, `models` and `health`, on the
`segserve` package's Client (one keep-alive connection pool, retries on 503).

`request` is the standard-library call behind `segserve healthcheck` (the container's
HEALTHCHECK), which must not pay for importing httpx every few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.client_jobs import JOB_FORMATS, add_job_command, needs_job, run_job
from app.imaging.media_types import IMAGE_MEDIA_TYPES

DEFAULT_URL = "http://127.0.0.1:8000"
SUFFIX = {"png": ".png", "overlay": ".overlay.png", "confidence": ".confidence.png",
          "json": ".json", "coco": ".coco.json", "geojson": ".geojson", "tiff": ".tif"}  # fmt: skip
API_KEY_ENV = "SEGSERVE_API_KEY"

if TYPE_CHECKING:
    from segserve import Client


def request(method: str, url: str, body: bytes | None = None, content_type: str = "",
            timeout: float = 300) -> tuple[int, bytes]:  # fmt: skip
    headers = {"content-type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def image_files(paths: list[Path]) -> Iterator[Path]:
    """The given files, and the image files (by suffix) directly inside given folders."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_MEDIA_TYPES)
        else:
            yield path


def output_paths(files: list[Path], out_dir: Path, fmt: str) -> dict[Path, Path] | str:
    """Each input's output file, or why they cannot all be written (two with one name)."""
    outputs: dict[Path, Path] = {}
    taken: dict[Path, Path] = {}
    for source in files:
        output = out_dir / f"{source.stem}{SUFFIX[fmt]}"
        if output in taken and taken[output] != source:
            return f"{taken[output]} and {source} would both be written to {output}"
        taken[output] = outputs[source] = output
    return outputs


def make_client(args: argparse.Namespace) -> Client:
    from segserve import Client  # httpx is imported by the client commands only

    return Client(args.url, args.api_key, timeout=args.timeout, retries=args.retries,
                  max_connections=max(getattr(args, "concurrency", 1), 1))  # fmt: skip


def segment_params(args: argparse.Namespace) -> dict[str, Any]:
    params = {"tiling": args.tiling, "tile_size": args.tile_size, "tta": args.tta or None,
              "alpha": args.alpha}  # fmt: skip
    return {key: value for key, value in params.items() if value is not None}


def cmd_segment(args: argparse.Namespace) -> int:
    from segserve import JobFailed, SegserveError, TransportError
    from segserve.batch import run_batch

    if args.concurrency < 1:
        print("segserve segment: --concurrency must be at least 1", file=sys.stderr)
        return 2
    files = list(dict.fromkeys(image_files(args.inputs)))
    if not files:
        print("segserve segment: no image files given", file=sys.stderr)
        return 2
    outputs = output_paths(files, args.out_dir, args.format)
    if isinstance(outputs, str):
        print(f"segserve segment: {outputs}", file=sys.stderr)
        return 2
    params = segment_params(args)
    failures: list[tuple[Path, str]] = []
    started = time.perf_counter()
    with make_client(args) as client:
        try:  # an unreachable service fails once here, not once per image after retries
            client.model(args.model)
        except TransportError as exc:
            print(f"segserve segment: {exc}", file=sys.stderr)
            return 1
        except SegserveError:
            pass  # a missing key, an unknown or loading model: each image's answer says so
        try:
            args.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"segserve segment: cannot create {args.out_dir}: {exc}", file=sys.stderr)
            return 2

        # Files past one request's limits (or all, with --job) go through jobs, one at a time.
        jobs = [f for f in files if args.job or args.format == "tiff" or needs_job(f)]
        if jobs and args.format not in JOB_FORMATS:
            print(
                f"segserve segment: {len(jobs)} file(s) need a job, whose results are "
                f"{', '.join(JOB_FORMATS)}; not --format {args.format}",
                file=sys.stderr,
            )
            return 2
        for source in jobs:
            try:
                run_job(
                    client, source, args.model, outputs[source], args.format, params, args.quiet
                )
            except KeyboardInterrupt:
                return 130
            except (SegserveError, JobFailed) as exc:
                failures.append((source, str(exc)))
        files_now = [f for f in files if f not in set(jobs)]

        def work(source: Any) -> Path:
            answer = client.segment_raw(source, args.model, args.format, **params)
            output = outputs[source]
            try:
                output.write_bytes(answer.body)
            except OSError as exc:
                raise SegserveError(f"cannot write {output}: {exc.strerror or exc}") from exc
            return output

        for item in run_batch(work, files_now, args.concurrency, progress=not args.quiet):
            if item.error is not None:
                failures.append((files_now[item.index], str(item.error)))
    elapsed = time.perf_counter() - started
    print(f"{len(files) - len(failures)} of {len(files)} images segmented with {args.model} "
          f"in {elapsed:.1f} s, results in {args.out_dir}")  # fmt: skip
    for source, error in sorted(failures):
        print(f"FAILED {source}: {error}", file=sys.stderr)
    return 1 if failures else 0


def cmd_models(args: argparse.Namespace) -> int:
    from segserve import SegserveError

    try:
        with make_client(args) as client:
            models = client.models()
    except SegserveError as exc:
        print(f"segserve models: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"models": models}, indent=2))
        return 0
    for model in models:
        spec = model["spec"]
        providers = ",".join(model["providers"]) or "-"
        print(f"{spec['name']:<20} {spec['version']:<8} {model['state']:<8} {providers:<24} "
              f"{len(spec['classes'])} classes: {', '.join(spec['classes'])}")  # fmt: skip
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when ready, 1 when not ready (503) or unreachable: usable in scripts."""
    from segserve import SegserveError, TransportError

    try:
        with make_client(args) as client:
            report = client.health()
    except TransportError as exc:
        print(f"unreachable: {exc}", file=sys.stderr)
        return 1
    except SegserveError as exc:
        print(f"not a segserve readiness answer: {exc}", file=sys.stderr)
        return 1
    print("ready" if report["ready"] else "not ready (503)")
    for model in report.get("models", []):
        reason = f" ({model['reason']})" if model.get("reason") else ""
        print(
            f"  {model['name']}: {model['state']} on {','.join(model['providers']) or '-'}{reason}"
        )
    return 0 if report["ready"] else 1


def add_client_commands(commands: Any) -> None:
    def with_url(parser: argparse.ArgumentParser, timeout: float) -> argparse.ArgumentParser:
        parser.add_argument("--url", default=DEFAULT_URL, help=f"service URL ({DEFAULT_URL})")
        key_help = f"sent as Authorization: Bearer (default: ${API_KEY_ENV})"
        parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=key_help)
        parser.add_argument("--timeout", type=float, default=timeout,
                            help=f"seconds to wait for each answer ({timeout:g})")  # fmt: skip
        retry_help = "retries after 503 (Retry-After), 502, 504 and broken connections (3)"
        parser.add_argument("--retries", type=int, default=3, help=retry_help)
        return parser

    segment = with_url(commands.add_parser("segment", help="segment image files or folders"), 300)
    segment.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_DIR")
    segment.add_argument("--model", required=True, help="model name (see `segserve models`)")
    segment.add_argument("--format", choices=sorted(SUFFIX), default="png")
    segment.add_argument("-o", "--out-dir", type=Path, default=Path("segmented"))
    segment.add_argument("--concurrency", type=int, default=4, help="requests at once (4)")
    segment.add_argument("--tiling", choices=["auto", "on", "off"], help="(server default: auto)")
    segment.add_argument("--tile-size", type=int, help="tile side (default: the model's)")
    segment.add_argument("--tta", action="store_true", help="average the 8 flips/rotations")
    segment.add_argument("--alpha", type=float, help="overlay opacity (0.5)")
    segment.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    job_help = "send every file as a job (files past one request's limits always are)"
    segment.add_argument("--job", action="store_true", help=job_help)
    segment.set_defaults(handler=cmd_segment)
    add_job_command(commands, with_url)
    models = with_url(commands.add_parser("models", help="list the served models"), 10)
    models.add_argument("--json", action="store_true", help="the raw /v1/models answer")
    models.set_defaults(handler=cmd_models)
    health = with_url(commands.add_parser("health", help="exit 0 if the service is ready"), 5)
    health.set_defaults(handler=cmd_health)
