"""The ways a run can hold its model, as foundry train would run them, and what each costs.

`setup_of` turns foundry's settings (hardware, parallelism, precision, optimizer, attention) into
the `memory.Setup` that composer-lite would run; `options` lists the run's recipe under FSDP2
full and hybrid sharding, with and without activation checkpointing (and, for autocast over
sharded fp32 weights, with FSDP2's param_dtype=bf16), each with the largest micro-batch that fits,
its memory and its tokens/s per GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from foundry.planning.memory import (
    ATTENTION_MEMORY,
    Memory,
    Setup,
    largest_micro_batch,
    memory_per_gpu,
)
from foundry.planning.throughput import Throughput, throughput
from foundry.recipe import resolve_precision
from foundry.schema import HardwareConfig, ParallelismConfig
from mpt.config import MPTConfig

__all__ = ["Option", "model_name", "option", "options", "run_memory", "setup_of"]


@dataclass(frozen=True, kw_only=True)
class Option:
    """One way to hold the model: its setup, the largest micro-batch that fits, its figures."""

    label: str
    setup: Setup
    micro_batch: int  # the largest that fits; 0: none does
    memory: Memory  # at that micro-batch (at 1 when none fits)
    throughput: Throughput | None  # None: no peak FLOP/s, or nothing fits


def _shard_group(hw: HardwareConfig, p: ParallelismConfig, sharding: str) -> int:
    if sharding == "full":
        return hw.world_size
    group = p.shard_group_size or hw.gpus_per_node
    if hw.world_size % group:
        raise ValueError(
            f"parallelism.shard_group_size: expected a divisor of the {hw.world_size} GPUs,"
            f" got {group}"
        )
    return group


def setup_of(
    hw: HardwareConfig,
    p: ParallelismConfig,
    *,
    precision: str,
    optimizer: str,
    attn_impl: str,
    sharding: str | None = None,
    activation_checkpointing: bool | None = None,
) -> Setup:
    """The `Setup` foundry train runs with these settings (as train.py and composer-lite
    choose): precision as `foundry.recipe` resolves it (auto: bf16_master on one GPU with Adam,
    amp_bf16 on several or with Lion, fp32 on CPUs); FSDP2 when there is more than one rank
    (param_dtype bf16/fp16, or auto on GPUs -> bf16 all-gathers, else autocast over fp32
    weights); attention auto -> triton on GPUs, sdpa on CPUs. `sharding` and
    `activation_checkpointing` override."""
    on_gpu = hw.gpu != "cpu"
    world = hw.world_size
    precision = resolve_precision(precision, on_gpu=on_gpu, world=world, optimizer=optimizer)
    sharded = p.fsdp and world > 1
    shards = _shard_group(hw, p, sharding or p.sharding) if sharded else 1
    chosen = p.param_dtype if p.param_dtype != "auto" else ("bf16" if on_gpu else None)
    if sharded and chosen is not None:
        kind = "fsdp_bf16"
    elif precision in ("fp32", "bf16_master"):
        kind = precision
    else:
        kind = "amp_bf16"
    attention = attn_impl if attn_impl != "auto" else ("triton" if on_gpu else "sdpa")
    if attention not in ATTENTION_MEMORY:
        raise ValueError(
            f"attn_impl: expected auto or one of {sorted(ATTENTION_MEMORY)}, got {attn_impl!r}"
        )
    checkpointing = p.activation_checkpointing
    return Setup(
        precision=kind,
        optimizer=optimizer,
        attention=attention,
        shard_ranks=shards,
        replicas=world // shards,
        activation_checkpointing=(
            checkpointing if activation_checkpointing is None else activation_checkpointing
        ),
    )


def model_name(model: MPTConfig) -> str | None:
    """The `mpt.presets` name of a model of the same shape, or None."""
    from mpt.presets import PRESETS, preset

    shape = ("d_model", "n_heads", "n_layers", "expansion_ratio", "vocab_size", "kv_n_heads")
    for name in PRESETS:
        known = preset(name)
        if all(getattr(known, k) == getattr(model, k) for k in shape):
            return name
    return None


def run_memory(
    model: MPTConfig, setup: Setup, mb: int, seq_len: int, per_gpu_batch: int | None
) -> Memory:
    """Memory at micro-batch `mb`; gradients accumulate unless `mb` is the whole per-GPU batch."""
    accumulating = per_gpu_batch is None or mb < per_gpu_batch
    return memory_per_gpu(model, setup, micro_batch=mb, seq_len=seq_len, accumulating=accumulating)


def option(model, hw, setup, label, seq_len, budget, mfu, per_gpu_batch) -> Option:
    if budget is None:
        mb = per_gpu_batch or 1
    else:
        mb = largest_micro_batch(
            model, setup, seq_len=seq_len, budget_bytes=budget, per_gpu_batch=per_gpu_batch
        )
    memory = run_memory(model, setup, max(mb, 1), seq_len, per_gpu_batch)
    speed = None
    if mb and mfu is not None and hw.peak_bf16_flops is not None:
        speed = throughput(model, setup, hw, micro_batch=mb, seq_len=seq_len, mfu=mfu)
    return Option(label=label, setup=setup, micro_batch=mb, memory=memory, throughput=speed)


def options(model, hw, p, base: Setup, seq_len, budget, mfu, knobs, per_gpu) -> tuple[Option, ...]:
    """The run's precision (and, for autocast over sharded fp32 weights, FSDP2's
    param_dtype=bf16 too) under full and hybrid sharding, with and without checkpointing."""
    shardings = ["full"]
    if hw.world_size > 1 and p.fsdp and _shard_group(hw, p, "hybrid") != hw.world_size:
        shardings.append("hybrid")
    precisions = [base.precision]
    if base.precision == "amp_bf16" and base.shard_ranks > 1:
        precisions.append("fsdp_bf16")
    out = []
    for precision in precisions:
        for sharding in shardings:
            for ac in (False, True):
                setup = setup_of(hw, p, **knobs, sharding=sharding, activation_checkpointing=ac)
                setup = Setup(**{**vars(setup), "precision": precision})
                groups = f"{setup.shard_ranks}" + (
                    f" x {setup.replicas}" if setup.replicas > 1 else ""
                )
                name = sharding if setup.shard_ranks > 1 else "none"
                label = f"{name} ({groups})" + (", checkpointing" if ac else "")
                if precision != base.precision:
                    label += ", param_dtype=bf16"
                out.append(option(model, hw, setup, label, seq_len, budget, mfu, per_gpu))
    return tuple(out)
