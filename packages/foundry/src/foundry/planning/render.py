"""The text of a plan (`Plan.render()`): what `foundry plan` prints, and `foundry train` first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from foundry.planning.memory import GIB, PRECISIONS, Memory
from foundry.planning.throughput import Throughput

if TYPE_CHECKING:
    from foundry.plan import Plan

__all__ = ["render_plan"]


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f}" if nbytes >= GIB / 10 or nbytes == 0 else f"{nbytes / GIB:.2g}"


def _flops(value: float) -> str:
    unit, scale = ("G", 1e9) if value >= 1e9 else ("M", 1e6)
    return f"{value / scale:,.2f} {unit}"


def _count(tokens: int) -> str:
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6)):
        if tokens >= scale:
            return f"{tokens / scale:g}{unit}"
    return f"{tokens:,}"


def _memory_line(m: Memory) -> str:
    parts = [
        ("weights", m.weights),
        ("gradients", m.gradients),
        ("optimizer", m.optimizer),
        ("weight copies", m.copies),
        ("gathered", m.gathered),
        ("activations", m.activations),
        ("transient", m.transient),
    ]
    return "  ".join(f"{name} {_gib(v)}" for name, v in parts) + f"  = {_gib(m.total)} GiB"


def _speed_lines(s: Throughput) -> list[str]:
    c = s.communication
    gb = 1e9
    moved = (
        f"all-gather {c.all_gather_bytes / gb:.1f} GB, reduce-scatter"
        f" {c.reduce_scatter_bytes / gb:.1f} GB"
    )
    if c.all_reduce_bytes:
        moved += f", all-reduce {c.all_reduce_bytes / gb:.1f} GB"
    exposed = s.step_seconds - s.compute_seconds
    hidden = "hidden behind compute" if exposed <= 0 else f"{exposed:.3f} s exposed"
    if not c.seconds:
        return [
            f"  per micro-batch: compute {s.compute_seconds:.3f} s; communication: none",
            f"  tokens/s per GPU {s.tokens_per_second:,.0f}",
        ]
    return [
        f"  per micro-batch: compute {s.compute_seconds:.3f} s; communication"
        f" {c.seconds:.3f} s ({hidden})",
        f"  sent per GPU per micro-batch: {moved}; {c.links}",
        f"  tokens/s per GPU {s.tokens_per_second:,.0f} (MFU of the whole step"
        f" {s.effective_mfu:.1%})",
    ]


def render_plan(plan: Plan) -> str:
    """A human-readable, multi-line plan."""
    m, hw, setup = plan.model, plan.hardware, plan.setup
    params = m.num_params()
    flops = m.flops_per_token(plan.seq_len)
    attention = 12 * m.n_layers * m.d_model * plan.seq_len
    nodes = f"{hw.nodes} node{'s' if hw.nodes > 1 else ''} x {hw.gpus_per_node}"
    budget = f"{plan.tokens and _count(plan.tokens) or 'no'} token budget"
    lines = [
        f"plan: {plan.model_name or 'custom model'} on {hw.world_size} x {hw.gpu} ({nodes}),"
        f" {budget}, {plan.seq_len:,} tokens per sequence",
        f"parameters   {params:,} (d_model {m.d_model}, {m.n_layers} layers, {m.n_heads} heads,"
        f" vocab {m.vocab_size})",
        f"FLOPs/token  {_flops(flops)} = 6N {_flops(6 * params)} + attention 12·L·d·T"
        f" {_flops(attention)} (llm-foundry's MFU convention)",
        f"recipe       {setup.precision}: {PRECISIONS[setup.precision].summary}; optimizer"
        f" {setup.optimizer}; {setup.attention} attention; loss {setup.loss}",
    ]
    shard = (
        f"FSDP2 over {setup.shard_ranks} ranks"
        + (f" x {setup.replicas} replicas (hybrid)" if setup.replicas > 1 else "")
        if setup.shard_ranks > 1
        else (f"data parallel over {setup.replicas} ranks" if setup.replicas > 1 else "one GPU")
    )
    checkpointing = "yes" if setup.activation_checkpointing else "no"
    lines.append(f"parallelism  {shard}; activation checkpointing: {checkpointing}")
    if plan.per_gpu_batch is None:
        steps = "sequences per step unknown: gradients taken to accumulate"
    elif plan.memory.accumulating:
        steps = f"{plan.per_gpu_batch} sequences per GPU per step: gradients accumulate"
    else:
        steps = f"{plan.per_gpu_batch} sequences per GPU per step: no accumulation"
    lines.append(f"memory per GPU (GiB) at micro-batch {plan.micro_batch} ({steps}):")
    lines.append("  " + _memory_line(plan.memory))
    if plan.budget_bytes is not None:
        verdict = "fits" if plan.fits else "DOES NOT FIT"
        lines.append(
            f"  {verdict} in {_gib(plan.budget_bytes)} GiB usable of {hw.gpu_memory_gb:g} (the rest"
            " kept for the CUDA context, NCCL's buffers and fragmentation)"
        )
    if plan.options and plan.budget_bytes is not None:
        lines.append("options: the largest micro-batch that fits, its memory (GiB), tokens/s/GPU")
        width = max(len(o.label) for o in plan.options) + 2
        for o in plan.options:
            mem = o.memory
            state = mem.weights + mem.gradients + mem.optimizer
            speed = f"{o.throughput.tokens_per_second:>9,.0f}" if o.throughput else f"{'-':>9}"
            lines.append(
                f"  {o.label:<{width}} micro-batch {o.micro_batch:>4}  state {_gib(state):>6}"
                f"  copies+gathered {_gib(mem.copies + mem.gathered):>6}"
                f"  activations {_gib(mem.activations):>6}  total {_gib(mem.total):>6}  {speed}"
            )
    if plan.mfu is not None:
        lines.append(f"MFU          {plan.mfu:.1%} ({plan.mfu_source})")
    else:
        lines.append(f"MFU          {plan.mfu_source}: no throughput, days or cost")
    if plan.throughput is not None:
        lines += _speed_lines(plan.throughput)
    if plan.duration is not None:
        d = plan.duration
        cost = f", ${d.cost:,.0f} at ${hw.price_per_gpu_hour:.2f}/GPU-hour" if d.cost else ""
        lines.append(
            f"run          {_count(d.tokens)} tokens: {d.days:,.2f} days on {d.gpus} GPU(s),"
            f" {d.gpu_hours:,.0f} GPU-hours{cost}"
        )
    lines += [f"note         {n}" for n in plan.notes]
    return "\n".join(lines)
