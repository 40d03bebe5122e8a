"""What a run's `precision` and `parallelism.compile` mean on the machine it runs on.

    resolve_precision("auto", on_gpu=True, world=1, optimizer="decoupled_adamw")  # "bf16_master"
    resolve_compile("auto", on_gpu=True)                                          # True

One place decides, for `foundry train` (and finetune) and for `foundry plan`'s arithmetic:

- `auto` precision on one GPU, with an Adam optimizer: `bf16_master`, the recipe of
  tools/bench's fastest `mpt_*` rows: bf16 weights and gradients, no autocast, and the update in
  fp32 on master copies (`composer_lite.MasterWeightAdamW`). On several GPUs: `amp_bf16`, which
  FSDP2 runs with `parallelism.param_dtype` (auto: bf16 gathers of fp32 shards, the same
  arithmetic sharded). With Lion (no master-weight form): `amp_bf16`. On CPUs: `fp32`.
- `auto` compile: on GPUs. One GPU compiles the whole model; FSDP2 compiles each block.

`bf16_master` keeps gradients in bf16: with many micro-batches per step they are summed there
(see composer_lite.optim); `amp_bf16` keeps fp32 gradients, at about 60% more memory for state.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "MASTER_WEIGHT_OPTIMIZERS",
    "CompileChoice",
    "PrecisionChoice",
    "master_weight_problem",
    "resolve_compile",
    "resolve_precision",
]

PrecisionChoice = Literal["auto", "fp32", "amp_bf16", "amp_fp16", "bf16_master"]
CompileChoice = bool | Literal["auto"]

# optimizers with a master-weight form (composer_lite.MasterWeightAdamW)
MASTER_WEIGHT_OPTIMIZERS = ("adamw", "decoupled_adamw")


def resolve_precision(precision: str, *, on_gpu: bool, world: int, optimizer: str) -> str:
    """The precision a run uses: `precision` itself, or what `auto` means here (module doc)."""
    if precision != "auto":
        return precision
    if not on_gpu:
        return "fp32"
    if world == 1 and optimizer in MASTER_WEIGHT_OPTIMIZERS:
        return "bf16_master"
    return "amp_bf16"


def resolve_compile(compile: CompileChoice, *, on_gpu: bool) -> bool:
    """Whether the run compiles its model: `compile`, or on GPUs for `auto`."""
    return on_gpu if compile == "auto" else bool(compile)


def master_weight_problem(precision: str, *, world: int, optimizer: str) -> str | None:
    """Why `bf16_master` cannot run as configured, or None (it can, or it is not asked)."""
    if precision != "bf16_master":
        return None
    if world > 1:
        return (
            f"precision=bf16_master is the one-GPU recipe, but hardware has {world} ranks: under"
            " FSDP2 use precision=amp_bf16 (or auto) with parallelism.param_dtype=bf16, the same"
            " arithmetic sharded"
        )
    if optimizer not in MASTER_WEIGHT_OPTIMIZERS:
        return (
            f"precision=bf16_master keeps fp32 masters in an AdamW ({', '.join(MASTER_WEIGHT_OPTIMIZERS)}),"
            f" but optimizer is {optimizer}: use precision=amp_bf16 (or auto) with it"
        )
    return None
