"""The `segserve` command line; `segserve serve --help` lists the options."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.client import add_client_commands, request
from app.config import Device, Settings


def _serve(args: argparse.Namespace) -> int:
    from app.server import serve

    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "host": args.host, "port": args.port, "model_dir": args.model_dir,
            "device": args.device, "workers": args.workers,
        }.items()
        if value is not None
    }  # fmt: skip
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"segserve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when the local service answers 200 on /health/ready: the container HEALTHCHECK.

    The port comes from the same settings as `serve`, so a changed SEG_PORT needs no second edit
    (an exec-form HEALTHCHECK cannot expand environment variables).
    """
    settings = Settings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{args.port or settings.port}/health/ready"
    try:
        status, _ = request("GET", url, timeout=args.timeout)
    except OSError as exc:  # urllib's URLError included
        print(f"segserve healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segserve", description="Semantic segmentation service.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service (settings also from SEG_* env)")
    serve.add_argument("--host", help="interface to listen on (SEG_HOST)")
    serve.add_argument("--port", type=int, help="TCP port (SEG_PORT)")
    serve.add_argument("--model-dir", type=Path, help="folder of *.onnx models (SEG_MODEL_DIR)")
    serve.add_argument(
        "--device", choices=[d.value for d in Device], help="auto|cuda|cpu (SEG_DEVICE)"
    )
    serve.add_argument("--workers", type=int, help="inferences at once (SEG_WORKERS)")
    serve.set_defaults(handler=_serve)
    check = commands.add_parser("healthcheck", help="exit 0 if the local service is ready")
    check.add_argument("--port", type=int, help="TCP port (default: SEG_PORT)")
    check.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")
    check.set_defaults(handler=_healthcheck)
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Any = args.handler
    return int(handler(args))


if __name__ == "__main__":
    sys.exit(main())
