"""COCO run-length encoding of class maps, as pycocotools writes it (no pycocotools here).

A binary mask is read column-major (Fortran order, down each column then across), and
its runs alternate 0s and 1s starting with 0s (a first run of length 0 when the mask starts
with a 1). The compressed `counts` string is pycocotools' `rleToString`: each run, from the
fourth on, minus the run two before it, as little-endian groups of 5 bits with a
continuation bit (0x20), sign-extended by the group's 0x10 bit, plus 48 (ASCII '0').
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

# A run or a difference of two runs fits 2**34 (SEG_MAX_PIXELS is far below): 7 groups.
MAX_CHARS_PER_RUN = 7
# JSON around one class's entry, without its counts (category, bbox, area, keys).
ENTRY_OVERHEAD_BYTES = 320


def column_major(labels: np.ndarray) -> np.ndarray:
    """The class map flattened column by column (a copy)."""
    return np.ascontiguousarray(labels.T).ravel()


def mask_runs(flat_mask: np.ndarray) -> np.ndarray:
    """Alternating 0/1 run lengths of a flattened boolean mask, starting with 0s."""
    size = flat_mask.size
    changes = np.flatnonzero(flat_mask[1:] != flat_mask[:-1]) + 1
    bounds = np.concatenate(([0], changes, [size]))
    runs = np.diff(bounds)
    if size and flat_mask[0]:
        runs = np.concatenate(([0], runs))
    return runs.astype(np.int64)


def run_count_bound(flat: np.ndarray, classes: int) -> int:
    """An upper bound of the runs of every class mask together: each change of class in the
    column-major map starts a run in two masks, and each mask has at most 2 more."""
    changes = int(np.count_nonzero(flat[1:] != flat[:-1]))
    return 2 * changes + 2 * classes


def counts_string(runs: np.ndarray) -> str:
    """pycocotools' compressed string for run lengths (vectorised `rleToString`)."""
    values = runs.astype(np.int64)
    if values.size > 3:
        values[3:] = runs[3:] - runs[1:-2]
    n = values.size
    chars = np.zeros((n, MAX_CHARS_PER_RUN), np.uint8)
    keep = np.zeros((n, MAX_CHARS_PER_RUN), bool)
    active = np.ones(n, bool)
    for k in range(MAX_CHARS_PER_RUN):
        group = values & 0x1F
        values = values >> 5  # arithmetic: negative values stay negative
        more = np.where(group & 0x10, values != -1, values != 0)
        keep[:, k] = active
        chars[:, k] = group + 0x20 * (more & active) + 48
        active &= more
    if active.any():
        raise ValueError("a run too long for the COCO string encoding")
    return chars[keep].tobytes().decode("ascii")


def coco_entries(labels: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """One COCO annotation per class present: compressed RLE segmentation, area, bbox."""
    height, width = labels.shape
    flat = column_major(labels)
    present = np.flatnonzero(np.bincount(flat, minlength=len(classes)))
    entries: list[dict[str, Any]] = []
    for index in present.tolist():
        mask = flat == index
        runs = mask_runs(mask)
        columns = np.flatnonzero(mask.reshape(width, height).any(axis=1))
        rows = np.flatnonzero((labels == index).any(axis=1))
        x, y = int(columns[0]), int(rows[0])
        entries.append(
            {
                "id": len(entries) + 1,
                "image_id": 1,
                "category_id": index,
                "category_name": classes[index] if index < len(classes) else str(index),
                "segmentation": {"size": [height, width], "counts": counts_string(runs)},
                "area": int(np.count_nonzero(mask)),
                "bbox": [x, y, int(columns[-1]) - x + 1, int(rows[-1]) - y + 1],
                "iscrowd": 0,
            }
        )
    return entries


def coco_size_bound(labels: np.ndarray, classes: Sequence[str]) -> int:
    """Upper estimate of the COCO answer's bytes, found without encoding: the categories
    list and each present class's annotation write its name (as a JSON string)."""
    runs = run_count_bound(column_major(labels), len(classes))
    names = sum(len(json.dumps(name)) for name in classes)
    return runs * MAX_CHARS_PER_RUN + len(classes) * ENTRY_OVERHEAD_BYTES + 2 * names + 1024


def coco_document(labels: np.ndarray, classes: list[str], header: dict[str, Any]) -> bytes:
    """A COCO dataset of one image (id 1) with an annotation per class present; category
    ids are the class indices (the palette PNG's pixel values). `header` adds members
    (model, size). pycocotools loads it as `COCO()` with `dataset` set."""
    height, width = labels.shape
    document = {
        **header,
        "images": [{"id": 1, "width": width, "height": height}],
        "categories": [{"id": i, "name": name} for i, name in enumerate(classes)],
        "annotations": coco_entries(labels, classes),
    }
    return json.dumps(document, separators=(",", ":")).encode()
