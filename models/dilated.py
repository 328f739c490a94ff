"""Dilated network with a context module (Yu & Koltun, ICLR 2016).

Front-end: a VGG-like stack trained from scratch (no ImageNet weights can be had
here), narrower than VGG-16 to fit a 2-core CPU; or (`residual=True`) a residual one
after dilated residual networks (Yu, Koltun & Funkhouser, CVPR 2017, DRN-C): basic
residual blocks at strides 2, 4 and 8, dilated blocks (2, then 4) in place of the last
two downsamplings, and two plain "degridding" convolutions (dilation 2, then 1) at the
end, which remove the gridding artefacts of dilation. As in the paper, the last two
poolings are removed and the convolutions after them are dilated by 2 and then 4,
so the score map has output stride 8. The context module then aggregates multi-scale
context on the class scores: 3x3 convolutions with dilations 1, 1, 2, 4, 8, 16, 1 and
a 1x1, every layer initialised to the identity (the paper found random init did not
train). Scores are upsampled bilinearly to the input size inside the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

CONTEXT_DILATIONS = (1, 1, 2, 4, 8, 16, 1)


@dataclass
class DilatedConfig:
    in_channels: int = 3
    num_classes: int = 11
    widths: tuple[int, int, int] = (32, 64, 128)  # channels at strides 2, 4 and 8
    dropout: float = 0.1
    context: bool = True
    residual: bool = False  # the DRN-C style front-end instead of the VGG-like one

    @property
    def size_multiple(self) -> int:
        return 8


def _conv_bn(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DilatedResidual(nn.Module):
    """Two dilated 3x3 convolutions with a shortcut (trains from scratch better than plain)."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(channels, channels, dilation=dilation),
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class BasicBlock(nn.Module):
    """ResNet's basic block (two 3x3 convolutions and a shortcut), with a stride or a
    dilation; a 1x1 projection on the shortcut where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(c_in, c_out, stride=stride, dilation=dilation),
            nn.Conv2d(c_out, c_out, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.body(x))


def _plain_features(cfg: DilatedConfig) -> nn.Sequential:
    w1, w2, w3 = cfg.widths
    return nn.Sequential(
        _conv_bn(cfg.in_channels, w1, stride=2),  # 1/2
        _conv_bn(w1, w1),
        nn.MaxPool2d(2),  # 1/4
        _conv_bn(w1, w2),
        _conv_bn(w2, w2),
        nn.MaxPool2d(2),  # 1/8
        _conv_bn(w2, w3),
        _conv_bn(w3, w3),
        # Where VGG pools twice more, keep stride 8 and dilate instead.
        DilatedResidual(w3, dilation=2),
        DilatedResidual(w3, dilation=4),
        nn.Dropout2d(cfg.dropout),
    )


def _residual_features(cfg: DilatedConfig) -> nn.Sequential:
    w1, w2, w3 = cfg.widths
    return nn.Sequential(
        _conv_bn(cfg.in_channels, w1, stride=2),  # 1/2
        BasicBlock(w1, w1),
        BasicBlock(w1, w2, stride=2),  # 1/4
        BasicBlock(w2, w2),
        BasicBlock(w2, w3, stride=2),  # 1/8
        BasicBlock(w3, w3),
        BasicBlock(w3, w3, dilation=2),  # DRN: where ResNet would downsample twice more
        BasicBlock(w3, w3, dilation=4),
        _conv_bn(w3, w3, dilation=2),  # degridding, without shortcuts (DRN-C)
        _conv_bn(w3, w3),
        nn.Dropout2d(cfg.dropout),
    )


class FrontEnd(nn.Module):
    def __init__(self, cfg: DilatedConfig) -> None:
        super().__init__()
        self.features = _residual_features(cfg) if cfg.residual else _plain_features(cfg)
        self.classifier = nn.Conv2d(cfg.widths[2], cfg.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (N, classes, H/8, W/8)


class ContextModule(nn.Module):
    """The paper's basic context module: C channels in, C out, identity at initialisation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for d in CONTEXT_DILATIONS:
            layers += [nn.Conv2d(channels, channels, 3, padding=d, dilation=d), nn.ReLU()]
        layers.append(nn.Conv2d(channels, channels, 1))
        self.layers = nn.Sequential(*layers)
        self.reset_to_identity()

    def reset_to_identity(self) -> None:
        # Weight 1 at the centre tap from channel a to channel a, 0 elsewhere, zero bias.
        for m in self.layers:
            if isinstance(m, nn.Conv2d):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
                centre = m.kernel_size[0] // 2
                with torch.no_grad():
                    for a in range(m.out_channels):
                        m.weight[a, a, centre, centre] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DilatedNet(nn.Module):
    def __init__(self, cfg: DilatedConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.front_end = FrontEnd(cfg)
        self.context = ContextModule(cfg.num_classes) if cfg.context else None
        for m in self.front_end.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, H, W), H and W multiples of 8
        scores = self.front_end(x)  # (N, classes, H/8, W/8)
        if self.context is not None:
            # The module is the identity on non-negative maps (its layers end in ReLU),
            # so feed it rectified scores as the paper's ReLU-terminated front-end did.
            scores = self.context(F.relu(scores))
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)
