"""The client side of the `segserve` command: `segment`, `models` and `health` over HTTP.

Standard library only (urllib), so the command works wherever the service is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.imaging.media_types import IMAGE_MEDIA_TYPES

DEFAULT_URL = "http://127.0.0.1:8000"
SUFFIX = {"png": ".png", "overlay": ".overlay.png", "json": ".json"}


class ServiceError(Exception):
    """A non-2xx answer, with the problem+json detail when there is one."""


def request(method: str, url: str, body: bytes | None = None, content_type: str = "",
            timeout: float = 300) -> tuple[int, bytes]:  # fmt: skip
    headers = {"content-type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def problem_text(status: int, body: bytes) -> str:
    try:
        problem = json.loads(body)
        return f"{status} {problem.get('title', '')}: {problem.get('detail', '')}".strip()
    except ValueError:
        return f"{status} {body[:200].decode(errors='replace')}"


def get_json(url: str) -> Any:
    status, body = request("GET", url, timeout=10)
    if status != 200:
        raise ServiceError(problem_text(status, body))
    return json.loads(body)


def image_files(paths: list[Path]) -> Iterator[Path]:
    """The given files, and the image files (by suffix) directly inside given folders."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_MEDIA_TYPES)
        else:
            yield path


@dataclass
class Outcome:
    source: Path
    output: Path | None = None
    error: str | None = None
    seconds: float = 0.0


def segment_one(source: Path, url: str, model: str, fmt: str, out_dir: Path) -> Outcome:
    started = time.perf_counter()
    try:
        data = source.read_bytes()
    except OSError as exc:
        return Outcome(source, error=f"cannot read: {exc.strerror}")
    content_type = IMAGE_MEDIA_TYPES.get(source.suffix.lower(), "application/octet-stream")
    endpoint = f"{url}/v1/models/{urllib.parse.quote(model, safe='')}/segment?format={fmt}"
    try:
        status, body = request("POST", endpoint, data, content_type)
    except (urllib.error.URLError, OSError) as exc:
        return Outcome(source, error=f"no answer from {url}: {exc}")
    if status != 200:
        return Outcome(source, error=problem_text(status, body))
    output = out_dir / f"{source.stem}{SUFFIX[fmt]}"
    output.write_bytes(body)
    return Outcome(source, output, seconds=time.perf_counter() - started)


def progress(done: int, total: int, failed: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    sys.stderr.write(f"\r[{bar}] {done}/{total} done, {failed} failed")
    sys.stderr.flush()


def cmd_segment(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        print("segserve segment: --concurrency must be at least 1", file=sys.stderr)
        return 2
    files = list(image_files(args.inputs))
    if not files:
        print("segserve segment: no image files given", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    url = args.url.rstrip("/")
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        futures = [
            pool.submit(segment_one, f, url, args.model, args.format, args.out_dir) for f in files
        ]
        for future in as_completed(futures):
            outcomes.append(future.result())
            progress(len(outcomes), len(files), sum(o.error is not None for o in outcomes))
    sys.stderr.write("\n")
    failed = [o for o in outcomes if o.error is not None]
    elapsed = time.perf_counter() - started
    print(f"{len(outcomes) - len(failed)} of {len(files)} images segmented with {args.model} "
          f"in {elapsed:.1f} s, results in {args.out_dir}")  # fmt: skip
    for outcome in sorted(failed, key=lambda o: str(o.source)):
        print(f"FAILED {outcome.source}: {outcome.error}", file=sys.stderr)
    return 1 if failed else 0


def cmd_models(args: argparse.Namespace) -> int:
    try:
        listing = get_json(f"{args.url.rstrip('/')}/v1/models")
    except (ServiceError, urllib.error.URLError, OSError) as exc:
        print(f"segserve models: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for model in listing["models"]:
        spec = model["spec"]
        providers = ",".join(model["providers"]) or "-"
        print(f"{spec['name']:<20} {spec['version']:<8} {model['state']:<8} {providers:<24} "
              f"{len(spec['classes'])} classes: {', '.join(spec['classes'])}")  # fmt: skip
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when ready, 1 when not ready (503) or unreachable: usable in scripts."""
    url = f"{args.url.rstrip('/')}/health/ready"
    try:
        status, body = request("GET", url, timeout=args.timeout)
    except (urllib.error.URLError, OSError) as exc:
        print(f"unreachable: {url}: {exc}", file=sys.stderr)
        return 1
    try:
        report = json.loads(body)
    except ValueError:
        print(f"{status}: not a segserve readiness answer", file=sys.stderr)
        return 1
    print("ready" if status == 200 else f"not ready ({status})")
    for model in report.get("models", []):
        reason = f" ({model['reason']})" if model.get("reason") else ""
        print(
            f"  {model['name']}: {model['state']} on {','.join(model['providers']) or '-'}{reason}"
        )
    return 0 if status == 200 else 1


def add_client_commands(commands: Any) -> None:
    def with_url(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--url", default=DEFAULT_URL, help=f"service URL ({DEFAULT_URL})")
        return parser

    segment = with_url(commands.add_parser("segment", help="segment image files or folders"))
    segment.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_DIR")
    segment.add_argument("--model", required=True, help="model name (see `segserve models`)")
    segment.add_argument("--format", choices=sorted(SUFFIX), default="png")
    segment.add_argument("-o", "--out-dir", type=Path, default=Path("segmented"))
    segment.add_argument("--concurrency", type=int, default=2, help="requests at once")
    segment.set_defaults(handler=cmd_segment)
    models = with_url(commands.add_parser("models", help="list the served models"))
    models.add_argument("--json", action="store_true", help="the raw /v1/models answer")
    models.set_defaults(handler=cmd_models)
    health = with_url(commands.add_parser("health", help="exit 0 if the service is ready"))
    health.add_argument("--timeout", type=float, default=5.0)
    health.set_defaults(handler=cmd_health)
