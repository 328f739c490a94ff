"""The model directory (SEG_MODEL_DIR) as a list of model files, read without loading them.

Two layouts, side by side:
- flat files: `NAME*.onnx` at the top (`unet-isbi.onnx`, `unet-isbi.int8.onnx`); name,
  version and precision come from the spec embedded in each file;
- Triton's repository layout: `NAME/VERSION/model.onnx` (and `model.int8.onnx`,
  `model.fp16.onnx`, `model.fp32.onnx` beside it). The folders are authoritative: the
  served spec takes its name and version from them, whatever the embedded spec says
  (copying version 1's file into a folder `2` serves it as version 2, as in Triton).

Files (and folders) whose name starts with a dot are skipped: copy a new version in under
a hidden name and rename it when complete. Files of the same name and version that differ
by precision are variants of one model; `choose_variant` picks the one that serves.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from app.inference.loading import public_reason
from app.spec import ModelSpec

PRECISIONS = ("fp32", "fp16", "int8")
REPOSITORY_FILE = re.compile(r"^model(?:\.(fp32|fp16|int8))?\.onnx$")
METADATA_FIELD = 14  # ModelProto.metadata_props


@dataclass(frozen=True)
class Fingerprint:
    """What tells a changed file from the same one: replaced, rewritten or touched."""

    size: int
    mtime_ns: int
    inode: int


@dataclass
class ModelFile:
    """One `.onnx` file of the directory, with its spec when it could be read."""

    file: str  # relative to the model directory, with / separators
    path: Path
    fingerprint: Fingerprint | None
    spec: ModelSpec | None = None
    reason: str | None = None  # why it cannot serve (then spec is None)
    folder_name: str | None = None  # repository layout: NAME and VERSION folders
    folder_version: str | None = None

    @property
    def name(self) -> str:
        if self.spec is not None:
            return self.spec.name
        return self.folder_name or Path(self.file).name.split(".")[0]


@dataclass
class ModelGroup:
    """The variants of one model version, by precision."""

    name: str
    version: str
    variants: dict[str, ModelFile] = field(default_factory=dict)


@dataclass
class Scan:
    groups: list[ModelGroup]  # by name, then version (highest last)
    broken: list[ModelFile]  # unreadable files and duplicates, each with its reason
    problem: str | None = None  # the directory as a whole cannot serve


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Orders versions numerically dot by dot: 2 < 10, 1.2 < 1.10; a non-numeric part
    sorts after the numeric ones and by its text."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in version.split("."))


def not_a_model_file(path: Path) -> str | None:
    """Why `path` cannot be a model without opening it, or None: only regular files (or
    links to them) are read; opening a FIFO blocks until someone writes to it."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        return "not a regular file (a directory, FIFO, socket or device); models are files"
    return None


def fingerprint(path: Path) -> Fingerprint | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return Fingerprint(st.st_size, st.st_mtime_ns, st.st_ino)


def _varint(data: mmap.mmap | bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("not an ONNX model (truncated protobuf)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: mmap.mmap | bytes, start: int, end: int) -> Iterable[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of a protobuf message."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise ValueError("not an ONNX model (truncated protobuf)")
            yield number, pos, pos + length
            pos += length
        else:
            raise ValueError("not an ONNX model (not a protobuf message)")
        if number == 0 or pos > end:
            raise ValueError("not an ONNX model (not a protobuf message)")


def read_metadata(path: Path) -> dict[str, str]:
    """An ONNX file's `metadata_props`, read without loading the graph: the top-level
    fields of the ModelProto are walked, and skipped unless they are metadata entries."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            raise ValueError("empty file")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            props: dict[str, str] = {}
            for number, start, end in _fields(data, 0, len(data)):
                if number != METADATA_FIELD:
                    continue
                entry: dict[int, str] = {}
                for inner, s, e in _fields(data, start, end):
                    try:
                        entry[inner] = bytes(data[s:e]).decode()
                    except UnicodeDecodeError as exc:
                        raise ValueError("metadata is not UTF-8 text") from exc
                props[entry.get(1, "")] = entry.get(2, "")
            return props


def served_spec(spec: ModelSpec, folder_name: str | None, folder_version: str | None) -> ModelSpec:
    """The spec as served: the repository folders' name and version win over the file's."""
    if folder_name is None:
        return spec
    document = spec.model_dump()
    document.update(name=folder_name, version=folder_version)
    return ModelSpec.model_validate(document)


def _read(model: ModelFile) -> None:
    problem = not_a_model_file(model.path)  # never opened: a FIFO would block for good
    if problem is None:
        try:
            spec = ModelSpec.from_metadata(read_metadata(model.path))
            model.spec = served_spec(spec, model.folder_name, model.folder_version)
        except (OSError, ValueError) as exc:
            problem = str(exc)
    if problem is not None:
        model.reason = public_reason(problem, model.path)
        return
    suffix = REPOSITORY_FILE.match(model.path.name) if model.folder_name else None
    named = suffix.group(1) if suffix else None
    if named is not None and model.spec is not None and model.spec.precision != named:
        model.reason = (
            f"the file name says {named} but its metadata says precision {model.spec.precision!r}"
        )
        model.spec = None


def _files(directory: Path) -> list[ModelFile]:
    found = [
        ModelFile(p.name, p, fingerprint(p))
        for p in sorted(directory.glob("*.onnx"))
        if not p.name.startswith(".")
    ]
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        if folder.name.startswith(".") or folder.name.endswith(".onnx"):
            continue
        for version in sorted(p for p in folder.iterdir() if p.is_dir()):
            if version.name.startswith("."):
                continue
            for path in sorted(version.iterdir()):
                if REPOSITORY_FILE.match(path.name):
                    relative = f"{folder.name}/{version.name}/{path.name}"
                    found.append(
                        ModelFile(
                            relative, path, fingerprint(path), None, None, folder.name, version.name
                        )
                    )
    return found


def scan(directory: Path) -> Scan:
    """Every model file of `directory`, read and grouped; nothing is loaded."""
    if not directory.is_dir():
        return Scan([], [], "the model directory does not exist (SEG_MODEL_DIR)")
    try:
        files = _files(directory)
    except OSError as exc:
        return Scan([], [], f"the model directory cannot be read: {exc.strerror or exc}")
    groups: dict[tuple[str, str], ModelGroup] = {}
    broken: list[ModelFile] = []
    for model in files:
        _read(model)
        if model.spec is None:
            broken.append(model)
            continue
        spec = model.spec
        group = groups.setdefault((spec.name, spec.version), ModelGroup(spec.name, spec.version))
        if spec.precision in group.variants:
            model.reason = (
                f"another file already serves the model name {spec.name!r} version "
                f"{spec.version!r} in {spec.precision} ({group.variants[spec.precision].file})"
            )
            broken.append(model)
            continue
        group.variants[spec.precision] = model
    ordered = sorted(groups.values(), key=lambda g: (g.name, version_key(g.version)))
    problem = None
    if not files:
        problem = "no *.onnx models in the model directory (SEG_MODEL_DIR)"
    return Scan(ordered, broken, problem)


def choose_variant(
    variants: dict[str, ModelFile], wanted: str, on_cuda: bool
) -> tuple[ModelFile, str | None]:
    """The variant that serves, and a note when it is not the one asked for.

    `auto`: int8 on the CPU provider, fp16 on CUDA, when present; else fp32. An explicit
    precision that a model lacks falls back to fp32 (or the only variant there is)."""
    order = ["fp16" if on_cuda else "int8", "fp32"] if wanted == "auto" else [wanted, "fp32"]
    order += [p for p in PRECISIONS if p not in order]
    chosen = next(variants[p] for p in order if p in variants)
    precision = chosen.spec.precision if chosen.spec else "fp32"
    if wanted not in ("auto", precision):
        return chosen, f"SEG_PRECISION={wanted}: no {wanted} variant; serving {precision}"
    return chosen, None
