"""Numerical precision of the training step: autocast and, for fp16, a gradient scaler.

`fp32` runs as is; `amp_bf16` and `amp_fp16` run forward and loss under `torch.autocast`; fp16 also
scales the loss so small gradients do not underflow. With FSDP2, parameters can instead be cast
by its mixed-precision policy (`ParallelConfig.param_dtype`), reducing gradients in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["PRECISIONS", "autocast", "grad_scaler"]

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "amp_bf16": torch.bfloat16,
    "amp_fp16": torch.float16,
}


def _dtype(precision: str) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {sorted(PRECISIONS)}")
    return PRECISIONS[precision]


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    dtype = _dtype(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for amp_fp16, else None."""
    return torch.amp.GradScaler(device.type) if _dtype(precision) is torch.float16 else None
