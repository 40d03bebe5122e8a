"""`foundry train` and `foundry finetune` for a cluster before the run is fully described: a
draft launch (and, for train, the plan).

    foundry train model=mpt_30b hardware=512xh100
    # prints the plan, writes foundry_launch/launch_slurm.draft.sh (and the torchrun one), and
    # exits 2: the run still needs data.sources.main.local=..., max_duration=... and a
    # global_train_batch_size that divides its 512 ranks
    foundry finetune load_path=/cluster/mpt-7b hardware=512xh100
    # the same draft launch, of `foundry finetune` (a finetune has no plan to print)

On a login node the first question is what a model costs on the cluster; the data and the token
budget come later. When the only problems of a train or finetune config are run settings left
unset (`max_duration`, keys under `data.`; nothing else wrong: a finetune's `load_path` is
given) and the launch would be written (no job's environment; the hardware is not this machine),
`draft_launch` (train) or `draft_finetune_launch` stands in for them, prints the plan (train)
and writes the launch as a draft, instead of listing the missing keys alone:

- `max_duration`: the plan's days and cost are for `plan.TOKENS_PER_PARAM` tokens per parameter,
  and it says so; a global batch that does not divide the ranks leaves the per-GPU batch to the
  plan (the largest micro-batch that fits), and it says so too; either command's draft then
  needs `global_train_batch_size=...` as well;
- the scripts are named `*.draft.sh` (never a real launch's names), carry the overrides given,
  and their first command says what the run needs and exits 2, so a submitted draft starts
  nothing; `launch.submit=true` does not submit it;
- the exit status is 2 (the config is incomplete). Given the missing values, the same command
  writes the real launch (`foundry.launch.write_launch`).

Anything else (a job's rank, a machine that is the hardware, any other problem) gets the config's
problems as usual: a local run needs its data.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from typing import Any

from foundry.compose import Composed
from foundry.finetune import FinetuneCommand
from foundry.launch import (
    Draft,
    Job,
    JobCommand,
    Machine,
    choose_launch,
    in_job,
    job_overrides,
    this_machine,
    write_launch,
)
from foundry.plan import StandIns, plan_for_train
from foundry.schema import RunSettings, TrainCommand
from foundry.validate import ConfigError, build

__all__ = ["STAND_IN_DATA", "draft_finetune_launch", "draft_launch", "draftable"]

STAND_IN_DATA = "<unset>"  # what an unset data key holds while the draft is planned


# the schema each command's config is built with, its stand-ins in place
_SCHEMAS: dict[JobCommand, type[RunSettings]] = {
    "train": TrainCommand,
    "finetune": FinetuneCommand,
}


def draftable(err: ConfigError) -> bool:
    """Whether every problem of a train or finetune config is an unset max_duration or data key."""
    return (
        bool(err.missing)
        and len(err.missing) == len(err.problems)
        and all(key == "max_duration" or key.startswith("data.") for key in err.missing)
    )


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for name in parents:
        tree = tree[name]
    tree[last] = value


def _stand_in(
    composed: Composed, err: ConfigError, command: JobCommand
) -> tuple[RunSettings, StandIns] | None:
    """The command's config with stand-ins for its unset keys, or None if it has other
    problems."""
    config = copy.deepcopy(composed.config)
    for key in err.missing:
        _set(config, key, "1ba" if key == "max_duration" else STAND_IN_DATA)
    hardware = config.get("hardware") or {}
    world = int(hardware.get("nodes", 1)) * int(hardware.get("gpus_per_node", 1))
    batch = config.get("global_train_batch_size")
    odd_batch = isinstance(batch, int) and world > 1 and batch % world != 0
    if odd_batch:
        config["global_train_batch_size"] = world  # the plan ignores it (StandIns)
    try:
        cfg = build(_SCHEMAS[command], config, what=f"{command} config")
    except ConfigError:
        return None
    stand_ins = StandIns(
        max_duration="max_duration" in err.missing,
        global_train_batch_size=batch if odd_batch else None,
    )
    return cfg, stand_ins


def draft_launch(
    composed: Composed,
    err: ConfigError,
    *,
    env: Mapping[str, str] = os.environ,
    machine: Callable[[], Machine] = this_machine,
) -> int | None:
    """The plan and a draft launch for a train config that lacks only run settings and would be
    launched elsewhere: exit status 2. None: not such a config (report `err` as usual)."""
    return _draft("train", composed, err, env=env, machine=machine)


def draft_finetune_launch(
    composed: Composed,
    err: ConfigError,
    *,
    env: Mapping[str, str] = os.environ,
    machine: Callable[[], Machine] = this_machine,
) -> int | None:
    """A draft launch for a finetune config that lacks only run settings and would be launched
    elsewhere (no plan: the model is the checkpoint's): exit status 2. None: not such a config."""
    return _draft("finetune", composed, err, env=env, machine=machine)


def _draft(
    command: JobCommand,
    composed: Composed,
    err: ConfigError,
    *,
    env: Mapping[str, str],
    machine: Callable[[], Machine],
) -> int | None:
    if in_job(env) or not draftable(err):
        return None
    found = _stand_in(composed, err, command)
    if found is None:
        return None
    cfg, stand_ins = found
    if choose_launch(cfg.launch, cfg.hardware, env=env, machine=machine) != "write":
        return None
    plan = None  # a finetune's model is the checkpoint's, read where its job runs
    if isinstance(cfg, TrainCommand):
        plan = plan_for_train(cfg, stand_ins=stand_ins).render()
    needs = err.missing
    if stand_ins.global_train_batch_size is not None:
        needs += ("global_train_batch_size",)
    job = Job(command=command, run=cfg, overrides=tuple(job_overrides(composed.overrides)))
    return write_launch(job, plan=plan, draft=Draft(needs=needs))
