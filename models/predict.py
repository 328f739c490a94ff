"""Whole-image prediction in torch, padded to the model's size multiple like the service does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.metrics import adapted_rand_error, confusion_matrix, summarize


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (H, W) or (H, W, C) to float32 (1, C, H, W)."""
    x = image.astype(np.float32) / 255.0
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    return torch.from_numpy(np.ascontiguousarray((x - m) / s))[None]


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Logits (1, K, H, W) for x (1, C, H, W); mirror-pads to `multiple`, crops back.
    Runs on the model's device (of its first parameter, if any) and returns the logits
    there."""
    weight = next(model.parameters(), None)
    if weight is not None:
        x = x.to(weight.device)
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
    return model(x)[..., :h, :w]


class Validation(NamedTuple):
    metrics: dict[str, float]
    predictions: np.ndarray  # (N, H, W) uint8 class maps of the images as given
    confusion: np.ndarray  # (K, K) over every view scored


@torch.no_grad()
def validate(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: list[str],
    multiple: int,
    ignore_index: int | None = None,
    rand_error: bool = False,
    views: int = 1,
    progress: str | None = None,
) -> Validation:
    """Metrics, class maps and confusion matrix over a stack of images (`progress`: the
    label of a progress bar over the images, none without it).

    `views` > 1 scores each image also under its first flips and rotations (up to the 8
    of the dihedral group), one view at a time, and averages: the metrics of 4 ISBI slices
    swing with single merged cells, the average over views much less. The returned maps
    are those of the images as given.
    """
    was_training = model.training
    model.eval()
    k = len(class_names)
    cm = np.zeros((k, k), np.int64)
    preds, rand = [], []
    pairs = list(zip(images, labels, strict=True))
    for image, label in tqdm(pairs, desc=progress, disable=progress is None, leave=False):
        for view in range(views):
            seen, truth = _dihedral(image, view), _dihedral(label, view)
            x = normalise(seen, mean, std)
            pred = predict_logits(model, x, multiple).argmax(1)[0].cpu().numpy()
            cm += confusion_matrix(pred, truth, k, ignore_index)
            if rand_error:
                rand.append(adapted_rand_error(pred, truth))
            if view == 0:
                preds.append(pred.astype(np.uint8))
    model.train(was_training)
    metrics = summarize(cm, class_names)
    if rand_error:
        metrics["rand_error"] = float(np.mean(rand))
        metrics["rand_plus_pixel_error"] = metrics["rand_error"] + metrics["pixel_error"]
    return Validation(metrics, np.stack(preds), cm)


def _dihedral(a: np.ndarray, view: int) -> np.ndarray:
    """View 0-7 of an (H, W[, C]) array: rotation by 90 * (view // 2) degrees, then a
    left-right flip for odd views."""
    out = np.rot90(a, view // 2)
    return np.ascontiguousarray(out[:, ::-1] if view % 2 else out)
