"""Augmentations, numpy/scipy only so they run in the data pipeline without torch.

ISBI follows the U-Net paper: elastic deformation (random displacements on a coarse
3x3 grid, std 10 px, interpolated bicubically to every pixel), flips, rotations and
grey-value changes. CamVid gets random scale, crop, flip and mild colour jitter.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from models.datasets import Sample


def elastic_field(
    shape: tuple[int, int], rng: np.random.Generator, grid: int = 3, sigma: float = 10.0
) -> np.ndarray:
    """Per-pixel displacement (2, H, W): Gaussian vectors on a coarse grid, cubic-upsampled."""
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    rows, cols = _cubic_upsampler(grid, shape[0]), _cubic_upsampler(grid, shape[1])
    return rows @ coarse @ cols.T  # (H, grid) @ (2, grid, grid) @ (grid, W)


@functools.lru_cache(maxsize=16)
def _cubic_upsampler(grid: int, size: int) -> np.ndarray:
    """(size, grid) matrix doing ndimage.zoom's cubic spline upsampling along one axis.

    Spline zooming is linear and separable, so zooming each unit vector once gives the
    matrix; a 2D zoom of the coarse grid straight to 512x512 costs 0.25 s per sample, a
    quarter of a training step, the two matrix products almost nothing.
    """
    eye = np.eye(grid)
    columns = [
        ndimage.zoom(e, size / grid, order=3, mode="nearest", grid_mode=True)[:size] for e in eye
    ]
    return np.stack(columns, axis=1)


def _warp(a: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    return ndimage.map_coordinates(a, coords, order=order, mode="mirror").astype(a.dtype)


def _random_crop(
    rng: np.random.Generator, shape: tuple[int, ...], size: int
) -> tuple[slice, slice]:
    top = int(rng.integers(0, shape[0] - size + 1))
    left = int(rng.integers(0, shape[1] - size + 1))
    return slice(top, top + size), slice(left, left + size)


class IsbiAugment:
    """Elastic warp + crop + dihedral flips/rotations + brightness/contrast/gamma."""

    def __init__(self, crop: int = 256, sigma: float = 10.0, grid: int = 3) -> None:
        self.crop, self.sigma, self.grid = crop, sigma, grid

    def __call__(
        self,
        image: np.ndarray,
        label: np.ndarray,
        weight: np.ndarray | None,
        rng: np.random.Generator,
    ) -> Sample:
        h, w = image.shape
        field = elastic_field((h, w), rng, self.grid, self.sigma)
        # A free rotation on top of the deformation; mirror mode fills the corners.
        angle = np.deg2rad(rng.uniform(-180, 180))
        yy, xx = np.meshgrid(
            np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij"
        )
        cy, cx = (h - 1) / 2, (w - 1) / 2
        ry = cy + (yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle)
        rx = cx + (yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
        rows, cols = _random_crop(rng, (h, w), self.crop)
        coords = np.stack(
            [ry[rows, cols] + field[0][rows, cols], rx[rows, cols] + field[1][rows, cols]]
        )
        image = _warp(image.astype(np.float32), coords, order=1)
        label = _warp(label, coords, order=0)
        if weight is not None:
            weight = _warp(weight, coords, order=1)
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
            weight = weight[:, ::-1] if weight is not None else None
        # Grey-value changes: contrast, brightness, gamma.
        image = image * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
        image = 255.0 * (np.clip(image, 0, 255) / 255.0) ** rng.uniform(0.8, 1.25)
        return image.astype(np.uint8), label, weight


class CamVidAugment:
    """Random scale, crop (void-padded where the frame is smaller), flip, colour jitter."""

    def __init__(
        self, crop: int = 256, scale: tuple[float, float] = (0.5, 1.25), void: int = 11
    ) -> None:
        self.crop, self.scale, self.void = crop, scale, void

    def __call__(
        self,
        image: np.ndarray,
        label: np.ndarray,
        weight: np.ndarray | None,
        rng: np.random.Generator,
    ) -> Sample:
        s = rng.uniform(*self.scale)
        h, w = label.shape
        nh, nw = max(round(h * s), 1), max(round(w * s), 1)
        image = ndimage.zoom(image, (nh / h, nw / w, 1), order=1, grid_mode=True, mode="nearest")
        label = ndimage.zoom(label, (nh / h, nw / w), order=0, grid_mode=True, mode="nearest")
        ph, pw = max(self.crop - nh, 0), max(self.crop - nw, 0)
        if ph or pw:
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect")
            label = np.pad(label, ((0, ph), (0, pw)), constant_values=self.void)
        rows, cols = _random_crop(rng, label.shape, self.crop)
        image, label = image[rows, cols], label[rows, cols]
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        jitter = rng.uniform(0.8, 1.2, size=3) * rng.uniform(0.8, 1.2)
        image = np.clip(image.astype(np.float32) * jitter + rng.uniform(-15, 15), 0, 255)
        return image.astype(np.uint8), label, None
