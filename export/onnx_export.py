"""Torch module to an ONNX graph with dynamic batch, height and width.

The graph has two outputs: float logits (for probabilities, tiling, test-time
augmentation) and their argmax as int64 labels, because argmax in the graph was
measured faster than numpy's on the service side (see the model cards).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn

OPSET = 18
DIM_NAMES = ("batch", "height", "width")


class WithLabels(nn.Module):
    """Adds the argmax over classes as a second output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(image)  # (N, K, H, W)
        return logits, logits.argmax(dim=1)  # (N, K, H, W), (N, H, W)


def export_onnx(
    model: nn.Module, in_channels: int, size_multiple: int, path: Path
) -> onnx.ModelProto:
    """Export `model` (eval mode) to `path` and return the checked ONNX model."""
    model = model.eval()
    side = 4 * size_multiple
    example = torch.zeros(1, in_channels, side, side + size_multiple)
    dynamic = torch.export.Dim.DYNAMIC
    program = torch.onnx.export(
        WithLabels(model).eval(),  # the wrapper too, or the exporter warns of training mode
        (example,),
        input_names=["image"],
        output_names=["logits", "labels"],
        opset_version=OPSET,
        dynamic_shapes={"image": {0: dynamic, 2: dynamic, 3: dynamic}},
        dynamo=True,
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))
    proto = onnx.load(str(path))
    _name_dynamic_dims(proto)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return proto


def _name_dynamic_dims(proto: onnx.ModelProto) -> None:
    """Give the exporter's symbolic dims (s0, s53, ...) readable names."""
    image = proto.graph.input[0].type.tensor_type.shape.dim
    rename = {image[i].dim_param: name for i, name in zip((0, 2, 3), DIM_NAMES, strict=True)}
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
