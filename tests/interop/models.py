"""Real segmentation architectures from other projects, random weights, exported to ONNX the
way their users do (torch.onnx.export with dynamic height and width)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class Case:
    name: str
    classes: int
    build: Callable[[int], nn.Module]
    output_names: tuple[str, ...]
    layout: str = "NCHW"
    height: int = 64
    width: int = 96
    stride: float = 1.0  # the scores' output stride, checked in the printed spec's notes
    kind: str = "logits"
    flags: tuple[str, ...] = ()  # more `segserve import` flags
    dynamic: bool = True  # False: exported without dynamic axes (batch 1, fixed size)


class FirstOutput(nn.Module):
    """torchvision answers a dict ({'out', 'aux'}), transformers a ModelOutput: a tuple of
    tensors exports with the names given."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return tuple(out[k] for k in self.keys)


class SegformerLogits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits  # type: ignore[no-any-return]


class KerasLike(nn.Module):
    """A Keras-style model: NHWC image in, softmax probabilities out NHWC, at half resolution
    upsampled inside (as a Conv2DTranspose head would)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 3, padding=1)
        )
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.body(x.permute(0, 3, 1, 2)))
        return torch.softmax(y, dim=1).permute(0, 2, 3, 1)


def lraspp(classes: int) -> nn.Module:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=classes)
    return FirstOutput(model, ("out",))


def deeplabv3(classes: int) -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet50

    model = deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=classes, aux_loss=True
    )
    return FirstOutput(model, ("out", "aux"))


def smp_unet(classes: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet("resnet18", encoder_weights=None, classes=classes)  # type: ignore[no-any-return]


def segformer(classes: int) -> nn.Module:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        depths=[1, 1, 1, 1],
        hidden_sizes=[8, 16, 24, 32],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16,
        num_labels=classes,
    )
    return SegformerLogits(SegformerForSemanticSegmentation(config))


CASES = [
    Case("lraspp", 5, lraspp, ("out",)),
    Case("lraspp-fixed", 3, lraspp, ("out",), height=64, width=64, dynamic=False),
    Case("deeplabv3", 4, deeplabv3, ("out", "aux"), height=64, width=64),
    # smp 0.6's U-Net resizes inside to its skips' sizes, so it runs at any size, but smp
    # asks for multiples of its encoder's stride 32 (it refuses others in eager mode).
    Case("smp-unet", 3, smp_unet, ("mask",), flags=("--size-multiple", "32")),
    Case("segformer", 6, segformer, ("logits",), stride=4.0),
    Case("keras-nhwc", 4, KerasLike, ("probabilities",), layout="NHWC", kind="probabilities"),
]


def export(case: Case, path: Path) -> None:
    torch.manual_seed(0)
    model = case.build(case.classes).eval()
    shape = (1, 3, case.height, case.width)
    if case.layout == "NHWC":
        shape = (1, case.height, case.width, 3)
    spatial = {0: "batch", 2: "height", 3: "width"}
    if case.layout == "NHWC":
        spatial = {0: "batch", 1: "height", 2: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation, tracer notes
        # The TorchScript exporter: the dynamo one takes minutes per model on a busy CPU.
        torch.onnx.export(
            model,
            (torch.rand(shape),),
            str(path),
            input_names=["input"],
            output_names=list(case.output_names),
            dynamic_axes={"input": spatial} if case.dynamic else None,
            opset_version=17,
            dynamo=False,
        )
