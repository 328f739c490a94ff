"""Loaders for the shared data (`../shared/datasets`, see its README).

ISBI 2012: 8-bit grey slices `images/N.png` with labels `labels/N.png` where 0 is
membrane and 255 cell interior; we use class 0 = membrane, 1 = cell everywhere.
CamVid (SegNet's 11-class version): RGB frames and grey label maps holding class
indices 0-10, with 11 = void (ignored in loss and metrics). Frame names start with their
video sequence (`0001TP_006690.png`): `camvid_sequence` reads it, so a whole sequence
can be held out.

The same loaders read a training pack (`scripts/train_pack.py`): the same layout with
CamVid frames as JPEG (`*.jpg`) beside the PNG label maps.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

DEFAULT_DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
ISBI_CLASSES = ("membrane", "cell")
ISBI_PALETTE = ((0, 0, 0), (255, 255, 255))
CAMVID_VOID = 11

Sample = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # image, label, pixel weights
Transform = Callable[[np.ndarray, np.ndarray, np.ndarray | None, np.random.Generator], Sample]


def isbi_slice_ids(root: Path) -> list[int]:
    """Slice numbers present, sorted numerically (a string sort puts 10 before 2)."""
    return sorted(int(p.stem) for p in (root / "isbi2012" / "images").glob("*.png"))


def load_isbi(root: Path, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Images (S, H, W) uint8 and labels (S, H, W) uint8 with 0 = membrane, 1 = cell."""
    base = root / "isbi2012"
    images = np.stack(
        [np.asarray(Image.open(base / "images" / f"{i}.png").convert("L")) for i in ids]
    )
    raw = np.stack([np.asarray(Image.open(base / "labels" / f"{i}.png").convert("L")) for i in ids])
    return images, (raw > 127).astype(np.uint8)


def camvid_classes(root: Path) -> tuple[list[str], list[tuple[int, int, int]]]:
    """The 11 class names and palette of `camvid/classes.csv`, void row excluded."""
    with open(root / "camvid" / "classes.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["index"]) != CAMVID_VOID]
    rows.sort(key=lambda r: int(r["index"]))
    return [r["name"] for r in rows], [(int(r["r"]), int(r["g"]), int(r["b"])) for r in rows]


CAMVID_IMAGE_SUFFIXES = (".png", ".jpg")


def load_camvid(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (S, H, W, 3) uint8, labels (S, H, W) uint8 and file names, for train or val.

    Frames may be PNG (../shared) or JPEG (a training pack); the label map of `X.jpg` is
    `X.png`. Names are reported as the label files' (`X.png`) either way.
    """
    base = root / "camvid"
    files = sorted(
        (p for p in (base / split).iterdir() if p.suffix in CAMVID_IMAGE_SUFFIXES)
        if (base / split).is_dir()
        else [],
        key=lambda p: p.stem,
    )
    if not files:
        raise FileNotFoundError(f"no CamVid images in {base / split}")
    names = [p.stem + ".png" for p in files]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
    labels = np.stack([np.asarray(Image.open(base / f"{split}annot" / n)) for n in names])
    return images, labels, names


def camvid_sequence(name: str) -> str:
    """The video sequence a CamVid frame comes from: `0006R0_f01290.png` -> `0006R0`."""
    return name.split("_", 1)[0]


class SegmentationDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """In-memory image/label arrays, an optional per-pixel weight map and a random transform.

    Items are (image float32 (C, H, W) normalised, label int64 (H, W), weight float32 (H, W)).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        mean: Sequence[float],
        std: Sequence[float],
        weights: np.ndarray | None = None,
        transform: Transform | None = None,
        length: int | None = None,
        seed: int = 0,
    ) -> None:
        self.images, self.labels, self.weights = images, labels, weights
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.transform = transform
        self.length = length or len(images)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(
        self, key: int | tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # A key (epoch, index) carries the epoch into DataLoader workers, whose copies of
        # this object never see `self.epoch` change (persistent workers); see EpochSampler.
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        i = index % len(self.images)
        image, label = self.images[i], self.labels[i]
        weight = self.weights[i] if self.weights is not None else None
        if self.transform is not None:
            # Seeded per (epoch, index): resumed runs replay the same augmentations.
            rng = np.random.default_rng((self.seed, epoch, index))
            image, label, weight = self.transform(image, label, weight, rng)
        x = image.astype(np.float32) / 255.0
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)  # (C, H, W)
        x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        w = np.ones(label.shape, np.float32) if weight is None else weight.astype(np.float32)
        return (
            torch.from_numpy(np.ascontiguousarray(x)),
            torch.from_numpy(label.astype(np.int64)),
            torch.from_numpy(np.ascontiguousarray(w)),
        )


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (epoch, index) keys in a seeded random order, one epoch per iteration.

    The order depends only on (seed, epoch), so a resumed run replays it; `start` skips
    the first keys of the next pass (resuming in the middle of an epoch).
    """

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length, self.seed = length, seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.length - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng((self.seed, 7919, self.epoch)).permutation(self.length)
        for index in order[self.start :]:
            yield self.epoch, int(index)
