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
from foundry.planning.memory import GIB, Memory, Setup
from foundry.planning.render import render_plan
from foundry.planning.setups import Option, model_name, option, options, run_memory, setup_of
from foundry.planning.throughput import Duration, Throughput, duration, throughput
from foundry.recipe import PrecisionChoice
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
    "Plan",
    "PlanCommand",
    "StandIns",
    "TOKENS_PER_PARAM",
    "make_plan",
    "plan_for_command",
    "plan_for_train",
    "plan_picks_micro_batch",
    "run_command",
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
    micro_batch: int | None = opt(
        None, "sequences per GPU per forward; null: the largest that fits"
    )
    global_batch_size: int | None = opt(
        None, "sequences per optimizer step, all GPUs; null: unknown (gradients accumulate)"
    )
    precision: PrecisionChoice = opt(
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
        world = self.hardware.world_size
        if self.global_batch_size is not None and (
            self.global_batch_size < world or self.global_batch_size % world
        ):
            raise ValueError(
                f"global_batch_size must be a positive multiple of the {world} GPUs of hardware,"
                f" got {self.global_batch_size}"
            )


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The arithmetic of one run; `render()` is the text `foundry plan` and `train` print."""

    model: MPTConfig
    model_name: str | None
    hardware: HardwareConfig
    seq_len: int
    tokens: int | None
    per_gpu_batch: int | None  # sequences per GPU per optimizer step; None: unknown
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
        return render_plan(self)


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
    per_gpu_batch: int | None = None,
    notes: tuple[str, ...] = (),
) -> Plan:
    """The plan of a run: see the module docstring. `mfu` None: our measurement of this model on
    this GPU at this sequence length, else `ASSUMED_MFU` (the plan says which). `micro_batch`
    None: the largest that fits. `per_gpu_batch`: sequences per GPU per optimizer step (None:
    unknown, so gradients are taken to accumulate over micro-batches)."""
    hw, knobs = hardware, dict(precision=precision, optimizer=optimizer, attn_impl=attn_impl)
    setup = setup_of(hw, parallelism, **knobs)
    name = model_name(model)
    if mfu is not None:
        source = "given (mfu=...)"
    elif hw.peak_bf16_flops is None:
        source = f"none: hardware.peak_bf16_flops is null for gpu {hw.gpu!r}"
    elif (found := find_measurement(name, hw.gpu, seq_len)) is not None:
        mfu = found.mfu
        source = (
            f"measured: {found.model}, micro-batch {found.micro_batch},"
            f" {found.setup.precision} recipe, {found.where}"
        )
        if found.gpus != hw.world_size:
            source += (
                f"; on {found.gpus} GPU, not {hw.world_size}: FSDP2's own cost is not in it"
                " (on a one-GPU mesh it took 26% of a 356M GPT's eager step, RESULTS.md)"
            )
    else:
        mfu = ASSUMED_MFU
        source = (
            f"assumed: no measurement of {name or 'this model'} on {hw.gpu} at seq {seq_len}"
            " in tools/bench/RESULTS.md; set mfu=..."
        )
    budget = None
    if hw.gpu_memory_gb is not None:
        budget = hw.gpu_memory_gb * GIB * (1 - MEMORY_RESERVE)
    per_gpu = per_gpu_batch
    choices = options(model, hw, parallelism, setup, seq_len, budget, mfu, knobs, per_gpu)
    run = option(model, hw, setup, "as configured", seq_len, budget, mfu, per_gpu)
    mb = micro_batch or run.micro_batch or 1
    memory = run_memory(model, setup, mb, seq_len, per_gpu)
    fits = None if budget is None else memory.total <= budget
    speed = None
    if fits is not False and mfu is not None and hw.peak_bf16_flops is not None:
        speed = throughput(model, setup, hw, micro_batch=mb, seq_len=seq_len, mfu=mfu)
    elif fits is False:
        best = [o for o in choices if o.throughput is not None]
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
        per_gpu_batch=per_gpu,
        setup=setup,
        micro_batch=mb,
        fits=fits,
        memory=memory,
        budget_bytes=budget,
        options=choices,
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


@dataclass(frozen=True, kw_only=True)
class StandIns:
    """Which values of a train config stand in for ones the user has not given yet (a draft
    launch, `foundry.launch_draft`): the plan then says what it assumed instead of using them."""

    max_duration: bool = False  # days and cost for TOKENS_PER_PARAM tokens per parameter
    # the global batch given, which does not divide the ranks: the per-GPU batch is unknown,
    # and the plan takes the largest micro-batch that fits
    global_train_batch_size: int | None = None


# Tokens per parameter of a compute-optimal run (Hoffmann et al. 2022, "Training
# Compute-Optimal Large Language Models": about 20); the budget a draft plan assumes.
TOKENS_PER_PARAM = 20


def plan_picks_micro_batch(cfg: TrainCommand) -> bool:
    """Whether the plan picks the run's micro-batch (foundry train then runs it): none is
    configured, and the run is on GPUs of a stated memory."""
    hw = cfg.hardware
    return cfg.device_train_microbatch_size is None and hw.gpu != "cpu" and bool(hw.gpu_memory_gb)


def plan_for_train(cfg: TrainCommand, *, stand_ins: StandIns = StandIns()) -> Plan:
    """The plan of a `foundry train` config: its model, hardware, parallelism, precision,
    optimizer, attention, micro-batch (the configured one; 'auto', or none on GPUs: the largest
    that fits, as train runs it) and the tokens of its max_duration, at the data's sequence
    length."""
    if stand_ins.max_duration:
        tokens = TOKENS_PER_PARAM * cfg.model.num_params()
        notes: tuple[str, ...] = (
            f"max_duration not set: days and cost are for {TOKENS_PER_PARAM} tokens per"
            " parameter (compute-optimal, Hoffmann et al. 2022)",
        )
    else:
        tokens, notes = _train_tokens(cfg)
    if stand_ins.global_train_batch_size is not None:
        per_rank, micro = None, None
        notes += (
            f"global_train_batch_size {stand_ins.global_train_batch_size} does not divide the"
            f" {cfg.hardware.world_size} ranks: set a multiple of {cfg.hardware.world_size}"
            " (ranks x the micro-batch below x accumulation)",
        )
    else:
        per_rank = cfg.global_train_batch_size // cfg.hardware.world_size
        micro = cfg.device_train_microbatch_size
        micro = per_rank if micro is None else (None if micro == "auto" else max(int(micro), 1))
        micro = None if plan_picks_micro_batch(cfg) else micro
    return make_plan(
        model=cfg.model,
        hardware=cfg.hardware,
        parallelism=cfg.parallelism,
        precision=cfg.precision,
        optimizer=cfg.optimizer.name,
        attn_impl=cfg.attn_impl,
        seq_len=cfg.data.max_seq_len,
        tokens=tokens,
        micro_batch=micro,
        per_gpu_batch=per_rank,
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
        per_gpu_batch=(
            None
            if cfg.global_batch_size is None
            else cfg.global_batch_size // cfg.hardware.world_size
        ),
    )


def run_command(cfg: PlanCommand, config_text: str) -> int:
    """`foundry plan`: print the plan, or with table=mpt_announcement the published table."""
    if cfg.table == "mpt_announcement":
        print(announcement.format_table(announcement.rows()))
        return 0
    print(plan_for_command(cfg).render())
    return 0
