"""The augmentations of models/augment.py as batched resampling on the training device.

On a GPU the numpy/scipy augmentations in DataLoader workers cannot keep up with the
network (16 cores feed a few hundred crops a second; an H200 trains these networks on
thousands). Here the whole training set sits on the device as uint8 and each step draws
its batch by one `grid_sample` per tensor: every output pixel's source position is
computed from the sample's random parameters, as `map_coordinates` does in the numpy
version, with the same distributions:

- ISBI (U-Net paper): a free rotation, an elastic field (Gaussian displacements with
  std `sigma` px on a coarse 3x3 grid, cubic-upsampled), a random crop, a left-right
  flip, then contrast, brightness and gamma. Mirror padding; labels nearest-neighbour,
  weight maps bilinear.
- CamVid: a random scale in `scale`, a random crop (void labels and reflected pixels
  where the scaled frame is smaller), a flip and colour jitter.

Randomness comes from a generator seeded per (seed, step), so a resumed run draws the
same batches. Runs on the CPU too (tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _normalised(coords: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel coordinates (centres at 0 .. size-1) to grid_sample's [-1, 1]
    (align_corners=True)."""
    return coords * (2.0 / max(size - 1, 1)) - 1.0


def _uniform(
    n: int, low: float, high: float, g: torch.Generator, device: torch.device
) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


class GpuAugment:
    """Batches of augmented crops drawn from images held on `device`.

    images (S, H, W) or (S, H, W, C) uint8, labels (S, H, W) uint8, weights (S, H, W)
    float32 or None. `batch(step, n)` returns (x float32 (n, C, crop, crop) normalised,
    y int64 (n, crop, crop), w float32 (n, crop, crop)).
    """

    def __init__(
        self,
        kind: str,
        images: np.ndarray,
        labels: np.ndarray,
        weights: np.ndarray | None,
        mean: Sequence[float],
        std: Sequence[float],
        crop: int,
        device: torch.device,
        seed: int = 0,
        void: int = 11,
        sigma: float = 10.0,
        grid: int = 3,
        scale: tuple[float, float] = (0.5, 1.25),
    ) -> None:
        if kind not in ("isbi", "camvid"):
            raise ValueError(f"kind must be isbi or camvid, not {kind!r}")
        self.kind, self.crop, self.device, self.seed = kind, crop, device, seed
        self.void, self.sigma, self.grid, self.scale = void, sigma, grid, scale
        x = torch.from_numpy(np.ascontiguousarray(images))
        self.images = (x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)).to(device)
        self.labels = torch.from_numpy(np.ascontiguousarray(labels)).to(device)
        self.weights = (
            torch.from_numpy(np.ascontiguousarray(weights, np.float32)).to(device)
            if weights is not None
            else None
        )
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def generator(self, step: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + step) % (2**63))
        return g

    def batch(self, step: int, n: int) -> Batch:
        g = self.generator(step)
        index = torch.randint(len(self.images), (n,), generator=g, device=self.device)
        if self.kind == "isbi":
            rows, cols = self.isbi_coords(n, g)
        else:
            rows, cols = self.camvid_coords(n, g)
        flip = torch.rand(n, generator=g, device=self.device) < 0.5
        cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
        rows = torch.where(flip[:, None, None], rows.flip(-1), rows)
        return self.sample(index, rows, cols, g)

    def isbi_coords(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Source rows and columns (n, crop, crop) of a rotated, elastically deformed crop."""
        h, w = self.images.shape[-2:]
        dev, c = self.device, self.crop
        coarse = torch.randn(n, 2, self.grid, self.grid, generator=g, device=dev) * self.sigma
        field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
        top = torch.randint(0, h - c + 1, (n,), generator=g, device=dev)
        left = torch.randint(0, w - c + 1, (n,), generator=g, device=dev)
        angle = _uniform(n, -math.pi, math.pi, g, dev)
        ar = torch.arange(c, device=dev)
        yy = (top[:, None] + ar)[:, :, None].expand(n, c, c)  # full-image row of the crop
        xx = (left[:, None] + ar)[:, None, :].expand(n, c, c)
        cy, cx = (h - 1) / 2, (w - 1) / 2
        cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
        dy, dx = yy.float() - cy, xx.float() - cx
        batch = torch.arange(n, device=dev)[:, None, None]
        rows = cy + dy * cos - dx * sin + field[batch, 0, yy, xx]
        cols = cx + dy * sin + dx * cos + field[batch, 1, yy, xx]
        return rows, cols

    def camvid_coords(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Source rows and columns (n, crop, crop) of a crop of the frame scaled by s;
        positions outside the scaled frame fall outside the source (void labels)."""
        h, w = self.images.shape[-2:]
        dev, c = self.device, self.crop
        s = _uniform(n, *self.scale, g, dev)
        nh, nw = (h * s).round().clamp_min(1), (w * s).round().clamp_min(1)
        top = (torch.rand(n, generator=g, device=dev) * ((nh - c).clamp_min(0) + 1)).floor()
        left = (torch.rand(n, generator=g, device=dev) * ((nw - c).clamp_min(0) + 1)).floor()
        ar = torch.arange(c, device=dev, dtype=torch.float32)
        # Scaled pixel i covers source (i + 0.5) * h / nh - 0.5 (ndimage.zoom, grid_mode).
        sy, sx = (h / nh)[:, None], (w / nw)[:, None]
        r = (top[:, None] + ar + 0.5) * sy - 0.5
        q = (left[:, None] + ar + 0.5) * sx - 0.5
        # Past the scaled frame's edge (when it is smaller than the crop): mark as outside.
        r = torch.where(top[:, None] + ar < nh[:, None], r, torch.full_like(r, -1e4))
        q = torch.where(left[:, None] + ar < nw[:, None], q, torch.full_like(q, -1e4))
        return r[:, :, None].expand(n, c, c), q[:, None, :].expand(n, c, c)

    def sample(
        self, index: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, g: torch.Generator
    ) -> Batch:
        h, w = self.images.shape[-2:]
        outside = (rows < -0.5) | (rows > h - 0.5) | (cols < -0.5) | (cols > w - 0.5)
        if self.kind == "isbi":
            outside = torch.zeros_like(outside)  # mirror mode: nothing is outside
            rows, cols = _mirror(rows, h), _mirror(cols, w)
        else:
            # Reflect the pixels (np.pad "reflect"); the labels there are void below.
            rows, cols = (
                _reflect(rows.clamp(-h + 1, 2 * h - 2), h),
                _reflect(cols.clamp(-w + 1, 2 * w - 2), w),
            )
        grid = torch.stack([_normalised(cols, w), _normalised(rows, h)], dim=-1)
        image = self.images[index].float()
        x = F.grid_sample(image, grid, mode="bilinear", align_corners=True)
        label = F.grid_sample(
            self.labels[index][:, None].float(), grid, mode="nearest", align_corners=True
        )[:, 0]
        y = label.round().long()
        y = torch.where(outside, torch.full_like(y, self.void), y)
        if self.weights is not None:
            wmap = F.grid_sample(
                self.weights[index][:, None], grid, mode="bilinear", align_corners=True
            )[:, 0]
        else:
            wmap = torch.ones_like(x[:, 0])
        x = self.photometric(x, g)
        x = (x / 255.0 - self.mean) / self.std
        return x.contiguous(), y, wmap

    def photometric(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, dev = len(x), self.device
        if self.kind == "isbi":
            x = x * _uniform(n, 0.8, 1.2, g, dev).view(n, 1, 1, 1)
            x = x + _uniform(n, -20, 20, g, dev).view(n, 1, 1, 1)
            gamma = _uniform(n, 0.8, 1.25, g, dev).view(n, 1, 1, 1)
            x = 255.0 * (x.clamp(0, 255) / 255.0) ** gamma
        else:
            jitter = torch.rand(n, 3, generator=g, device=dev) * 0.4 + 0.8
            jitter = jitter * _uniform(n, 0.8, 1.2, g, dev)[:, None]
            x = x * jitter.view(n, 3, 1, 1) + _uniform(n, -15, 15, g, dev).view(n, 1, 1, 1)
            x = x.clamp(0, 255)
        return x.floor()  # the numpy path stores uint8


def _mirror(coords: torch.Tensor, size: int) -> torch.Tensor:
    """scipy's "mirror" mode: reflect about the first and last pixel centres."""
    if size == 1:
        return torch.zeros_like(coords)
    period = 2 * (size - 1)
    c = torch.remainder(coords, period)
    return torch.where(c > size - 1, period - c, c)


def _reflect(coords: torch.Tensor, size: int) -> torch.Tensor:
    """np.pad's "reflect" (no edge repeat), the same as mirror for one reflection."""
    return _mirror(coords, size)
