"""PNG figures a person would rather look at than read: training curves, prediction montages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def plot_curves(history: list[dict[str, Any]], selection: str, path: Path, title: str = "") -> None:
    """Training loss and validation metrics per epoch."""
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(epochs, [r["train_loss"] for r in history], label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_yscale("log")
    ax1.legend()
    val = [r for r in history if "val" in r]
    for key in ("pixel_error", "rand_error", "mean_iou", "global_accuracy"):
        if val and key in val[0]["val"]:
            ax2.plot(
                [r["epoch"] for r in val],
                [r["val"][key] for r in val],
                marker=".",
                label=f"val {key}",
            )
    ax2.set_xlabel("epoch")
    ax2.set_title(f"selection: {selection}")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def colorize(
    label: np.ndarray,
    palette: list[tuple[int, int, int]],
    void_color: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    lut = np.array(list(palette) + [void_color] * (256 - len(palette)), np.uint8)
    return lut[label]


def plot_montage(
    images: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    palette: list[tuple[int, int, int]],
    names: list[str],
    path: Path,
    title: str = "",
) -> None:
    """One row per example: input, ground truth, prediction."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(10, 3.2 * n), squeeze=False)
    for row, (img, lab, pred, name) in enumerate(zip(images, labels, preds, names, strict=True)):
        axes[row, 0].imshow(img, cmap="gray" if img.ndim == 2 else None)
        axes[row, 1].imshow(colorize(lab, palette))
        axes[row, 2].imshow(colorize(pred, palette))
        axes[row, 0].set_ylabel(name)
        for col, head in enumerate(("input", "ground truth", "prediction")):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(head)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=56)
    plt.close(fig)
