"""Load a shipped ONNX file's weights back into its torch model, to fine-tune it.

The exporter folds each batch norm into the convolution before it: the graph holds the
folded kernel as `<prefix><conv>.weight` and the folded bias as
`<prefix><conv>.weight_bias` (or `<prefix><conv>.bias` for convolutions without a batch
norm). The prefix is the path of the network inside the exported wrapper: `model.` for
export/onnx_export.py's, `model/model.` inside export/canonical.py's uint8-input graph;
it is found from the first weight's name. Loading puts the folded
kernel into the convolution and turns the batch norm into `x + bias` (mean 0, variance
1 - eps, scale 1), the same function in eval mode. `recalibrate_batch_norm` then gives
each batch norm the statistics of its input on real images and compensates scale and
shift, still the same eval-mode function, so that training mode (which normalises by
batch statistics) starts near it too.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn


def conv_batch_norm_pairs(
    model: nn.Module,
) -> list[tuple[str, nn.Module, nn.BatchNorm2d]]:
    """(name, convolution, batch norm) for each convolution followed by a batch norm in a
    Sequential, the pattern the exporter folds."""
    pairs = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (name, conv), (_, norm) in itertools.pairwise(children):
            if isinstance(conv, nn.Conv2d | nn.ConvTranspose2d) and isinstance(
                norm, nn.BatchNorm2d
            ):
                pairs.append((f"{parent_name}.{name}" if parent_name else name, conv, norm))
    return pairs


def load_onnx_weights(model: nn.Module, path: Path) -> nn.Module:
    """Copy the ONNX initializers of `path` into `model` (built with the same
    architecture options); raises KeyError naming the weights the graph lacks."""
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    pairs = conv_batch_norm_pairs(model)
    names = {id(m): name for name, m in model.named_modules()}
    norms = {names[id(norm)] for _, _, norm in pairs}
    state = model.state_dict()
    first = next(iter(state))
    prefixes = [name[: -len(first)] for name in weights if name.endswith(first)]
    if not prefixes:
        raise KeyError(f"{path} holds no weight named like {first!r}: another network?")
    prefix = min(prefixes, key=len)
    new: dict[str, torch.Tensor] = {}
    missing: list[str] = []

    def take(key: str, source: str) -> None:
        if source not in weights:
            missing.append(source)
            return
        value = torch.from_numpy(np.array(weights[source]))
        if tuple(value.shape) != tuple(state[key].shape):
            raise ValueError(
                f"{source}: shape {tuple(value.shape)}, model wants {state[key].shape}"
            )
        new[key] = value.to(state[key].dtype)

    for key in state:
        module = key.rpartition(".")[0]
        if module in norms:
            continue  # set below from the folded bias
        take(key, prefix + key)  # in `folded` convolutions: the folded kernel
    for name, _, norm in pairs:
        bias = prefix + f"{name}.weight_bias"
        if bias not in weights:
            missing.append(bias)
            continue
        norm_name = names[id(norm)]
        new[f"{norm_name}.weight"] = torch.ones(norm.num_features)
        new[f"{norm_name}.bias"] = torch.from_numpy(np.array(weights[bias], np.float32))
        new[f"{norm_name}.running_mean"] = torch.zeros(norm.num_features)
        new[f"{norm_name}.running_var"] = torch.full((norm.num_features,), 1.0 - norm.eps)
        new[f"{norm_name}.num_batches_tracked"] = torch.tensor(0)
    if missing:
        raise KeyError(f"{path} lacks weights {missing[:5]} ({len(missing)} in all)")
    model.load_state_dict(new, strict=True)
    return model


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Give each batch norm its input's per-channel mean and variance over `batches`,
    with scale and shift adjusted so that the eval-mode function does not change."""
    norms = [norm for _, _, norm in conv_batch_norm_pairs(model)]
    moments: dict[int, list[torch.Tensor]] = {id(norm): [] for norm in norms}

    def hook(norm: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0].double()
        moments[id(norm)].append(torch.stack([x.mean((0, 2, 3)), (x * x).mean((0, 2, 3))]))

    handles = [norm.register_forward_hook(hook) for norm in norms]
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    model.train(was_training)
    for norm in norms:
        if not moments[id(norm)] or norm.running_mean is None or norm.running_var is None:
            continue
        mean, square = torch.stack(moments[id(norm)]).mean(0)
        var = (square - mean * mean).clamp_min(0)
        # y = (x - mu) / sigma * gamma + beta stays the same function with new (mu', sigma')
        # when gamma' = gamma * sigma' / sigma and beta' = beta + (mu' - mu) * gamma / sigma.
        sigma = torch.sqrt(norm.running_var.double() + norm.eps)
        sigma_new = torch.sqrt(var + norm.eps)
        gamma, mu = norm.weight.double(), norm.running_mean.double()
        norm.bias.copy_(norm.bias.double() + (mean - mu) * gamma / sigma)
        norm.weight.copy_(gamma * sigma_new / sigma)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
    return model


# app/spec.py's metadata key, repeated: app.spec needs pydantic, which the GPU machine
# that runs models.train lacks (tests/models check that the two agree)
SPEC_KEY = "segserve.spec"
STAGE_LINE = re.compile(r"^\d+\. ")


def onnx_lineage(path: Path) -> dict[str, Any]:
    """What a run fine-tuned from an exported ONNX file started from, for the model card:
    the file, the name and version its spec gives, and the training stages listed by the
    model card beside it (`<name>.md`, section "Training recipe"; none when absent)."""
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    spec = json.loads(props[SPEC_KEY]) if SPEC_KEY in props else {}
    name = spec.get("name") or path.name.split(".")[0]
    stages: list[str] = []
    card = path.with_name(f"{name}.md")
    if card.is_file():
        section = card.read_text(encoding="utf-8").split("## Training recipe", 1)
        body = section[1].split("\n## ", 1)[0] if len(section) == 2 else ""
        for line in body.strip().splitlines():
            line = line.strip()
            numbered = STAGE_LINE.match(line) is not None
            if numbered or (line and not stages):
                # an older card's single stage is not numbered
                stages.append(line if numbered else f"1. {line}")
            elif line:
                stages[-1] += f" {line}"  # a stage wrapped over lines
    return {
        "config": {"weights": str(path)},
        "onnx": {"path": str(path), "name": name, "version": spec.get("version")},
        "card_stages": stages,
    }
