"""Label Studio's side of a prediction: which tag to answer for (the labeling config) and
BrushLabels results in its brush RLE.

The labeling config is untrusted XML: it is refused above `MAX_CONFIG_CHARS` or with a
document type declaration (no DTD means no entity expansion), then parsed by the standard
library. The first <BrushLabels> names `from_name` and `to_name`, its <Label value=...>
children are matched to the model's class names (case-insensitively), and the <Image>
it points to names the task's data key (value="$image").
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.imaging.masks.brush import brush_rle, brush_size_bound

# "<!" that does not open a comment: a DOCTYPE, ENTITY or CDATA section.
DECLARATION = re.compile(r"<!(?!--)")
MAX_CONFIG_CHARS = 256 * 1024
# JSON bytes of one RLE byte at most ("255,"), and of a result around its RLE.
JSON_BYTES_PER_RLE_BYTE = 4
RESULT_OVERHEAD_BYTES = 512


class LabelConfigError(ValueError):
    """A labeling config this backend cannot answer for (the message says why)."""


@dataclass(frozen=True)
class BrushTarget:
    from_name: str
    to_name: str
    data_key: str
    labels: dict[int, str]  # class index -> the Label value to answer with


def brush_target(label_config: str | None, classes: list[str]) -> BrushTarget:
    """The BrushLabels tag to answer for; without a config, Label Studio's usual names
    ("tag", "image", data key "image") and every class under its own name."""
    if not label_config:
        return BrushTarget("tag", "image", "image", dict(enumerate(classes)))
    if len(label_config) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"the labeling config is over {MAX_CONFIG_CHARS} characters")
    if DECLARATION.search(label_config):
        raise LabelConfigError("the labeling config may not declare a DOCTYPE or entities")
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as exc:
        raise LabelConfigError(f"the labeling config is not well-formed XML: {exc}") from None
    brush = next(root.iter("BrushLabels"), None)
    if brush is None:
        raise LabelConfigError(
            "the labeling config has no <BrushLabels>; this backend predicts brush masks"
        )
    from_name, to_name = brush.get("name", ""), brush.get("toName", "")
    if not from_name or not to_name:
        raise LabelConfigError("<BrushLabels> needs name and toName attributes")
    image = next((e for e in root.iter("Image") if e.get("name") == to_name), None)
    value = image.get("value", "$image") if image is not None else "$image"
    data_key = value[1:] if value.startswith("$") else "image"
    by_name = {name.lower(): index for index, name in enumerate(classes)}
    labels: dict[int, str] = {}
    for label in brush.iter("Label"):
        text = label.get("value", "")
        index = by_name.get(text.lower())
        if index is not None:
            labels.setdefault(index, text)
    if not labels:
        offered = [label.get("value", "") for label in brush.iter("Label")]
        raise LabelConfigError(
            f"no <Label> of <BrushLabels name={from_name!r}> names a class of this model "
            f"(labels {offered[:20]}, classes {classes})"
        )
    return BrushTarget(from_name, to_name, data_key, labels)


def results_size_bound(labels: np.ndarray, target: BrushTarget) -> int:
    """Upper estimate of the JSON bytes of `brush_results`."""
    total = 0
    for index in target.labels:
        mask = labels == index
        if mask.any():
            total += brush_size_bound(mask) * JSON_BYTES_PER_RLE_BYTE + RESULT_OVERHEAD_BYTES
    return total + RESULT_OVERHEAD_BYTES


def brush_results(
    labels: np.ndarray, confidence: np.ndarray | None, target: BrushTarget, prefix: str
) -> tuple[list[dict[str, Any]], list[bytes], float]:
    """One BrushLabels result per labelled class present (its RLE left out: `value.rle`
    is [] and the bytes come back in order beside), and the prediction's score (mean
    top-class probability; 1.0 without confidences)."""
    height, width = labels.shape
    results: list[dict[str, Any]] = []
    rles: list[bytes] = []
    for index, label in sorted(target.labels.items()):
        mask = labels == index
        if not mask.any():
            continue
        score = float(confidence[mask].mean()) / 255 if confidence is not None else 1.0
        results.append(
            {
                "id": f"{prefix}{index}",
                "from_name": target.from_name,
                "to_name": target.to_name,
                "type": "brushlabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {"format": "rle", "rle": [], "brushlabels": [label]},
                "score": round(score, 6),
                "readonly": False,
            }
        )
        rles.append(brush_rle(mask))
    overall = float(confidence.mean()) / 255 if confidence is not None else 1.0
    return results, rles, round(overall, 6)


_DIGITS = [str(n).encode() for n in range(256)]


def rle_json(rle: bytes, chunk: int = 1 << 20) -> bytes:
    """The RLE bytes as the text of a JSON array of integers, built chunk by chunk."""
    parts = [b",".join([_DIGITS[b] for b in rle[i : i + chunk]]) for i in range(0, len(rle), chunk)]
    return b"[" + b",".join(parts) + b"]"
