"""Our own measured training-step figures, from tools/bench/RESULTS.md: one row per measurement.

A later measurement is one more `Measurement(...)` line in `MEASURED`. The plan takes its MFU from
the row of the same model, GPU and sequence length (the best one, if several), and otherwise
states its MFU as an assumption. Each row also says how it was run (`setup`), so that its peak
memory can be set against `memory.memory_per_gpu` of the same setup (a test does).
"""

from __future__ import annotations

from dataclasses import dataclass

from foundry.planning.memory import Setup

__all__ = ["BENCH_SETUP", "FOUNDRY_ONE_GPU", "MEASURED", "Measurement", "find_measurement"]

# tools/bench/model_bench.py's `mp-compile-model` mode on one GPU: bf16 weights with fp32
# masters and moments in MasterWeightAdamW, the whole model under torch.compile, the full-logits
# loss (`return_logits=True`), our Triton attention.
BENCH_SETUP = Setup(
    precision="bf16_master", optimizer="adamw", attention="triton", loss="logits_compiled"
)


# `foundry train` on one GPU with its defaults (foundry.recipe): bf16 weights with fp32 masters
# (decoupled weight decay), the whole model compiled, the chunked LM-head loss, Triton attention.
FOUNDRY_ONE_GPU = Setup(
    precision="bf16_master", optimizer="decoupled_adamw", attention="triton", loss="chunked"
)


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One measured training step: model preset, GPU (as `hardware.gpu` names it), figures."""

    model: str
    gpu: str
    seq_len: int
    micro_batch: int
    mfu: float
    peak_gib: float  # torch.cuda.max_memory_allocated() / 2**30
    setup: Setup
    where: str
    gpus: int = 1  # GPUs of the measured run (every row so far: one, unsharded)


_RESULTS = "tools/bench/RESULTS.md"

MEASURED: tuple[Measurement, ...] = (
    Measurement(
        model="mpt_1b",
        gpu="H100-SXM",
        seq_len=2048,
        micro_batch=8,
        mfu=0.595,
        peak_gib=45.9,
        setup=BENCH_SETUP,
        where=f"{_RESULTS}, 2026-11-28 (third session), call 1",
    ),
    Measurement(
        model="mpt_350m",
        gpu="H100-SXM",
        seq_len=2048,
        micro_batch=12,
        mfu=0.535,
        peak_gib=29.7,
        setup=BENCH_SETUP,
        where=f"{_RESULTS}, 2026-11-28 (third session), call 2",
    ),
    Measurement(
        model="mpt_125m",
        gpu="H100-SXM",
        seq_len=2048,
        micro_batch=16,
        mfu=0.500,
        peak_gib=20.0,
        setup=BENCH_SETUP,
        where=f"{_RESULTS}, 2026-11-28 (third session), call 2",
    ),
    Measurement(
        model="mpt_125m",
        gpu="H200",
        seq_len=2048,
        micro_batch=16,
        mfu=0.506,
        peak_gib=20.0,
        setup=BENCH_SETUP,
        where=f"{_RESULTS}, benchmarks trimmed (issue 12), H200 check",
    ),
    Measurement(
        model="mpt_1b",
        gpu="H200",
        seq_len=2048,
        micro_batch=16,
        mfu=0.617,
        peak_gib=72.0,
        setup=FOUNDRY_ONE_GPU,
        where=f"{_RESULTS}, 2026-12-02 (session 23), foundry train, call 1",
    ),
    Measurement(
        model="mpt_7b",
        gpu="H200",
        seq_len=2048,
        micro_batch=3,  # 8 micro-batches a step (global batch 24): the update's cost amortized
        mfu=0.638,
        peak_gib=124.8,
        setup=FOUNDRY_ONE_GPU,
        where=f"{_RESULTS}, 2026-12-02 (session 23), foundry train, call 1",
    ),
)


def find_measurement(model: str | None, gpu: str, seq_len: int) -> Measurement | None:
    """The measurement of `model` on `gpu` at `seq_len` with the highest MFU, or None."""
    rows = [m for m in MEASURED if (m.model, m.gpu, m.seq_len) == (model, gpu, seq_len)]
    return max(rows, key=lambda m: m.mfu, default=None)
