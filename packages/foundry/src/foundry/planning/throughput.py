"""Tokens/s per GPU from an MFU figure and a model of FSDP2's communication; days and cost.

Compute. A micro-batch of b sequences of T tokens takes b·T·F / (MFU·peak) seconds, with F the
training FLOPs per token of llm-foundry's MFU, 6·N + 12·L·d·T (`MPTConfig.flops_per_token`:
Kaplan et al. 2020's 6N for the weights' forward and backward, plus the attention scores and
values, forward and backward, without causal savings), and peak the GPU's dense bf16 FLOP/s.
With activation checkpointing every block's forward runs twice, so the GPU does 4/3·F for each F
counted: the MFU it reaches is 3/4 of the same run's without checkpointing.

Communication, per micro-batch (composer-lite runs FSDP2's collectives at every micro-batch).
Ring collectives over n ranks move (n-1)/n of the data through each rank for an all-gather or a
reduce-scatter and 2(n-1)/n for an all-reduce (NCCL's performance notes, "bus bandwidth"):
    FSDP2 over S ranks: all-gather P·g bytes twice (forward; backward again, since blocks reshard
                        after forward), reduce-scatter P·4 (gradients reduced in fp32)
    R replicas (HSDP's replicate groups, or data parallel without FSDP): all-reduce each rank's
                        P/S gradients in fp32
A collective whose ranks lie in one node runs at NVLink's per-GPU bandwidth, otherwise at the
network's per-GPU bandwidth (one NIC per GPU). FSDP2 prefetches the next block's all-gather and
reduce-scatters a block's gradients during the previous block's backward, so a micro-batch takes
max(compute, communication): communication beyond the compute is exposed.

Time and cost: days = tokens / (tokens/s per GPU · GPUs) / 86,400; cost = GPU-hours · price.
"""

from __future__ import annotations

from dataclasses import dataclass

from foundry.planning.memory import PRECISIONS, Setup
from foundry.schema import HardwareConfig
from mpt.config import MPTConfig

__all__ = [
    "CHECKPOINTING_MFU_FACTOR",
    "Communication",
    "Duration",
    "Throughput",
    "communication",
    "duration",
    "implied_mfu",
    "ring_seconds",
    "throughput",
]

CHECKPOINTING_MFU_FACTOR = 3 / 4  # forward (1/3 of the FLOPs) recomputed: F / (4/3 F)
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True, kw_only=True)
class Communication:
    """Bytes each GPU sends per micro-batch, by collective, and the seconds they take."""

    all_gather_bytes: float
    reduce_scatter_bytes: float
    all_reduce_bytes: float
    seconds: float
    links: str  # which link each collective uses, in words


@dataclass(frozen=True, kw_only=True)
class Throughput:
    """One micro-batch's compute and communication, and the tokens/s per GPU they give."""

    mfu: float  # of the computation, as given (checkpointing not applied)
    effective_mfu: float  # what the whole step reaches (checkpointing and exposed comm)
    compute_seconds: float
    communication: Communication
    step_seconds: float
    tokens_per_second: float  # per GPU


@dataclass(frozen=True, kw_only=True)
class Duration:
    """A token budget's wall-clock time and price on a number of GPUs."""

    tokens: int
    gpus: int
    days: float
    gpu_hours: float
    cost: float | None  # USD; None without a price


def ring_seconds(nbytes: float, ranks: int, gb_per_s: float, *, all_reduce: bool = False) -> float:
    """Seconds of a ring all-gather / reduce-scatter (or all-reduce) of `nbytes` over `ranks`
    ranks at `gb_per_s` GB/s per GPU: (n-1)/n · bytes / bandwidth, twice that for all-reduce."""
    if ranks <= 1 or nbytes == 0:
        return 0.0
    factor = (2 if all_reduce else 1) * (ranks - 1) / ranks
    return factor * nbytes / (gb_per_s * 1e9)


def _bandwidth(hardware: HardwareConfig, span: int) -> tuple[float, str]:
    """(GB/s per GPU, link name) of a collective whose ranks lie within `span` consecutive ranks."""
    if span <= hardware.gpus_per_node:
        key, value, name = "intra_node_gb_per_s", hardware.intra_node_gb_per_s, "NVLink"
    else:
        key, value, name = "inter_node_gb_per_s", hardware.inter_node_gb_per_s, "network"
    if value is None:
        raise ValueError(
            f"hardware.{key} is null, but a collective over {span} ranks"
            f" ({hardware.nodes} node(s) x {hardware.gpus_per_node}) needs it: give it in GB/s"
            " per GPU per direction"
        )
    return value, f"{name} {value:g} GB/s"


def communication(model: MPTConfig, setup: Setup, hardware: HardwareConfig) -> Communication:
    """Per-GPU bytes and seconds of one micro-batch's collectives (see the module docstring)."""
    if setup.world != hardware.world_size:
        raise ValueError(
            f"setup: {setup.shard_ranks} shard ranks x {setup.replicas} replicas, expected the"
            f" hardware's {hardware.world_size} GPUs"
        )
    p = PRECISIONS[setup.precision]
    params = model.num_params()
    shards, replicas = setup.shard_ranks, setup.replicas
    gather = reduce = reduce_all = 0.0
    seconds, links = 0.0, []
    if shards > 1:
        bw, link = _bandwidth(hardware, shards)
        gather = 2 * params * p.gather_bytes * (shards - 1) / shards
        reduce = params * 4 * (shards - 1) / shards
        seconds += ring_seconds(2 * params * p.gather_bytes, shards, bw)
        seconds += ring_seconds(params * 4, shards, bw)
        links.append(f"FSDP2 over {shards} ranks: {link}")
    if replicas > 1:
        bw, link = _bandwidth(hardware, shards * replicas)
        shard_bytes = params * 4 / shards
        reduce_all = 2 * shard_bytes * (replicas - 1) / replicas
        seconds += ring_seconds(shard_bytes, replicas, bw, all_reduce=True)
        links.append(f"all-reduce over {replicas} replicas: {link}")
    return Communication(
        all_gather_bytes=gather,
        reduce_scatter_bytes=reduce,
        all_reduce_bytes=reduce_all,
        seconds=seconds,
        links="; ".join(links) or "none (one GPU)",
    )


def throughput(
    model: MPTConfig,
    setup: Setup,
    hardware: HardwareConfig,
    *,
    micro_batch: int,
    seq_len: int,
    mfu: float,
) -> Throughput:
    """Tokens/s per GPU at `micro_batch` x `seq_len` with the computation at `mfu` of the peak:
    step = max(b·T·F / (MFU'·peak), communication), MFU' = MFU (x 3/4 with checkpointing)."""
    if hardware.peak_bf16_flops is None:
        raise ValueError(
            f"hardware.peak_bf16_flops is null (gpu {hardware.gpu!r}): throughput needs the"
            " GPU's dense bf16 peak FLOP/s"
        )
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu: expected a fraction in (0, 1], got {mfu!r}")
    if micro_batch < 1:
        raise ValueError(f"micro_batch: expected >= 1, got {micro_batch}")
    flops = model.flops_per_token(seq_len)
    reached = mfu * (CHECKPOINTING_MFU_FACTOR if setup.activation_checkpointing else 1.0)
    tokens = micro_batch * seq_len
    compute = tokens * flops / (reached * hardware.peak_bf16_flops)
    comm = communication(model, setup, hardware)
    step = max(compute, comm.seconds)
    per_gpu = tokens / step
    return Throughput(
        mfu=mfu,
        effective_mfu=per_gpu * flops / hardware.peak_bf16_flops,
        compute_seconds=compute,
        communication=comm,
        step_seconds=step,
        tokens_per_second=per_gpu,
    )


def duration(
    tokens: int, *, tokens_per_second: float, gpus: int, price_per_gpu_hour: float | None
) -> Duration:
    """days = tokens / (tokens/s per GPU · GPUs) / 86,400; cost = days · 24 · GPUs · price."""
    if tokens_per_second <= 0 or gpus < 1:
        raise ValueError(
            f"tokens_per_second and gpus: expected > 0 and >= 1, got {tokens_per_second} and {gpus}"
        )
    seconds = tokens / (tokens_per_second * gpus)
    gpu_hours = seconds * gpus / 3600
    cost = gpu_hours * price_per_gpu_hour if price_per_gpu_hour is not None else None
    return Duration(
        tokens=tokens, gpus=gpus, days=seconds / SECONDS_PER_DAY, gpu_hours=gpu_hours, cost=cost
    )


def implied_mfu(
    model: MPTConfig, *, seq_len: int, tokens: float, gpus: int, peak_flops: float, days: float
) -> float:
    """The MFU a published run implies: tokens · F / (GPUs · peak · days · 86,400)."""
    return tokens * model.flops_per_token(seq_len) / (gpus * peak_flops * days * SECONDS_PER_DAY)
