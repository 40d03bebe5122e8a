"""Parallelism applied to a one-device model from outside: activation checkpointing, then
`torch.compile`, then FSDP2, in that fixed order (as torchtitan does).

    model = apply_parallelism(model, ParallelConfig(param_dtype="bf16"), device=device)

The units are the model's `blocks()` (the optional part of the trainable-model contract; see
`check_blocks`). Each block is checkpointed and compiled in place, by giving it a subclass whose
`forward` does the work, so parameter names, `state_dict` keys and `copy.deepcopy` are unchanged.
FSDP2 (`fully_shard`) then shards each block and, last, the root:

- with `blocks()`: one FSDP unit per block (its parameters are all-gathered just before it runs
  and freed after) plus the root, which holds the rest (embeddings, final norm, head);
- without `blocks()`: the root alone, one unit. That is correct for any model, tied weights
  included, but all-gathers every parameter at once; give the model `blocks()` for per-block
  memory. Guessing units among arbitrary children is not done: a child whose weights are tied to
  another child, or that is not called through `__call__`, would shard wrongly.

`sharding="full"` shards over all ranks (a 1-D mesh); `"hybrid"` (HSDP) shards within groups of
`shard_group_size` ranks and replicates across groups (a 2-D mesh ("replicate", "shard")).
With one process, or `fsdp=False`, nothing is sharded (the Trainer does plain data parallel).

`clip_grad_norm_` and `grad_norm` work on sharded (DTensor) and plain gradients alike.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.tensor import DTensor

from composer_lite._keys import reject_unknown_keys

__all__ = [
    "DTYPES",
    "SHARDINGS",
    "ParallelConfig",
    "apply_parallelism",
    "build_mesh",
    "check_blocks",
    "clip_grad_norm_",
    "grad_norm",
    "is_sharded",
]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

# sharding -> names of the mesh dimensions it shards over (outermost first)
SHARDINGS: dict[str, tuple[str, ...]] = {
    "full": ("shard",),
    "hybrid": ("replicate", "shard"),
}


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    """How to parallelize a model (see the module docstring for the order and the units).

    fsdp:                     shard with FSDP2 when the world size is > 1; False: plain data
                              parallel, done by the Trainer (checkpointing and compile still apply).
    sharding:                 "full" (over all ranks) or "hybrid" (HSDP: shard within a group of
                              ranks, replicate across groups).
    shard_group_size:         ranks per shard group for "hybrid"; None: ranks per node
                              (LOCAL_WORLD_SIZE, as torchrun sets it), so shards stay on NVLink.
    param_dtype:              "bf16" / "fp16": FSDP2 casts the all-gathered parameters to it for
                              forward and backward (sharded masters stay fp32); None: no cast.
    reduce_dtype:             dtype of the gradient reduce-scatter; "fp32" (the default) keeps the
                              sum over ranks exact enough even with bf16 parameters.
    reshard_after_forward:    free all-gathered blocks after forward (all-gather again in backward);
                              False keeps them, trading memory for one all-gather per block.
    activation_checkpointing: recompute each block's activations in backward (non-reentrant).
    compile:                  `torch.compile` each block (or the whole model without `blocks()`).
    compile_backend:          the `torch.compile` backend ("inductor"; "aot_eager" to debug).
    cpu_offload:              keep sharded parameters, gradients and optimizer state on the CPU.
    """

    fsdp: bool = True
    sharding: str = "full"
    shard_group_size: int | None = None
    param_dtype: str | None = None
    reduce_dtype: str = "fp32"
    reshard_after_forward: bool = True
    activation_checkpointing: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    cpu_offload: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.sharding not in SHARDINGS:
            problems.append(f"sharding={self.sharding!r} (choose from {sorted(SHARDINGS)})")
        if self.param_dtype is not None and self.param_dtype not in DTYPES:
            problems.append(
                f"param_dtype={self.param_dtype!r} (choose from {sorted(DTYPES)} or None)"
            )
        if self.reduce_dtype not in DTYPES:
            problems.append(f"reduce_dtype={self.reduce_dtype!r} (choose from {sorted(DTYPES)})")
        group = self.shard_group_size
        if group is not None and (
            isinstance(group, bool) or not isinstance(group, int) or group < 1
        ):
            problems.append(f"shard_group_size={group!r} (a positive int, or None)")
        if group is not None and self.sharding != "hybrid":
            problems.append(f"shard_group_size={group} is only used with sharding='hybrid'")
        if problems:
            raise ValueError("invalid ParallelConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> ParallelConfig:
        """A config from a mapping (foundry's YAML); every unknown key is named in one error."""
        reject_unknown_keys(cls, options, "ParallelConfig")
        return cls(**options)

    def mixed_precision(self) -> MixedPrecisionPolicy:
        """FSDP2's policy: parameters cast to `param_dtype`, gradients reduced in `reduce_dtype`."""
        return MixedPrecisionPolicy(
            param_dtype=DTYPES[self.param_dtype] if self.param_dtype is not None else None,
            reduce_dtype=DTYPES[self.reduce_dtype],
        )


# -- the contract for blocks() ----------------------------------------------------------------


def check_blocks(model: nn.Module) -> list[nn.Module] | None:
    """The model's `blocks()`, checked; None if the model does not offer `blocks()`.

    Blocks must be a non-empty list of distinct submodules of `model` (registered, so that
    `state_dict` and FSDP2 see them), none inside another and none sharing a parameter with the
    rest of the model (a tied weight cannot live in two FSDP units). Every problem is named in one
    error.
    """
    method = getattr(model, "blocks", None)
    if method is None:
        return None
    if not callable(method):
        raise TypeError(
            f"{type(model).__name__}.blocks should be a method returning list[nn.Module]"
        )
    blocks = method()
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise ValueError(
            f"{type(model).__name__}.blocks() should return a non-empty list of nn.Module, "
            f"got {blocks!r:.80}"
        )
    name_of = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    problems: list[str] = []
    seen: set[int] = set()
    block_ids = {id(b) for b in blocks}
    for i, block in enumerate(blocks):
        if not isinstance(block, nn.Module):
            problems.append(f"block {i} is a {type(block).__name__}, not an nn.Module")
            continue
        if block is model or id(block) not in name_of:
            problems.append(f"block {i} ({type(block).__name__}) is not a submodule of the model")
            continue
        label = f"block {i} ({name_of[id(block)]})"
        if id(block) in seen:
            problems.append(f"{label} is listed twice")
        seen.add(id(block))
        if any(id(m) in block_ids for m in block.modules() if m is not block):
            problems.append(f"{label} contains another block")
        own: dict[int, int] = {}
        for _, p in block.named_parameters(remove_duplicate=False):
            own[id(p)] = own.get(id(p), 0) + 1
        if any(counts[k] != n for k, n in own.items()):
            problems.append(f"{label} shares a parameter with the rest of the model")
    if problems:
        raise ValueError(
            f"{type(model).__name__}.blocks() does not follow the contract (distinct, disjoint "
            "submodules that own their parameters): " + "; ".join(problems)
        )
    return list(blocks)


# -- activation checkpointing and compile, in place --------------------------------------------

_WRAPPED: dict[tuple[type, bool, bool, str], type] = {}


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        # Non-reentrant: works with kwargs, inputs that need no grad, and torch.compile.
        return torch.utils.checkpoint.checkpoint(
            forward, self, *args, use_reentrant=False, **kwargs
        )

    return run


def _wrap_forward(module: nn.Module, *, checkpoint: bool, compile: bool, backend: str) -> None:
    """Give `module` a subclass of its class whose forward is checkpointed and/or compiled."""
    cls = type(module)
    if getattr(cls, "_composer_wrapped", False):
        raise ValueError(f"{cls.__name__} is already checkpointed or compiled by apply_parallelism")
    key = (cls, checkpoint, compile, backend)
    if key not in _WRAPPED:
        forward = _checkpointed(cls.forward) if checkpoint else cls.forward
        if compile:
            forward = torch.compile(forward, backend=backend)
        prefix = ("Checkpointed" if checkpoint else "") + ("Compiled" if compile else "")
        _WRAPPED[key] = type(
            prefix + cls.__name__,
            (cls,),
            {"forward": forward, "_composer_wrapped": True, "__module__": cls.__module__},
        )
    module.__class__ = _WRAPPED[key]


# -- FSDP2 --------------------------------------------------------------------------------------


def build_mesh(config: ParallelConfig, world_size: int, device_type: str) -> DeviceMesh:
    """The data-parallel mesh: 1-D ("shard",) for "full", 2-D ("replicate", "shard") for "hybrid".

    Ranks are laid out row-major, so a shard group is `shard_group_size` consecutive ranks (one
    node when it is LOCAL_WORLD_SIZE). Needs an initialized process group of `world_size` ranks.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("build_mesh needs torch.distributed initialized (init_process_group)")
    if world_size != dist.get_world_size():
        raise ValueError(
            f"world_size={world_size} but the process group has {dist.get_world_size()} ranks"
        )
    if config.sharding == "full":
        return init_device_mesh(device_type, (world_size,), mesh_dim_names=SHARDINGS["full"])
    group = config.shard_group_size
    if group is None:
        local = os.environ.get("LOCAL_WORLD_SIZE")
        if local is None:
            raise ValueError(
                "sharding='hybrid' needs shard_group_size, or LOCAL_WORLD_SIZE in the environment "
                "(torchrun sets it) to shard within a node"
            )
        group = int(local)
    if world_size % group:
        raise ValueError(
            f"sharding='hybrid': shard_group_size={group} does not divide world_size={world_size}"
        )
    return init_device_mesh(
        device_type, (world_size // group, group), mesh_dim_names=SHARDINGS["hybrid"]
    )


def apply_parallelism(
    model: nn.Module,
    config: ParallelConfig,
    *,
    device: torch.device,
    mesh: DeviceMesh | None = None,
) -> nn.Module:
    """Checkpoint, compile, then shard `model` in place as `config` says; returns it.

    The model is moved to `device` first (unless it is on the meta device). FSDP2 applies when
    `config.fsdp` and the world size is > 1, over `mesh` (default: `build_mesh`). Parameters are
    replaced by sharded DTensors, so build the optimizer afterwards (or re-bind it by name: the
    names do not change). The last block keeps its parameters after forward, since backward
    needs them at once.
    """
    if not isinstance(config, ParallelConfig):
        raise TypeError(f"config should be a ParallelConfig, got {type(config).__name__}")
    if is_sharded(model):
        raise ValueError(f"{type(model).__name__} is sharded already; apply parallelism once")
    blocks = check_blocks(model)
    if config.activation_checkpointing and blocks is None:
        raise ValueError(
            f"activation_checkpointing needs {type(model).__name__}.blocks(): checkpointing the "
            "whole model at once recomputes everything in backward and saves no peak memory"
        )
    if not any(p.is_meta for p in model.parameters()):
        model.to(device)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    shard = config.fsdp and world > 1
    if shard and mesh is None:  # before changing the model, so a bad mesh leaves it untouched
        mesh = build_mesh(config, world, device.type)
    if config.activation_checkpointing or config.compile:
        for unit in blocks if blocks is not None else [model]:
            _wrap_forward(
                unit,
                checkpoint=config.activation_checkpointing,
                compile=config.compile,
                backend=config.compile_backend,
            )
    if not shard:
        if config.param_dtype is not None:
            warnings.warn(
                f"param_dtype={config.param_dtype!r} is FSDP2's mixed precision and applies only "
                f"when sharding (fsdp={config.fsdp}, world size {world}); use the Trainer's "
                "precision='amp_bf16' instead",
                stacklevel=2,
            )
        return model
    offload = (
        CPUOffloadPolicy(pin_memory=device.type == "cuda")
        if config.cpu_offload
        else OffloadPolicy()
    )
    common = {"mesh": mesh, "mp_policy": config.mixed_precision(), "offload_policy": offload}
    for i, block in enumerate(blocks or []):
        last = i == len(blocks) - 1
        fully_shard(
            block, reshard_after_forward=config.reshard_after_forward and not last, **common
        )
    fully_shard(model, reshard_after_forward=config.reshard_after_forward, **common)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 has been applied: the model is an FSDP module or holds DTensor parameters."""
    return isinstance(model, FSDPModule) or any(isinstance(p, DTensor) for p in model.parameters())


# -- gradient norms -----------------------------------------------------------------------------


def _grad_groups(parameters: nn.Module | Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Parameters that have a gradient, grouped so that torch's foreach ops take each group:
    DTensor grads by (mesh, placements), plain grads by device."""
    if isinstance(parameters, nn.Module):
        params: Iterable[torch.Tensor] = parameters.parameters()
    else:
        params = [parameters] if isinstance(parameters, torch.Tensor) else parameters
    groups: dict[Any, list[torch.Tensor]] = {}
    for p in params:
        g = p.grad
        if g is not None:
            key = (g.device_mesh, g.placements) if isinstance(g, DTensor) else g.device
            groups.setdefault(key, []).append(p)
    return list(groups.values())


def _total_norm(groups: list[list[torch.Tensor]], norm_type: float) -> torch.Tensor:
    if not groups:
        return torch.tensor(0.0)
    norms = []
    for params in groups:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    if len(norms) == 1:
        return norms[0]
    device = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.float().to(device) for n in norms]), norm_type)


def grad_norm(
    parameters: nn.Module | Iterable[torch.Tensor], norm_type: float = 2.0
) -> torch.Tensor:
    """The total `norm_type` norm of all gradients, as a plain 0-dim tensor on the grads' device.

    Sharded (DTensor) gradients count once over their mesh: the norm is reduced across shards,
    so every rank gets the norm of the whole unsharded gradient. Grads on different meshes or
    placements (or plain ones beside them) are normed group by group and combined (the p-norm
    of the group norms; their max for inf). NaN and inf propagate. No gradients: 0.
    """
    return _total_norm(_grad_groups(parameters), norm_type)


def clip_grad_norm_(
    parameters: nn.Module | Iterable[torch.Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    *,
    error_if_nonfinite: bool = False,
) -> torch.Tensor:
    """Scale gradients in place so that their total norm is at most `max_norm`; returns the norm
    before clipping (see `grad_norm`: correct across FSDP2 shards). No host sync is needed."""
    groups = _grad_groups(parameters)
    total = _total_norm(groups, norm_type)
    if error_if_nonfinite and not torch.isfinite(total):
        raise RuntimeError(
            f"the total gradient norm ({norm_type}) is {float(total)}: not finite, so the "
            "gradients cannot be clipped; pass error_if_nonfinite=False to clip anyway"
        )
    for params in groups:  # foreach ops cannot mix DTensor and plain grads: one group at a time
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total
