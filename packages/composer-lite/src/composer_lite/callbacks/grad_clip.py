"""Gradient clipping: the plain function `clip_grad_norm`, then the thin `GradClip` callback.

The callback clips at BEFORE_OPTIMIZER_STEP, when the gradients of the whole global batch are
complete, averaged over ranks and (with fp16) unscaled. The norm it reports is the one before
clipping.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from composer_lite.core import Callback, Logger, State

__all__ = ["GradClip", "clip_grad_norm"]


def clip_grad_norm(model: nn.Module, max_norm: float, *, norm_type: float = 2.0) -> float:
    """Scale all gradients of `model` so their total norm is at most `max_norm`; return the norm
    they had before (all ranks agree on it).

    FSDP2 (DTensor) gradients: `composer_lite.parallel.clip_grad_norm_` when that module provides
    it, else `torch.nn.utils.clip_grad_norm_`, which in torch >= 2.6 handles DTensor gradients (the
    norm comes back as a DTensor; its `full_tensor()` is the global norm). A non-finite norm is
    returned as is (the gradients then hold non-finite values: the guard decides what to do).
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be a positive number, got {max_norm!r}")
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    clip = _sharded_clip() or torch.nn.utils.clip_grad_norm_
    norm = clip(params, max_norm, norm_type=norm_type)
    full = getattr(norm, "full_tensor", None)
    return float(full() if callable(full) else norm)


def _sharded_clip():
    try:  # FSDP2-aware (groups DTensor and plain grads); torch's own if parallel is unavailable
        from composer_lite.parallel import clip_grad_norm_
    except ImportError:
        return None
    return clip_grad_norm_


class GradClip(Callback):
    """Clip the gradient norm to `max_norm` before every optimizer step.

    Adds `grad/norm` (the norm before clipping) to the step's metrics.
    """

    def __init__(self, max_norm: float, *, norm_type: float = 2.0) -> None:
        if not (isinstance(max_norm, (int, float)) and max_norm > 0 and math.isfinite(max_norm)):
            raise ValueError(f"GradClip(max_norm=...) must be a positive number, got {max_norm!r}")
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)

    def before_optimizer_step(self, state: State, logger: Logger) -> None:
        norm = clip_grad_norm(state.model, self.max_norm, norm_type=self.norm_type)
        state.metrics["grad/norm"] = norm
