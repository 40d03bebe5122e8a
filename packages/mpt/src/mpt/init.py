"""MPT's weight init (llm-foundry's `kaiming_normal_` scheme).

Linear and embedding weights: kaiming-normal (fan-in, `relu` gain, a = `init_gain`) or
normal(0, `init_std`) when that is set; embeddings normal(0, `emb_init_std`) when that is set.
Projections that write into the residual stream (`attn.out_proj`, `ffn.down_proj`) are divided by
sqrt(2 * n_layers) (`init_div_is_residual`). The fused q/k/v projection is initialized as its three
matrices, as llm-foundry's fused init does (it matters for `fan_mode="fan_out"` only). Biases zero, norm weights one. Works on plain tensors
and on FSDP2's sharded DTensors (each rank fills its own shards), so a meta-device model can be
sharded first and initialized after.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["init_weights", "residual_divisor"]


def residual_divisor(config) -> float:
    div = config.init_div_is_residual
    if div is True:
        return math.sqrt(2 * config.n_layers)
    if div is False:
        return 1.0
    return float(div)


@torch.no_grad()
def init_weights(model: nn.Module, config, *, seed: int | None = None) -> None:
    if seed is not None:
        torch.manual_seed(seed)
    divisor = residual_divisor(config)

    def fill(weight: torch.Tensor, std: float | None) -> None:
        if std is not None:
            nn.init.normal_(weight, 0.0, std)
        else:
            nn.init.kaiming_normal_(
                weight,
                a=config.init_gain,
                mode=config.fan_mode,
                nonlinearity=config.init_nonlinearity,
            )

    for module in model.modules():
        if isinstance(module, nn.Linear):
            fill(module.weight, config.init_std)
            rows = getattr(module, "_fused_rows", None)
            if rows and config.init_std is None and config.fan_mode == "fan_out":
                _fan_out_per_part(module.weight, rows)
            if getattr(module, "_is_residual", False):
                module.weight.div_(divisor)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            fill(
                module.weight,
                config.emb_init_std if config.emb_init_std is not None else config.init_std,
            )
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                module.weight.fill_(1.0)
            if module.bias is not None:
                module.bias.zero_()


def _fan_out_per_part(weight: torch.Tensor, rows: tuple[int, ...]) -> None:
    """Rescale a fused weight drawn with fan_out = all its rows so that each part has the std of
    its own fan_out (kaiming std ~ 1/sqrt(fan)): rows of a part times sqrt(total / part rows)."""
    total = sum(rows)
    scale = torch.cat([torch.full((n, 1), math.sqrt(total / n)) for n in rows])
    scale = scale.to(device=weight.device, dtype=weight.dtype)
    try:
        from torch.distributed.tensor import DTensor, Replicate, distribute_tensor
    except ImportError:  # torch without distributed
        DTensor = None
    if DTensor is not None and isinstance(weight, DTensor):
        mesh = weight.device_mesh
        scale = distribute_tensor(scale, mesh, [Replicate()] * mesh.ndim)
    weight.mul_(scale)
