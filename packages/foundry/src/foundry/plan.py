"""`foundry plan`: the arithmetic of a training run before it runs.

    foundry plan model=mpt_30b hardware=512xh100 tokens=1T
    foundry plan table=mpt_announcement
    plan_for_train(cfg).render()        # what `foundry train` prints before it starts

A plan gives the parameters and FLOPs per token; the memory per GPU (weights, gradients,
optimizer state, weight copies, activations) of the run as configured and under FSDP2 full and
hybrid sharding, with and without activation checkpointing; the largest micro-batch that fits;
tokens/s per GPU from an MFU figure (ours, measured, from `planning.measured`, else an assumption
the output names) and a model of the all-gathers and reduce-scatters over the hardware's links;
and the days and cost of a token budget. The formulas and their sources are in
`foundry.planning.memory` and `foundry.planning.throughput`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from foundry.planning import announcement
from foundry.planning.measured import find_measurement
from foundry.planning.memory import (
    ATTENTION_MEMORY,
    GIB,
    Memory,
    Setup,
    largest_micro_batch,
    memory_per_gpu,
)
from foundry.planning.throughput import Duration, Throughput, duration, throughput
from foundry.schema import (
    HardwareConfig,
    OptimizerConfig,
    ParallelismConfig,
    TrainCommand,
    parse_count,
)
from foundry.validate import need, opt
from mpt.config import MPTConfig

__all__ = [
    "ASSUMED_MFU",
    "MEMORY_RESERVE",
    "Option",
    "Plan",
    "PlanCommand",
    "make_plan",
    "plan_for_command",
    "plan_for_train",
    "run_command",
    "setup_of",
]

# MFU used when we have no measurement of the model on the GPU at the sequence length: the
# MPT announcements imply 37-48% on 440-512 GPUs (`foundry plan table=mpt_announcement`).
ASSUMED_MFU = 0.40
# Share of each GPU's memory left out of the plan: the CUDA context, NCCL's buffers and the
# caching allocator's fragmentation (an assumption).
MEMORY_RESERVE = 0.10


@dataclass(frozen=True, kw_only=True)
class PlanCommand:
    """`foundry plan`: parameters, FLOPs, memory per GPU, micro-batch, throughput, days, cost."""

    model: MPTConfig = need("the model (pick one: model=<option>)")
    hardware: HardwareConfig = need("the machines (pick one: hardware=<option>)")
    optimizer: OptimizerConfig = need("the optimizer (pick one: optimizer=<option>)")
    tokens: str = opt("1T", "the token budget ('1T', '300B')")
    seq_len: int | None = opt(None, "tokens per sequence; null: the model's max_seq_len")
    mfu: float | None = opt(None, "MFU of the computation; null: our measurement, else assumed")
    micro_batch: int | None = opt(None, "sequences per GPU per step; null: the largest that fits")
    precision: Literal["auto", "fp32", "amp_bf16", "amp_fp16"] = opt(
        "auto", "as foundry train: auto is amp_bf16 on GPUs, fp32 on CPUs"
    )
    attn_impl: str = opt("auto", "attention backend; auto: triton on GPUs, sdpa on CPUs")
    parallelism: ParallelismConfig = opt(ParallelismConfig, "FSDP2 as foundry train runs it")
    table: Literal["mpt_announcement"] | None = opt(
        None, "print a published table instead: mpt_announcement (MosaicML's MPT and GPT runs)"
    )

    def __post_init__(self) -> None:
        if self.seq_len is not None and self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1 (or null), got {self.seq_len}")
        if self.mfu is not None and not 0 < self.mfu <= 1:
            raise ValueError(f"mfu must be a fraction in (0, 1] (0.4 for 40%), got {self.mfu}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1 (or null), got {self.micro_batch}")


@dataclass(frozen=True, kw_only=True)
class Option:
    """One way to hold the model: its setup, the largest micro-batch that fits, its figures."""

    label: str
    setup: Setup
    micro_batch: int  # the largest that fits; 0: none does
    memory: Memory  # at that micro-batch (at 1 when none fits)
    throughput: Throughput | None  # None: no peak FLOP/s, or nothing fits


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The arithmetic of one run; `render()` is the text `foundry plan` and `train` print."""

    model: MPTConfig
    model_name: str | None
    hardware: HardwareConfig
    seq_len: int
    tokens: int | None
    setup: Setup
    micro_batch: int  # the run's (configured, else the largest that fits, else 1)
    fits: bool | None  # None: the hardware states no memory
    memory: Memory
    budget_bytes: float | None
    options: tuple[Option, ...]
    mfu: float | None
    mfu_source: str
    throughput: Throughput | None
    duration: Duration | None
    notes: tuple[str, ...] = ()

    def render(self) -> str:
        from foundry.planning.render import render_plan

        return render_plan(self)


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
    choose): precision auto -> amp_bf16 on GPUs, fp32 on CPUs; FSDP2 when there is more than one
    rank (param_dtype bf16/fp16 -> bf16 all-gathers, else autocast over fp32 weights); attention
    auto -> triton on GPUs, sdpa on CPUs. `sharding` and `activation_checkpointing` override."""
    on_gpu = hw.gpu != "cpu"
    if precision == "auto":
        precision = "amp_bf16" if on_gpu else "fp32"
    world = hw.world_size
    sharded = p.fsdp and world > 1
    shards = _shard_group(hw, p, sharding or p.sharding) if sharded else 1
    if sharded and p.param_dtype is not None:
        kind = "fsdp_bf16"
    else:
        kind = "fp32" if precision == "fp32" else "amp_bf16"
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


def _option(model, hw, setup, label, seq_len, budget, mfu) -> Option:
    if budget is None:
        mb = 1
    else:
        mb = largest_micro_batch(model, setup, seq_len=seq_len, budget_bytes=budget)
    memory = memory_per_gpu(model, setup, micro_batch=max(mb, 1), seq_len=seq_len)
    speed = None
    if mb and mfu is not None and hw.peak_bf16_flops is not None:
        speed = throughput(model, setup, hw, micro_batch=mb, seq_len=seq_len, mfu=mfu)
    return Option(label=label, setup=setup, micro_batch=mb, memory=memory, throughput=speed)


def _options(model, hw, p, base: Setup, seq_len, budget, mfu, knobs) -> tuple[Option, ...]:
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
                out.append(_option(model, hw, setup, label, seq_len, budget, mfu))
    return tuple(out)


def make_plan(
    *,
    model: MPTConfig,
    hardware: HardwareConfig,
    parallelism: ParallelismConfig,
    precision: str,
    optimizer: str,
    attn_impl: str,
    seq_len: int,
    tokens: int | None,
    mfu: float | None = None,
    micro_batch: int | None = None,
    notes: tuple[str, ...] = (),
) -> Plan:
    """The plan of a run: see the module docstring. `mfu` None: our measurement of this model on
    this GPU at this sequence length, else `ASSUMED_MFU` (the plan says which)."""
    hw, knobs = hardware, dict(precision=precision, optimizer=optimizer, attn_impl=attn_impl)
    setup = setup_of(hw, parallelism, **knobs)
    name = model_name(model)
    if mfu is not None:
        source = "given (mfu=...)"
    elif hw.peak_bf16_flops is None:
        source = f"none: hardware.peak_bf16_flops is null for gpu {hw.gpu!r}"
    elif (found := find_measurement(name, hw.gpu, seq_len)) is not None:
        mfu = found.mfu
        source = f"measured: {found.model}, micro-batch {found.micro_batch}, {found.where}"
    else:
        mfu = ASSUMED_MFU
        source = (
            f"assumed: no measurement of {name or 'this model'} on {hw.gpu} at seq {seq_len}"
            " in tools/bench/RESULTS.md; set mfu=..."
        )
    budget = None
    if hw.gpu_memory_gb is not None:
        budget = hw.gpu_memory_gb * GIB * (1 - MEMORY_RESERVE)
    options = _options(model, hw, parallelism, setup, seq_len, budget, mfu, knobs)
    run = _option(model, hw, setup, "as configured", seq_len, budget, mfu)
    mb = micro_batch or run.micro_batch or 1
    memory = memory_per_gpu(model, setup, micro_batch=mb, seq_len=seq_len)
    fits = None if budget is None else memory.total <= budget
    speed = None
    if fits is not False and mfu is not None and hw.peak_bf16_flops is not None:
        speed = throughput(model, setup, hw, micro_batch=mb, seq_len=seq_len, mfu=mfu)
    elif fits is False:
        best = [o for o in options if o.throughput is not None]
        if best:
            pick = max(best, key=lambda o: o.throughput.tokens_per_second)
            speed = pick.throughput
            notes += (
                f"as configured it does not fit; days and cost below are for {pick.label},"
                f" micro-batch {pick.micro_batch}",
            )
    spent = None
    if speed is not None and tokens is not None:
        spent = duration(
            tokens,
            tokens_per_second=speed.tokens_per_second,
            gpus=hw.world_size,
            price_per_gpu_hour=hw.price_per_gpu_hour,
        )
    return Plan(
        model=model,
        model_name=name,
        hardware=hw,
        seq_len=seq_len,
        tokens=tokens,
        setup=setup,
        micro_batch=mb,
        fits=fits,
        memory=memory,
        budget_bytes=budget,
        options=options,
        mfu=mfu,
        mfu_source=source,
        throughput=speed,
        duration=spent,
        notes=notes,
    )


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+\s*[kKmMbBtT]?)\s*(tok|sp|ba)\s*$")


def _train_tokens(cfg: TrainCommand) -> tuple[int | None, tuple[str, ...]]:
    """Tokens of a train config's max_duration ('26Btok', '1000ba', '2000sp'); None for epochs."""
    found = _DURATION.match(str(cfg.max_duration))
    if not found:
        return None, (
            f"max_duration {cfg.max_duration!r} is not in tokens, samples or batches:"
            " no days or cost",
        )
    count = parse_count(found[1].replace(" ", ""), key="max_duration")
    per = {"tok": 1, "sp": cfg.data.max_seq_len}
    per["ba"] = cfg.global_train_batch_size * cfg.data.max_seq_len
    return count * per[found[2]], ()


def plan_for_train(cfg: TrainCommand) -> Plan:
    """The plan of a `foundry train` config: its model, hardware, parallelism, precision,
    optimizer, attention, micro-batch (the configured one; 'auto': the largest that fits) and
    the tokens of its max_duration, at the data's sequence length."""
    tokens, notes = _train_tokens(cfg)
    per_rank = cfg.global_train_batch_size // cfg.hardware.world_size
    micro = cfg.device_train_microbatch_size
    if micro is None:
        micro = per_rank
    return make_plan(
        model=cfg.model,
        hardware=cfg.hardware,
        parallelism=cfg.parallelism,
        precision=cfg.precision,
        optimizer=cfg.optimizer.name,
        attn_impl=cfg.attn_impl,
        seq_len=cfg.data.max_seq_len,
        tokens=tokens,
        micro_batch=None if micro == "auto" else max(int(micro), 1),
        notes=notes,
    )


def plan_for_command(cfg: PlanCommand) -> Plan:
    """The plan of a `foundry plan` config."""
    return make_plan(
        model=cfg.model,
        hardware=cfg.hardware,
        parallelism=cfg.parallelism,
        precision=cfg.precision,
        optimizer=cfg.optimizer.name,
        attn_impl=cfg.attn_impl,
        seq_len=cfg.seq_len or cfg.model.max_seq_len,
        tokens=parse_count(cfg.tokens, key="tokens"),
        mfu=cfg.mfu,
        micro_batch=cfg.micro_batch,
    )


def run_command(cfg: PlanCommand, config_text: str) -> int:
    """`foundry plan`: print the plan, or with table=mpt_announcement the published table."""
    if cfg.table == "mpt_announcement":
        print(announcement.format_table(announcement.rows()))
        return 0
    print(plan_for_command(cfg).render())
    return 0
