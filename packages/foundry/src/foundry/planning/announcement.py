"""MosaicML's published training times and costs, and the MFU and price each one implies.

    foundry plan table=mpt_announcement

A published row gives a model, a cluster, a token budget, days and (for MPT) a cost; from them
    MFU   = tokens · (6·N + 12·L·d·T) / (GPUs · dense bf16 peak · days · 86,400)
    price = cost / (GPUs · days · 24)                                  (USD per GPU-hour)
at T = 2,048 tokens, the sequence length of the runs (MPT-30B's 8k window came after most of its
1T tokens; the GPT rows were trained at 2,048). The GPT rows name no architecture; they are taken
here as llm-foundry's MPT pretraining shapes of the same size (`mpt.presets`, vocabulary 50,368),
an assumption printed beside each row.
"""

from __future__ import annotations

from dataclasses import dataclass

from foundry.planning.throughput import implied_mfu
from foundry.schema import HardwareConfig
from mpt.config import MPTConfig
from mpt.presets import preset

__all__ = ["PUBLISHED", "SEQ_LEN", "PublishedRun", "Row", "format_table", "hardware", "rows"]

SEQ_LEN = 2048

_MPT_30B = (
    "MosaicML, 'MPT-30B: Raising the bar for open-source foundation models' (June 2023),"
    " training-cost table"
)
_MPT_7B = "MosaicML, 'Introducing MPT-7B' (May 2023)"
_GPT = "MosaicML, 'Mosaic LLMs (Part 2): GPT-3 quality for <$500k' (Sept. 2022), cost table"


@dataclass(frozen=True, kw_only=True)
class PublishedRun:
    """One published training run: which shape, on which hardware config, for how long."""

    name: str
    model: str  # an mpt.presets shape
    vocab_size: int | None  # None: the preset's own
    hardware: str  # a foundry/configs/hardware/ option
    tokens: int
    days: float
    cost: float | None  # USD, where the source gives one
    source: str

    def config(self) -> MPTConfig:
        extra = {} if self.vocab_size is None else {"vocab_size": self.vocab_size}
        return preset(self.model, **extra)


PUBLISHED: tuple[PublishedRun, ...] = (
    PublishedRun(
        name="MPT-30B",
        model="mpt_30b",
        vocab_size=None,
        hardware="512xh100",
        tokens=10**12,
        days=11.6,
        cost=714_000,
        source=_MPT_30B,
    ),
    PublishedRun(
        name="MPT-30B",
        model="mpt_30b",
        vocab_size=None,
        hardware="512xa100_40gb",
        tokens=10**12,
        days=28.3,
        cost=871_000,
        source=_MPT_30B,
    ),
    PublishedRun(
        name="MPT-7B",
        model="mpt_7b",
        vocab_size=None,
        hardware="440xa100_40gb",
        tokens=10**12,
        days=9.5,
        cost=200_640,
        source=_MPT_7B,
    ),
    *(
        PublishedRun(
            name=name,
            model=model,
            vocab_size=50368,
            hardware="256xa100_40gb",
            tokens=tokens * 10**9,
            days=days,
            cost=None,
            source=_GPT,
        )
        for name, model, tokens, days in (
            ("GPT-1.3B", "mpt_1b", 26, 0.14),
            ("GPT-2.7B", "mpt_3b", 54, 0.48),
            ("GPT-6.7B", "mpt_7b", 134, 2.32),
            ("GPT-13B", "mpt_13b", 260, 7.43),
            ("GPT-30B", "mpt_30b", 610, 35.98),
            ("GPT-70B", "mpt_70b", 1400, 176.55),
        )
    ),
)


def hardware(name: str) -> HardwareConfig:
    """The hardware config `foundry/configs/hardware/<name>.yaml` (read as Hydra reads it)."""
    from omegaconf import OmegaConf

    from foundry.compose import CONFIG_DIR

    path = CONFIG_DIR / "hardware" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"hardware {name!r}: expected a file {path}, found none")
    return HardwareConfig(**OmegaConf.to_container(OmegaConf.load(path)))


@dataclass(frozen=True, kw_only=True)
class Row:
    """A published run with what it implies."""

    run: PublishedRun
    model: MPTConfig
    hardware: HardwareConfig
    params: int
    mfu: float
    price_per_gpu_hour: float | None  # implied by the published cost
    cost_at_config_price: float | None  # GPU-hours at the hardware config's price, no cost given


def rows(seq_len: int = SEQ_LEN) -> list[Row]:
    """Every published run with its implied MFU (at `seq_len`) and price per GPU-hour."""
    out = []
    for run in PUBLISHED:
        model, hw = run.config(), hardware(run.hardware)
        gpu_hours = hw.world_size * run.days * 24
        price = run.cost / gpu_hours if run.cost is not None else None
        at_config = (
            gpu_hours * hw.price_per_gpu_hour
            if run.cost is None and hw.price_per_gpu_hour is not None
            else None
        )
        mfu = implied_mfu(
            model,
            seq_len=seq_len,
            tokens=run.tokens,
            gpus=hw.world_size,
            peak_flops=hw.peak_bf16_flops,
            days=run.days,
        )
        out.append(
            Row(
                run=run,
                model=model,
                hardware=hw,
                params=model.num_params(),
                mfu=mfu,
                price_per_gpu_hour=price,
                cost_at_config_price=at_config,
            )
        )
    return out


def _count(tokens: int) -> str:
    for unit, scale in (("T", 10**12), ("B", 10**9)):
        if tokens >= scale:
            return f"{tokens / scale:g}{unit}"
    return f"{tokens:,}"


def format_table(table: list[Row], seq_len: int = SEQ_LEN) -> str:
    """The rows as text: shape, parameters, cluster, tokens, days, cost, implied MFU and price."""
    header = (
        f"{'run':<9} {'shape: d_model/layers/heads, vocab':<36} {'parameters':>15}"
        f"  {'GPUs':<16} {'tokens':>6} {'days':>7} {'cost':>11} {'MFU':>6} {'$/GPU-h':>8}"
    )
    lines = [
        f"MosaicML's published training runs and what they imply, at {seq_len:,} tokens per"
        " sequence",
        f"MFU = tokens x (6N + 12·L·d·T) / (GPUs x dense bf16 peak x days x 86,400), T = {seq_len:,}",
        "",
        header,
        "-" * len(header),
    ]
    for row in table:
        m, hw, run = row.model, row.hardware, row.run
        shape = f"{run.model} {m.d_model}/{m.n_layers}/{m.n_heads}, {m.vocab_size}"
        if run.cost is not None:
            cost, price = f"${run.cost:,.0f}", f"{row.price_per_gpu_hour:.2f}"
        elif row.cost_at_config_price is not None:
            cost, price = f"(${row.cost_at_config_price:,.0f})", f"({hw.price_per_gpu_hour:.2f})"
        else:
            cost, price = "-", "-"
        lines.append(
            f"{run.name:<9} {shape:<36} {row.params:>15,}  {f'{hw.world_size} x {hw.gpu}':<16}"
            f" {_count(run.tokens):>6} {run.days:>7g} {cost:>11} {row.mfu:>6.1%} {price:>8}"
        )
    lines += [
        "",
        "GPT rows: shapes assumed (the source names sizes, not architectures): llm-foundry's MPT"
        " pretraining shapes, vocabulary 50,368, ALiBi, no biases.",
        "Costs in parentheses are not published: the GPU-hours at the hardware config's price.",
        "Sources:",
        *sorted({f"  {run.source}" for run in PUBLISHED}),
    ]
    return "\n".join(lines)
