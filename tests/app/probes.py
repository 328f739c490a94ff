"""Probe models and an independent numpy reference of the service's pre-processing.

Each probe is a single convolution (tests/app/tiny_models.py `conv_graph`) with values
chosen so that no mistake can hide behind a symmetry: asymmetric, non-zero means and
stds far from 1, kernels that are not flip-invariant, four distinct palette colours.
Their logits can be read back exactly from the probabilities /v2 returns, so tests
compare the served numbers with `reference_*` below, written from the README's contract
(`(v / 255 - mean) / std`, mirror padding to the size multiple), not from app/ code.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.spec import ModelSpec
from tests.app.tiny_models import write_conv_model

# probe-rgb: logits = the three normalised channels and a constant 0, so
# log(p[c] / p[3]) is the normalised channel c.
RGB_MEAN, RGB_STD = [0.1, 0.3, 0.6], [0.2, 0.5, 0.25]
RGB_PALETTE = [(250, 10, 20), (30, 240, 50), (60, 70, 230), (128, 64, 32)]
RGB_WEIGHT = np.concatenate([np.eye(3), np.zeros((1, 3))]).reshape(4, 3, 1, 1)

# probe-box: logit 0 = the 3x3 mean of the normalised grey (zero padding), logit 1 = 0;
# size multiple 8, so the service mirror-pads what the border pixels see.
BOX_MEAN, BOX_STD = [0.25], [0.5]
BOX_WEIGHT = np.stack([np.full((1, 3, 3), 1 / 9), np.zeros((1, 3, 3))])

# probe-tta: logit 0 = an asymmetric 3x3 kernel over the normalised grey, logit 1 = 0:
# every flip and rotation of the input changes the answer.
TTA_MEAN, TTA_STD = [0.4], [0.3]
TTA_KERNEL = np.array([[0.0, 0.3, -0.2], [0.1, 0.9, 0.6], [-0.4, 0.0, 0.2]])
TTA_WEIGHT = np.stack([TTA_KERNEL[None], np.zeros((1, 3, 3))])


def probe_spec(name: str, channels: int, classes: int, **fields: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": name,
            "version": "1.0.0",
            "classes": [f"{name}-{i}" for i in range(classes)],
            "palette": fields.pop("palette", [(i, 255 - i, 7 * i) for i in range(classes)]),
            "input_channels": channels,
            **fields,
        }
    )


def write_probes(directory: Path) -> None:
    write_conv_model(
        directory,
        RGB_WEIGHT,
        probe_spec("probe-rgb", 3, 4, mean=RGB_MEAN, std=RGB_STD, palette=RGB_PALETTE),
    )
    write_conv_model(
        directory,
        BOX_WEIGHT,
        probe_spec("probe-box", 1, 2, mean=BOX_MEAN, std=BOX_STD, size_multiple=8),
    )
    write_conv_model(
        directory, TTA_WEIGHT, probe_spec("probe-tta", 1, 2, mean=TTA_MEAN, std=TTA_STD)
    )


# --- the independent reference -------------------------------------------------------


def reference_normalised(pixels: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 -> float64 (C, H, W) `(v / 255 - mean) / std`."""
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    m = np.asarray(mean)[:, None, None]
    s = np.asarray(std)[:, None, None]
    return (chw / 255.0 - m) / s


def reference_mirror_pad(chw: np.ndarray, multiple: int) -> np.ndarray:
    """Pad bottom/right to `multiple` by mirroring without repeating the edge pixel:
    row h + i is row h - 2 - i (written as index lists, not with np.pad)."""

    def index(n: int) -> list[int]:
        total = -(-n // multiple) * multiple
        return [i if i < n else 2 * (n - 1) - i for i in range(total)]

    return chw[:, index(chw.shape[1])][:, :, index(chw.shape[2])]


def reference_conv(chw: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Cross-correlation with zero 'same' padding: (C, H, W) -> (K, H, W)."""
    k = weight.shape[2]
    r = k // 2
    c, h, w = chw.shape
    padded = np.zeros((c, h + 2 * r, w + 2 * r))
    padded[:, r : r + h, r : r + w] = chw
    out = np.zeros((weight.shape[0], h, w))
    for dy in range(k):
        for dx in range(k):
            window = padded[:, dy : dy + h, dx : dx + w]
            out += np.einsum("kc,chw->khw", weight[:, :, dy, dx], window)
    return out


def reference_softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0))
    return np.asarray(e / e.sum(axis=0))


def reference_tta(chw: np.ndarray, model: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Average of `model`'s softmax over the 8 flips and 90-degree turns, each mapped back."""
    views = []
    for flip in (False, True):
        source = chw[:, :, ::-1] if flip else chw
        for turns in range(4):
            turned = np.rot90(source, turns, axes=(1, 2))
            back = np.rot90(reference_softmax(model(turned)), -turns, axes=(1, 2))
            views.append(back[:, :, ::-1] if flip else back)
    return np.asarray(np.mean(views, axis=0))


# --- reading numbers back from the service ------------------------------------------------


def v2_probabilities(client: Any, model: str, image_file: bytes) -> np.ndarray:
    """(K, H, W) float32 probabilities for an encoded image, via /v2 binary tensors."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 4 + len(image_file)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + struct.pack("<I", len(image_file)) + image_file
    response = client.post(
        f"/v2/models/{model}/infer",
        content=body,
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert response.status_code == 200, response.text
    split = int(response.headers["Inference-Header-Content-Length"])
    head = json.loads(response.content[:split])
    (output,) = head["outputs"]
    assert output["datatype"] == "FP32"
    values = np.frombuffer(response.content[split:], np.float32).reshape(output["shape"])
    return np.asarray(values[0])


def logits_against_last(probabilities: np.ndarray) -> np.ndarray:
    """log(p[c] / p[-1]) for every class but the last: the logits when the last is 0."""
    p = probabilities.astype(np.float64)
    return np.asarray(np.log(p[:-1] / p[-1]))
