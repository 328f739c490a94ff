"""Segmentation metrics on integer class maps (numpy): one module, tested on hand-made cases."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """(K, K) counts; rows are the true class, columns the predicted one."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    idx = target[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per class; NaN for a class absent from both maps."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def mean_iou(cm: np.ndarray) -> float:
    return float(np.nanmean(iou_per_class(cm)))


def global_accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def pixel_error(cm: np.ndarray) -> float:
    return 1.0 - global_accuracy(cm)


def adapted_rand_error(pred: np.ndarray, target: np.ndarray, cell: int = 1) -> float:
    """ISBI 2012's adapted Rand error on the cell regions, 1 - F-score of the Rand index.

    Segments are the 4-connected cell regions of each map. Pixels that are membrane in
    the ground truth are ignored; predicted-membrane pixels inside true cells count as
    singletons, so thick or spurious membranes cost recall and gaps in membranes
    (merged cells) cost precision.
    """
    true_seg, _ = ndimage.label(np.asarray(target) == cell)
    pred_seg, n_pred = ndimage.label(np.asarray(pred) == cell)
    mask = true_seg > 0
    a = true_seg[mask].astype(np.int64)
    b = pred_seg[mask].astype(np.int64)
    n = a.size
    if n == 0:
        return 0.0
    singles = b == 0
    b[singles] = n_pred + 1 + np.arange(int(singles.sum()))
    _, joint = np.unique(a * (int(b.max()) + 1) + b, return_counts=True)
    _, count_a = np.unique(a, return_counts=True)
    _, count_b = np.unique(b, return_counts=True)
    sum_ab = float((joint.astype(np.float64) ** 2).sum() - n)
    sum_a = float((count_a.astype(np.float64) ** 2).sum() - n)
    sum_b = float((count_b.astype(np.float64) ** 2).sum() - n)
    if sum_a == 0 or sum_b == 0:
        return 0.0 if sum_a == sum_b else 1.0
    precision, recall = sum_ab / sum_b, sum_ab / sum_a
    if precision + recall == 0:
        return 1.0
    return 1.0 - 2 * precision * recall / (precision + recall)


def summarize(cm: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """Flat metric dict: global accuracy, pixel error, mean IoU and IoU per class."""
    ious = iou_per_class(cm)
    out = {
        "global_accuracy": global_accuracy(cm),
        "pixel_error": pixel_error(cm),
        "mean_iou": mean_iou(cm),
    }
    out.update({f"iou/{name}": float(v) for name, v in zip(class_names, ious, strict=True)})
    return out
