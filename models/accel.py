"""Where and how training runs: device choice, bf16 autocast, channels_last, loaders.

On CUDA: cuDNN autotuning (`cudnn.benchmark`, the crop size is fixed), TF32 matrix
products, bf16 autocast (no loss scaling needed, unlike fp16), channels_last weights
and inputs (what cuDNN's fastest convolution kernels want), and augmentation in
DataLoader worker processes with pinned memory and non-blocking copies. On the CPU the
same code runs in float32 with the usual memory format, so tests exercise it.
Every call here exists in torch 2.11 (the GPU machine's version).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from models.datasets import EpochSampler, SegmentationDataset


def pick_device(name: str) -> torch.device:
    """ "auto": CUDA when there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no CUDA device")
    return device


def configure(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves float32


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    if channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    x = x.to(device, non_blocking=device.type == "cuda")
    if channels_last and device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on CUDA when enabled; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_loader(
    dataset: SegmentationDataset,
    sampler: EpochSampler,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> DataLoader[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches of augmented crops; `workers` > 0 augments in that many persistent
    processes (the sampler's keys carry the epoch to them)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights as contiguous CPU tensors (loadable anywhere, any memory format)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def first_batches(
    dataset: SegmentationDataset, count: int, batch_size: int
) -> Iterator[torch.Tensor]:
    """`count` batches of augmented training images (epoch 0's first keys), on the CPU."""
    for b in range(count):
        keys = [(0, i) for i in range(b * batch_size, (b + 1) * batch_size)]
        yield torch.stack([dataset[k][0] for k in keys])
