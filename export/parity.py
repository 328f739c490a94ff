"""ONNX versus torch on real images: logits and argmax must agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from models.predict import normalise, predict_logits

MAX_ABS_LOGIT_DIFF = 1e-4
MIN_ARGMAX_AGREEMENT = 0.9999


@dataclass
class ParityReport:
    images: int
    max_abs_logit_diff: float
    argmax_agreement: float
    labels_output_agreement: float

    @property
    def ok(self) -> bool:
        return (
            self.max_abs_logit_diff <= MAX_ABS_LOGIT_DIFF
            and self.argmax_agreement >= MIN_ARGMAX_AGREEMENT
            and self.labels_output_agreement >= MIN_ARGMAX_AGREEMENT
        )


def check_parity(
    model: nn.Module,
    onnx_path: Path,
    images: list[np.ndarray],
    mean: list[float],
    std: list[float],
    multiple: int,
) -> ParityReport:
    """Run both on each uint8 image (padded to `multiple`) and compare."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = model.eval()
    worst, agree, labels_agree, total = 0.0, 0, 0, 0
    for image in images:
        x = normalise(image, mean, std)
        h, w = x.shape[-2:]
        ph, pw = (-h) % multiple, (-w) % multiple
        padded = nn.functional.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
        logits, labels = session.run(["logits", "labels"], {"image": padded.numpy()})
        with torch.no_grad():
            ref = predict_logits(model, x, multiple).numpy()
        ours = logits[..., :h, :w]
        worst = max(worst, float(np.abs(ours - ref).max()))
        agree += int((ours.argmax(1) == ref.argmax(1)).sum())
        labels_agree += int((labels[..., :h, :w] == ours.argmax(1)).sum())
        total += h * w
    return ParityReport(len(images), worst, agree / total, labels_agree / total)
