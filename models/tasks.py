"""The two trained tasks: which architecture, data, normalisation and classes each uses.

Train, evaluate and export all read these, so a model's preprocessing is defined once
and travels into the ONNX metadata (like torchvision weights that carry their transforms).
"""

from __future__ import annotations

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
    isbi_slice_ids,
    load_camvid,
    load_isbi,
)
from models.losses import border_weight_map, enet_class_weights, separation_weight_map

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
) -> TaskData:
    """Training dataset (augmenting) and the raw validation arrays for one task.

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
            weights = np.stack([border_weight_map(lb, w0=border_w0) for lb in labels])
        elif separation_weight:
            weights = np.stack([separation_weight_map(lb, separation_weight) for lb in labels])
        val_images, val_labels = load_isbi(root, ISBI_VAL_SLICES)
        train = SegmentationDataset(
            images, labels, task.mean, task.std, weights, IsbiAugment(crop), epoch_length, seed
        )
        return TaskData(train, val_images, val_labels, [f"{i}.png" for i in ISBI_VAL_SLICES], None)
    images, labels, _ = load_camvid(root, "train")
    val_images, val_labels, val_names = load_camvid(root, "val")
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
    return TaskData(
        train, val_images, val_labels, val_names, enet_class_weights(labels, len(task.classes))
    )
