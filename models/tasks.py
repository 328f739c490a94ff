"""The two trained tasks: which architecture, data, normalisation and classes each uses.

Train, evaluate and export all read these, so a model's preprocessing is defined once
and travels into the ONNX metadata (like torchvision weights that carry their transforms).
"""

from __future__ import annotations

import functools
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.augment import CamVidAugment, IsbiAugment
from models.datasets import (
    CAMVID_VOID,
    ISBI_CLASSES,
    ISBI_PALETTE,
    SegmentationDataset,
    camvid_classes,
    camvid_sequence,
    isbi_slice_ids,
    load_camvid,
    load_isbi,
)
from models.losses import (
    border_weight_map,
    enet_class_weights,
    median_frequency_weights,
    separation_weight_map,
)

ISBI_VAL_SLICES = (20, 21, 22, 23)  # the last four: neighbours of train slices are correlated


@dataclass
class Task:
    name: str
    arch: str
    arch_options: dict[str, Any]
    description: str
    classes: list[str]
    palette: list[tuple[int, int, int]]
    mean: list[float]
    std: list[float]
    training_data: str
    data_terms: str
    ignore_index: int = -100
    selection: str = "mean_iou"  # validation metric that picks the best checkpoint
    selection_higher_is_better: bool = True
    tile: dict[str, int] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return len(self.mean)


def isbi_task(root: Path) -> Task:
    return Task(
        name="unet-isbi",
        arch="unet",
        arch_options={"in_channels": 1, "num_classes": 2, "base_width": 16, "depth": 4},
        description="U-Net for neuronal membrane segmentation in serial-section EM (ISBI 2012).",
        classes=list(ISBI_CLASSES),
        palette=list(ISBI_PALETTE),
        mean=[0.49],
        std=[0.17],
        training_data=(
            f"ISBI 2012 EM training slices {_isbi_train_ids(root)}, "
            f"validation slices {list(ISBI_VAL_SLICES)}"
        ),
        data_terms="Non-commercial research only (ISBI 2012 terms; cite Cardona et al. 2010).",
        selection="rand_plus_pixel_error",
        selection_higher_is_better=False,
        tile={"size": 512, "overlap": 64, "batch": 1},
    )


def camvid_task(root: Path) -> Task:
    classes, palette = camvid_classes(root)
    return Task(
        name="dilated-camvid",
        arch="dilated",
        arch_options={"in_channels": 3, "num_classes": 11, "widths": (32, 96, 192)},
        description="Dilated network with a context module for street scenes (CamVid, 11 classes).",
        classes=classes,
        palette=palette,
        # CamVid train per-channel means (README: R 105.0, G 108.4, B 110.3) / 255
        mean=[0.412, 0.425, 0.433],
        std=[0.28, 0.28, 0.28],
        training_data=(
            "CamVid 11-class (SegNet version) train split, 367 frames 480x360; "
            "selected on val (101 frames)"
        ),
        data_terms="Research, non-commercial use only; cite Brostow et al. 2008/2009 and SegNet.",
        ignore_index=CAMVID_VOID,
        tile={"size": 1024, "overlap": 192, "batch": 1},
    )


TASKS = {"unet-isbi": isbi_task, "dilated-camvid": camvid_task}


def get_task(name: str, root: Path) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name](root)


def _isbi_train_ids(root: Path) -> list[int]:
    return [i for i in isbi_slice_ids(root) if i not in ISBI_VAL_SLICES]


@dataclass
class TaskData:
    train: SegmentationDataset
    val_images: np.ndarray
    val_labels: np.ndarray
    val_names: list[str]
    class_weights: np.ndarray | None


def build_data(
    task: Task,
    root: Path,
    crop: int,
    epoch_length: int | None,
    seed: int,
    border_weights: bool,
    border_w0: float = 10.0,
    separation_weight: float = 0.0,
    holdout: str = "",
    trainval: bool = False,
    class_balance: str = "enet",
    processes: int = 1,
) -> TaskData:
    """Training dataset (augmenting) and the raw validation arrays for one task.

    CamVid: `holdout` (a sequence, e.g. "0006R0") trains on train + val without that
    sequence and validates on it; `trainval` trains on train + val (validation then
    scores frames seen in training); `class_balance` is "enet" (ENet's 1 / ln(1.02 + p))
    or "median" (median frequency balancing, as SegNet). `processes` > 1 computes the
    ISBI border maps (seconds per slice) in that many processes.

    ISBI pixel weights: the paper's border map, or (`separation_weight` > 0) extra weight
    on the membrane line midway between cells, or none.
    """
    if border_weights and separation_weight:
        raise ValueError("choose the border weight map or the separation weights, not both")
    if task.name == "unet-isbi":
        train_ids = _isbi_train_ids(root)
        images, labels = load_isbi(root, train_ids)
        weights = None
        if border_weights:
            weights = np.stack(_border_maps(labels, border_w0, processes))
        elif separation_weight:
            weights = np.stack([separation_weight_map(lb, separation_weight) for lb in labels])
        val_images, val_labels = load_isbi(root, ISBI_VAL_SLICES)
        train = SegmentationDataset(
            images, labels, task.mean, task.std, weights, IsbiAugment(crop), epoch_length, seed
        )
        return TaskData(train, val_images, val_labels, [f"{i}.png" for i in ISBI_VAL_SLICES], None)
    images, labels, names = load_camvid(root, "train")
    val_images, val_labels, val_names = load_camvid(root, "val")
    if holdout or trainval:
        # Train on train + val; hold out one whole video sequence (model selection that
        # shows generalisation: val's frames come from a sequence training also uses),
        # or nothing (the final fit, selected by the schedule chosen on a held-out one).
        images = np.concatenate([images, val_images])
        labels = np.concatenate([labels, val_labels])
        names = names + val_names
    if holdout:
        keep = np.array([camvid_sequence(n) != holdout for n in names])
        if keep.all():
            known = sorted({camvid_sequence(n) for n in names})
            raise ValueError(f"no CamVid frames of sequence {holdout!r}; sequences: {known}")
        val_images, val_labels = images[~keep], labels[~keep]
        val_names = [n for n, k in zip(names, keep, strict=True) if not k]
        images, labels = images[keep], labels[keep]
    train = SegmentationDataset(
        images,
        labels,
        task.mean,
        task.std,
        None,
        CamVidAugment(crop, void=CAMVID_VOID),
        epoch_length,
        seed,
    )
    if class_balance not in CLASS_BALANCE:
        raise ValueError(f"class_balance must be one of {sorted(CLASS_BALANCE)}")
    weights = CLASS_BALANCE[class_balance](labels, len(task.classes))
    return TaskData(train, val_images, val_labels, val_names, weights)


CLASS_BALANCE = {"enet": enet_class_weights, "median": median_frequency_weights}


def _border_maps(labels: np.ndarray, w0: float, processes: int) -> list[np.ndarray]:
    if processes <= 1 or len(labels) < 2:
        return [border_weight_map(lb, w0=w0) for lb in labels]
    with ProcessPoolExecutor(min(processes, len(labels))) as pool:
        return list(pool.map(functools.partial(border_weight_map, w0=w0), labels))
