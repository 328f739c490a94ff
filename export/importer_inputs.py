"""What `segserve import` is asked (`ImportRequest`, the command's flags) and the files and
lists it reads: class names, palettes, mean/std.

Class names come as `a,b,c`, as a file with one name a line, or as a CSV file with a header
(a `name`, `class`, `label` or `class_name` column; `r`, `g`, `b` columns, as CamVid's
class_dict.csv has, give the palette too). A palette file has one colour a line, `r,g,b`,
`r g b` or `#rrggbb`, in class order (a header line is skipped). Without one, classes get
PASCAL VOC's colour map: deterministic, distinct, and the colours VOC-trained models'
users know.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from export.canonical import Layout, OutputKind

RGB = tuple[int, int, int]
_NAME_COLUMNS = ("name", "class", "class_name", "label", "classes")


class ImportProblem(ValueError):
    """The model cannot be imported as asked; the message names the flag to set."""


@dataclass
class ImportRequest:
    source: Path
    repo: Path
    name: str
    version: str | None = None
    classes: list[str] | None = None
    palette: list[RGB] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    layout: Layout | None = None
    input: str | None = None
    output: str | None = None
    output_kind: OutputKind | None = None
    size_multiple: int | None = None
    tile_size: int | None = None
    tile_overlap: int | None = None
    description: str = ""


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ImportProblem(f"{flag} takes comma-separated numbers, not {text!r}") from exc
    if len(values) not in (1, 3):
        raise ImportProblem(f"{flag} needs 1 or 3 values (one per channel), got {len(values)}")
    return values


def parse_classes(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def read_classes_file(path: Path) -> tuple[list[str], list[RGB] | None]:
    """Class names (and colours when the CSV has r, g, b columns) from `path`."""
    text = _read(path, "--classes-file")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ImportProblem(f"--classes-file {path} is empty")
    if "," not in lines[0]:
        return [line.strip() for line in lines], None
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    rows = list(reader)
    header = {str(h).strip().lower(): str(h) for h in reader.fieldnames or []}
    column = next((header[c] for c in _NAME_COLUMNS if c in header), None)
    if column is None:
        raise ImportProblem(
            f"--classes-file {path}: a CSV needs a header with one of the columns "
            f"{', '.join(_NAME_COLUMNS)} (got {', '.join(header) or 'none'})"
        )
    names = [(row[column] or "").strip() for row in rows]
    palette: list[RGB] | None = None
    if all(c in header for c in ("r", "g", "b")):
        palette = [
            _colour([row[header[c]] for c in ("r", "g", "b")], path, i + 2)
            for i, row in enumerate(rows)
        ]
    return names, palette


def read_palette_file(path: Path) -> list[RGB]:
    text = _read(path, "--palette-file")
    colours: list[RGB] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#") and re.fullmatch(r"#[0-9a-fA-F]{6}", line):
            colours.append((int(line[1:3], 16), int(line[3:5], 16), int(line[5:7], 16)))
            continue
        parts = [p for p in re.split(r"[,\s]+", line) if p]
        if number == 1 and not all(p.isdigit() for p in parts):
            continue  # a header
        colours.append(_colour(parts, path, number))
    return colours


def voc_palette(count: int) -> list[RGB]:
    """PASCAL VOC's colour map: class i's bits spread over the channels' high bits."""
    colours: list[RGB] = []
    for i in range(count):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


def _colour(parts: list[str], path: Path, line: int) -> RGB:
    try:
        values = [int(p.strip()) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise ImportProblem(f"{path}:{line}: a colour is three integers 0-255, r,g,b")
    return values[0], values[1], values[2]


def _read(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportProblem(f"{flag} {path}: cannot read it ({exc})") from exc
