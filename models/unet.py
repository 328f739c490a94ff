"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015).

Contracting path of 3x3 conv + ReLU pairs and 2x2 max-pooling that doubles the
channels, expansive path of 2x2 up-convolutions that halve them, concatenation skip
connections and a final 1x1 convolution. Two deliberate departures from the paper:
padded convolutions (so the output has the input's size and tiles stitch without
cropping bookkeeping) and batch norm after every convolution (stable training with
small batches on CPU). Inputs must be multiples of `2**depth`; the service mirror-pads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class UNetConfig:
    in_channels: int = 1
    num_classes: int = 2
    base_width: int = 16  # channels at full resolution; the paper uses 64
    depth: int = 4  # number of 2x2 poolings; the paper uses 4
    dropout: float = 0.5  # at the end of the contracting path, as in the paper

    @property
    def size_multiple(self) -> int:
        return 2**self.depth


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.base_width * 2**i for i in range(cfg.depth + 1)]
        self.down = nn.ModuleList()
        c_in = cfg.in_channels
        for w in widths:
            self.down.append(_double_conv(c_in, w))
            c_in = w
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout2d(cfg.dropout)
        self.up = nn.ModuleList()  # 2x2 up-convolutions that halve the channels
        self.up_conv = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(2 * w, w, kernel_size=2, stride=2))
            self.up_conv.append(_double_conv(2 * w, w))  # 2w = skip (w) + upsampled (w)
        self.head = nn.Conv2d(widths[0], cfg.num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # The paper's He-style init: Gaussian with std sqrt(2 / fan_in).
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, in_channels, H, W), H and W multiples of 2**depth
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)  # (N, w_i, H / 2**i, W / 2**i)
                x = self.pool(x)
        x = self.dropout(x)  # (N, w_depth, H / 2**depth, W / 2**depth)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips), strict=True):
            x = conv(torch.cat([skip, up(x)], dim=1))
        return self.head(x)  # (N, num_classes, H, W) logits
