"""Re-ship a float-input model as a uint8-input one: `python -m export uint8-input FILE...`.

The graph is wrapped by export/canonical.py: raw uint8 pixels in, the normalisation
`(v / 255 - mean) / std` inside (one Mul and one Add), float32 `logits` and uint8 `labels`
out. The service then feeds the mirror-padded pixels as they are decoded: a quarter of
the bytes, and no float arithmetic on the request thread. The file is rewritten in place
only when the wrapped graph's class maps agree with the float graph's on the validation
images (>= `MIN_AGREEMENT`; the folded normalisation moves near-ties only).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx

from export.accuracy import class_maps, graph_input, read_spec, session, validation_split
from export.canonical import canonicalise
from export.metadata import git_commit, write_metadata
from models.datasets import DEFAULT_DATA_ROOT

MIN_AGREEMENT = 0.9999


@dataclass
class WrapReport:
    images: int
    max_abs_logit_diff: float
    agreement: float
    pixels: int

    @property
    def ok(self) -> bool:
        return self.agreement >= MIN_AGREEMENT


def wrap(path: Path, out: Path) -> None:
    """Write the uint8-input graph of float-input `path` to `out`, with its spec."""
    spec = read_spec(path)
    if spec.input_dtype != "float32":
        raise ValueError(f"{path} already takes {spec.input_dtype} input")
    if spec.logits_output is None:
        raise ValueError(f"{path} answers labels only; this wraps a graph with scores")
    wrapped = canonicalise(
        onnx.load(str(path)),
        input_name=spec.input_name,
        scores_output=spec.logits_output,
        mean=spec.mean,
        std=spec.std,
    )
    onnx.save(wrapped, str(out))
    new = spec.model_copy(
        update={
            "schema_version": 2,
            "input_dtype": "uint8",
            "input_name": "image",
            "logits_output": "logits",
            "labels_output": "labels",
            "git_commit": git_commit(),
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    write_metadata(out, new)


def compare(original: Path, wrapped: Path, images: np.ndarray) -> WrapReport:
    a_spec, b_spec = read_spec(original), read_spec(wrapped)
    a_run, b_run = session(original), session(wrapped)
    worst = 0.0
    for image in images:
        (a,) = a_run.run([a_spec.logits_output], {a_spec.input_name: graph_input(a_spec, image)})
        (b,) = b_run.run([b_spec.logits_output], {b_spec.input_name: graph_input(b_spec, image)})
        worst = max(worst, float(np.abs(a - b).max()))
    same = class_maps(original, images) == class_maps(wrapped, images)
    return WrapReport(len(images), worst, float(same.mean()), same.size)


def update_card(card: Path, report: WrapReport, what: str) -> None:
    """Say in the card's Input line that the graph takes uint8 pixels, with the check."""
    text = card.read_text()
    spec_line = re.search(r"- \*\*Input\*\*:.*?(?=\n- \*\*)", text, flags=re.S)
    if spec_line is None:
        return
    mean_std = re.search(r"mean \[.*?\], std \[.*?\]", spec_line.group(0))
    multiple = re.search(r"multiple of (\d+)", spec_line.group(0))
    differ = round((1 - report.agreement) * report.pixels)
    new = textwrap.fill(
        "- **Input**: raw uint8 pixels, NCHW; the graph computes `(v / 255 - mean) / std` "
        f"itself ({mean_std.group(0) if mean_std else ''}); height and width padded (mirror) "
        f"to a multiple of {multiple.group(1) if multiple else '?'} by the service. "
        "Outputs float32 `logits` and uint8 `labels`. Wrapped by export/canonical.py around "
        f"the float-input export: on {what} the class maps of the two graphs differ on "
        f"{differ} of {report.pixels:,} pixels (max |logit difference| "
        f"{report.max_abs_logit_diff:.1e})",
        width=92,
        subsequent_indent="  ",
    )
    card.write_text(text[: spec_line.start()] + new + text[spec_line.end() :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export uint8-input", description=__doc__)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--val-images", type=int, default=None)
    args = parser.parse_args(argv)
    failed = False
    for path in args.models:
        split = validation_split(read_spec(path).name, args.data_root, args.val_images)
        with tempfile.TemporaryDirectory(prefix="segserve-uint8-") as scratch:
            candidate = Path(scratch) / path.name
            wrap(path, candidate)
            report = compare(path, candidate, split.images)
            print(f"{path.name}: {report}", flush=True)
            if not report.ok:
                print(f"{path.name}: the wrapped graph disagrees; not replaced", file=sys.stderr)
                failed = True
                continue
            shutil.move(candidate, path)
        if path.with_suffix(".md").is_file():
            update_card(path.with_suffix(".md"), report, split.description)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
