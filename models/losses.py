"""Losses: pixel-wise cross-entropy, with the U-Net paper's border weight map or a
separation-line weight map as options."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F


def border_weight_map(
    label: np.ndarray, w0: float = 10.0, sigma: float = 5.0, cell: int = 1
) -> np.ndarray:
    """w(x) = w_c(x) + w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) (Ronneberger et al., eq. 2).

    d1, d2: distances to the nearest and second-nearest cell. w_c balances the class
    frequencies of this label map. Computed once per slice, then warped with it.
    """
    cells, n = ndimage.label(label == cell)
    freq = np.array([(label != cell).mean(), (label == cell).mean()])
    w_c = np.where(label == cell, 0.5 / max(freq[1], 1e-6), 0.5 / max(freq[0], 1e-6))
    if n < 2:
        return w_c.astype(np.float32)
    # Distances to each cell would cost one transform per cell; the two smallest only
    # matter near a cell, so track them incrementally.
    d1 = np.full(label.shape, np.inf, np.float32)
    d2 = np.full(label.shape, np.inf, np.float32)
    for k in range(1, n + 1):
        d = ndimage.distance_transform_edt(cells != k).astype(np.float32)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    border[label == cell] = 0.0  # the term targets the separating background pixels
    return (w_c + border).astype(np.float32)


def separation_weight_map(label: np.ndarray, weight: float = 5.0, cell: int = 1) -> np.ndarray:
    """1 everywhere, 1 + `weight` on the membrane pixels midway between two cells.

    Those pixels are the boundaries of the cells' Voronoi regions (each pixel belongs to
    its nearest cell). A gap there merges two cells, which Rand error punishes hard while
    pixel error hardly notices; weighting only this one-pixel line, unlike the paper's
    border map, leaves the thickness of the predicted membranes to plain cross-entropy.
    """
    is_cell = label == cell
    cells, n = ndimage.label(is_cell)
    out = np.ones(label.shape, np.float32)
    if n < 2:
        return out
    _, (rows, cols) = ndimage.distance_transform_edt(~is_cell, return_indices=True)
    nearest = cells[rows, cols]  # (H, W) id of the nearest cell
    boundary = np.zeros(label.shape, bool)
    boundary[1:] |= nearest[1:] != nearest[:-1]
    boundary[:, 1:] |= nearest[:, 1:] != nearest[:, :-1]
    out[boundary & ~is_cell] += weight
    return out


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    pixel_weight: torch.Tensor | None = None,
    class_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Cross-entropy over (N, K, H, W) logits, averaged over non-ignored pixels' weights."""
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    weight = (target != ignore_index).float()
    if pixel_weight is not None:
        weight = weight * pixel_weight
    if class_weight is not None:
        weight = weight * class_weight[target.clamp(0, len(class_weight) - 1)]
    return (loss * weight).sum() / weight.sum().clamp_min(1e-6)


def enet_class_weights(labels: np.ndarray, num_classes: int, c: float = 1.02) -> np.ndarray:
    """ENet's w_class = 1 / ln(c + p_class): bounded weights for rare classes."""
    counts = np.bincount(labels.ravel(), minlength=num_classes + 1)[:num_classes].astype(np.float64)
    p = counts / counts.sum()
    return (1.0 / np.log(c + p)).astype(np.float32)


def median_frequency_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Median frequency balancing (Eigen & Fergus 2015, as SegNet trains on CamVid):
    w_c = median(freq) / freq_c, freq_c = pixels of c / pixels of the images holding c.

    Labels >= num_classes (void) count nowhere. A class absent from every image gets
    weight 0 (it never appears as a target anyway).
    """
    flat = labels.reshape(len(labels), -1)
    counts = np.stack([np.bincount(row, minlength=num_classes + 1)[:num_classes] for row in flat])
    present = counts > 0  # (S, K)
    image_pixels = counts.sum(1, keepdims=True)  # non-void pixels of each image
    denominators = (present * image_pixels).sum(0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        freq = np.where(denominators > 0, counts.sum(0) / denominators, np.nan)
    median = np.nanmedian(freq)
    return np.where(np.isfinite(freq) & (freq > 0), median / freq, 0.0).astype(np.float32)
