"""Architecture registry: one name per family, built from its dataclass config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from torch import nn

from models.dilated import DilatedConfig, DilatedNet
from models.unet import UNet, UNetConfig

ARCHITECTURES: dict[str, tuple[type, Callable[[Any], nn.Module]]] = {
    "unet": (UNetConfig, UNet),
    "dilated": (DilatedConfig, DilatedNet),
}


def size_multiple(model: nn.Module) -> int:
    """The factor input height and width must be multiples of."""
    return int(model.cfg.size_multiple)  # type: ignore[union-attr]


def build_model(arch: str, **options: Any) -> nn.Module:
    """Build architecture `arch` with config fields given as keyword options."""
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    config_cls, model_cls = ARCHITECTURES[arch]
    known = {f.name for f in fields(config_cls)}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"{arch} has no options {sorted(unknown)}; known: {sorted(known)}")
    if isinstance(options.get("widths"), list):
        options["widths"] = tuple(options["widths"])
    return model_cls(config_cls(**options))
