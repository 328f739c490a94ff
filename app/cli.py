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


def _import(args: argparse.Namespace) -> int:
    """`segserve import`: probe, wrap and write an ONNX model into a model repository."""
    try:
        from export.importer import import_model
        from export.importer_inputs import (
            ImportProblem,
            ImportRequest,
            parse_classes,
            parse_floats,
            read_classes_file,
            read_palette_file,
        )
    except ModuleNotFoundError as exc:
        if exc.name != "onnx":
            raise
        print("segserve import needs onnx: pip install 'segserve[import]'", file=sys.stderr)
        return 2
    try:
        classes, palette = None, None
        if args.classes is not None and args.classes_file is not None:
            raise ImportProblem("give --classes or --classes-file, not both")
        if args.classes is not None:
            classes = parse_classes(args.classes)
        elif args.classes_file is not None:
            classes, palette = read_classes_file(args.classes_file)
        if args.palette_file is not None:
            palette = read_palette_file(args.palette_file)
        imported = import_model(
            ImportRequest(
                source=args.model, repo=args.repo, name=args.name, version=args.version,
                classes=classes, palette=palette,
                mean=parse_floats(args.mean, "--mean") if args.mean else None,
                std=parse_floats(args.std, "--std") if args.std else None,
                layout=args.layout, input=args.input, output=args.output,
                output_kind=args.output_kind, size_multiple=args.size_multiple,
                tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                description=args.description or "",
            )
        )  # fmt: skip
    except ImportProblem as exc:
        print(f"segserve import: {exc}", file=sys.stderr)
        return 2
    for note in imported.probe.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {imported.path}", file=sys.stderr)
    print(imported.spec.model_dump_json(indent=2))
    return 0


def _add_import_command(commands: Any) -> None:
    cmd = commands.add_parser(
        "import",
        help="wrap any segmentation ONNX file into REPO/NAME/VERSION/model.onnx",
        description="Probe a segmentation ONNX model, wrap it into segserve's canonical graph "
        "(uint8 pixels in; logits and labels out at input size, labels only for a model that "
        "answers labels) and write it with its spec "
        "into a model repository (SEG_MODEL_DIR). Prints the spec.",
    )
    cmd.add_argument("model", type=Path, help="the ONNX file")
    cmd.add_argument("--repo", type=Path, required=True, help="model repository folder")
    cmd.add_argument("--name", required=True, help="model name (lower case, digits, . _ -)")
    cmd.add_argument("--version", help="version folder, a positive integer (default: next)")
    cmd.add_argument("--classes", help="class names, comma-separated, in score order")
    cmd.add_argument(
        "--classes-file", type=Path, help="one class name a line, or a CSV with a header"
    )
    cmd.add_argument("--palette-file", type=Path, help="one colour a line: r,g,b or #rrggbb")
    cmd.add_argument("--mean", help="per-channel mean for (v/255 - mean)/std (default ImageNet)")
    cmd.add_argument("--std", help="per-channel std for (v/255 - mean)/std (default ImageNet)")
    cmd.add_argument("--layout", choices=["NCHW", "NHWC"], help="the image input's layout")
    cmd.add_argument("--input", help="the image input's name (default: the only one)")
    cmd.add_argument(
        "--output", help="the scores (or labels) output's name (when there are several)"
    )
    cmd.add_argument(
        "--output-kind",
        choices=["logits", "probabilities", "labels"],
        help="what the output holds (default: probed); labels: class indices (the argmax "
        "inside), served as class maps without probabilities, confidence or TTA",
    )
    cmd.add_argument("--size-multiple", type=int, help="input sides must be multiples of this")
    cmd.add_argument("--tile-size", type=int, help="default tile side for large images")
    cmd.add_argument("--tile-overlap", type=int, help="default tile overlap")
    cmd.add_argument("--description", help="one line about the model")
    cmd.set_defaults(handler=_import)


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
    _add_import_command(commands)
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Any = args.handler
    return int(handler(args))


if __name__ == "__main__":
    sys.exit(main())
