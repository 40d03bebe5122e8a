"""Low-precision LayerNorm: LayerNorm that runs in the autocast dtype (model surgery at INIT).

Under autocast, torch runs `layer_norm` in float32 (its input upcast, its output float32), which
costs memory traffic between bf16 matmuls. `LPLayerNorm` instead casts the input, weight and
bias to the autocast dtype (bf16 or fp16) and normalizes there, as llm-foundry's LPLayerNorm
does. Outside autocast it is an ordinary LayerNorm.

The surgery changes the class of each `nn.LayerNorm` in place (`module.__class__ = LPLayerNorm`)
instead of building new modules: the parameters stay the very same objects, so the optimizer,
FSDP2 (which holds references to the modules it manages) and any hooks keep working, and no
weights are copied. Subclasses of LayerNorm are left alone (they may override `forward`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from composer_lite.core import Algorithm, Logger, State
from composer_lite.events import Event

__all__ = ["LPLayerNorm", "LowPrecisionLayerNorm", "apply_low_precision_layernorm"]


class LPLayerNorm(nn.LayerNorm):
    """nn.LayerNorm that, under autocast, computes in the autocast dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        if not torch.is_autocast_enabled(device_type):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device_type)
        weight = self.weight.to(dtype) if self.weight is not None else None
        bias = self.bias.to(dtype) if self.bias is not None else None
        with torch.autocast(device_type=device_type, enabled=False):
            return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps)


def apply_low_precision_layernorm(model: nn.Module) -> int:
    """Turn every plain `nn.LayerNorm` in `model` into an `LPLayerNorm`; return how many."""
    count = 0
    for module in model.modules():
        if type(module) is nn.LayerNorm:
            module.__class__ = LPLayerNorm
            count += 1
    return count


class LowPrecisionLayerNorm(Algorithm):
    """At INIT, swap the model's LayerNorms for `LPLayerNorm` (see the module docstring).

    require: raise if the model has no plain nn.LayerNorm (the algorithm would do nothing).
    """

    def __init__(self, *, require: bool = True) -> None:
        self.require = require
        self.replaced = 0

    def match(self, event: Event, state: State) -> bool:
        return event is Event.INIT

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        self.replaced = apply_low_precision_layernorm(state.model)
        if self.replaced == 0 and self.require:
            raise ValueError(
                f"LowPrecisionLayerNorm found no nn.LayerNorm in {type(state.model).__name__}; "
                "remove the algorithm or pass require=False"
            )
