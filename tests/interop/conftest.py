"""Tests with real architectures from other projects (random weights, nothing downloads).

torchvision's wheel on PyPI carries a CUDA build of its compiled ops (`torchvision._C`),
which does not load beside the CPU torch wheel; torchvision then fails at import with
"operator torchvision::nms does not exist", because its `_meta_registrations` registers a
fake kernel for `nms` and `qnms` whether or not `_C` loaded (the other ops are registered
only when it did). Defining just those two operators' schemas with torch.library before
the first import makes torchvision (and segmentation_models_pytorch, timm and
transformers, which import it) importable: the segmentation models are plain Python and
never call the detection ops; a call to nms would still fail, with no kernel to run. (With
a torchvision whose `_C` does load, defining them first makes that load fail quietly, which
these tests do not notice either.)
"""

from __future__ import annotations

import torch

_TORCHVISION_OPS = torch.library.Library("torchvision", "FRAGMENT")
for _schema in (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
):
    if not hasattr(torch.ops.torchvision, _schema.split("(")[0]):
        _TORCHVISION_OPS.define(_schema)
