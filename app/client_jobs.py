"""The `segserve` command's jobs: `segserve segment` sends images above the synchronous
limits as jobs (or all of them with --job) and waits with a progress bar; `segserve job
wait ID` picks up waiting after an interrupt; `job status|cancel|list`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from segserve import Client

# The service's defaults for one synchronous request (SEG_MAX_UPLOAD_BYTES, SEG_MAX_PIXELS).
SYNC_MAX_BYTES = 50 * 1024 * 1024
SYNC_MAX_PIXELS = 8192 * 8192
JOB_FORMATS = ("png", "json", "tiff")
JOB_SUFFIX = {"png": ".png", "json": ".json", "tiff": ".tif"}


def needs_job(path: Path) -> bool:
    """Whether a file is past what one request takes (by size, or by the pixels its header
    declares; Pillow reads headers lazily, BigTIFF or odd headers count by size alone)."""
    if path.stat().st_size > SYNC_MAX_BYTES:
        return True
    try:
        with Image.open(path) as opened:
            width, height = opened.size
    except Exception:  # not readable here: let the service judge it synchronously
        return False
    return width * height > SYNC_MAX_PIXELS


def run_job(
    client: Client,
    source: Path,
    model: str,
    out: Path,
    fmt: str,
    params: dict[str, Any],
    quiet: bool,
) -> Path:
    """Submit, wait with a progress bar, write the result; the path written."""
    job = client.jobs.submit(source, model, **params)
    print(f"{source}: job {job['id']} ({job['width']} x {job['height']} px)", file=sys.stderr)
    return wait_and_fetch(client, job["id"], out, fmt, quiet)


def wait_and_fetch(client: Client, job_id: str, out: Path, fmt: str, quiet: bool) -> Path:
    from segserve import InvalidParameter

    try:
        client.jobs.wait(job_id, progress=not quiet)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: job {job_id} goes on; wait again with\n"
            f"  segserve job wait {job_id} -o {out}",
            file=sys.stderr,
        )
        raise
    try:
        return Path(client.jobs.result(job_id, fmt, to=out))
    except InvalidParameter:
        if fmt != "png":
            raise
        # Maps above the service's PNG limit are kept as tiled BigTIFF only.
        tiff = out.with_suffix(".tif")
        print(f"job {job_id}: the map is kept as TIFF; writing {tiff}", file=sys.stderr)
        return Path(client.jobs.result(job_id, "tiff", to=tiff))


def cmd_job(args: argparse.Namespace) -> int:
    from app.client import make_client
    from segserve import JobFailed, SegserveError

    with make_client(args) as client:
        try:
            if args.action == "wait":
                out = args.out or Path(f"{args.id}{JOB_SUFFIX[args.format]}")
                written = wait_and_fetch(client, args.id, out, args.format, args.quiet)
                print(f"job {args.id}: result in {written}")
            elif args.action == "status":
                print(json.dumps(client.jobs.status(args.id), indent=1))
            elif args.action == "cancel":
                client.jobs.cancel(args.id)
                print(f"job {args.id}: cancelled (or deleted, if it had finished)")
            else:
                for job in client.jobs.list():
                    print(
                        f"{job['id']}  {job['state']:9s}  {job['model']['name']}  "
                        f"{job['tiles_done']}/{job['tiles_total']} tiles"
                    )
        except (JobFailed, SegserveError) as exc:
            print(f"segserve job: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    return 0


def add_job_command(commands: Any, with_url: Any) -> None:
    job = with_url(commands.add_parser("job", help="follow, fetch, cancel or list jobs"), 60)
    job.add_argument("action", choices=["wait", "status", "cancel", "list"])
    job.add_argument("id", nargs="?", help="the job's id (all but list)")
    job.add_argument("-o", "--out", type=Path, help="result file for wait (<id>.png)")
    job.add_argument("--format", choices=JOB_FORMATS, default="png", help="result format (png)")
    job.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    job.set_defaults(handler=cmd_job)
