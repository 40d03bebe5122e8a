"""The text of the launch `foundry train` and `foundry finetune` write for a cluster
(`foundry.launch` decides when):

- `launch_slurm.sh`, a Slurm batch script: one task per node, each a torchrun agent
  (`--nnodes=$SLURM_NNODES`, c10d rendezvous hosted on the job's first node, the job id as the
  rendezvous id, `--max-restarts`), from the folder foundry was started in (`--chdir`);
- `launch_torchrun.sh`, the same torchrun for clusters without Slurm, run on every node with
  `HEAD=<the address of the node that hosts the rendezvous>`.

Each runs `python -m foundry <command>` with the job's overrides (`foundry.launch.Job`), and
starts with the run's plan as comments, when the command has one.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foundry.launch import Job
    from foundry.schema import HardwareConfig

__all__ = [
    "RESTART_ENV",
    "SLURM_SCRIPT",
    "TORCHRUN_SCRIPT",
    "job_name",
    "slurm_script",
    "torchrun_script",
]

SLURM_SCRIPT = "launch_slurm.sh"
TORCHRUN_SCRIPT = "launch_torchrun.sh"
# torchrun's workers must not share the failed attempt's rendezvous store after a restart: a
# restarted node reads the previous round's keys (pytorch#135712)
RESTART_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
_EXPORTS = [
    f"export {k}={v}  # restarts need their own store (pytorch#135712)"
    for k, v in RESTART_ENV.items()
]


def _torchrun(hw: HardwareConfig, *, python: str, nnodes: str, endpoint: str) -> list[str]:
    """torchrun's words for the written launch, shell-ready ($VARS are left to bash)."""
    return [
        f"{shlex.quote(python)} -m torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={hw.gpus_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
    ]


def _command_lines(torchrun: list[str], job: Job) -> str:
    """The job's command, one option or override a line."""
    words = [*torchrun, f"-m foundry {job.command}", *map(shlex.quote, job.overrides)]
    return " \\\n    ".join(words)


def _header(job: Job, plan: str | None, draft: str | None) -> list[str]:
    hw = job.run.hardware
    lines = [
        f"# Written by `foundry {job.command}`: {hw.nodes} node(s) x {hw.gpus_per_node} {hw.gpu}",
        f"# (world size {hw.world_size}); runs from the folder foundry was started in.",
    ]
    if draft:
        lines += [f"# DRAFT: {draft}"]
    if plan:
        lines += ["#", *(f"# {line}".rstrip() for line in plan.splitlines())]
    return lines


def _guard(draft: str | None) -> list[str]:
    """A draft's first commands: say what it lacks and stop, before any rendezvous or node."""
    if not draft:
        return []
    return [f"echo {shlex.quote('this launch is a draft: ' + draft)} >&2", "exit 2"]


def job_name(job: Job) -> str:
    """launch.job_name, else the run's name or its save folder's last part, else
    'foundry-<command>'; as one shell word (other characters become '_')."""
    run = job.run
    base = os.path.basename((run.save_folder or "").rstrip("/"))
    name = run.launch.job_name or run.run_name or base or f"foundry-{job.command}"
    return re.sub(r"[^\w.+,-]", "_", name)


def slurm_script(
    job: Job,
    *,
    workdir: str,
    out_dir: str,
    plan: str | None,
    draft: str | None = None,
) -> str:
    """The Slurm batch script: one torchrun agent per node, c10d rendezvous on the first node.
    `draft`: what the run still lacks; the script then says so and exits 2 before it starts."""
    launch, hw = job.run.launch, job.run.hardware
    sbatch = {
        "job-name": job_name(job),
        "nodes": hw.nodes,
        "ntasks-per-node": 1,  # one torchrun agent per node; it starts the node's processes
        "gpus-per-node": hw.gpus_per_node if hw.gpu != "cpu" else None,
        "cpus-per-task": launch.cpus_per_task,
        "time": launch.time,
        "partition": launch.partition,
        "account": launch.account,
        "output": os.path.join(out_dir, "slurm-%j.out"),
        "chdir": workdir,
    }
    torchrun = _torchrun(
        hw,
        python=launch.python or sys.executable,
        nnodes='"$SLURM_NNODES"',
        endpoint=f'"$head":{launch.rdzv_port}',
    )
    torchrun += ['--rdzv-id="$SLURM_JOB_ID"', f"--max-restarts={launch.max_restarts}"]
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH --{k}={shlex.quote(str(v))}" for k, v in sbatch.items() if v is not None),
        *_header(job, plan, draft),
        "set -euo pipefail",
        *_guard(draft),
        "# the first node of the job hosts torchrun's c10d rendezvous",
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        *_EXPORTS,
        "srun --kill-on-bad-exit=1 " + _command_lines(torchrun, job),
    ]
    return "\n".join(lines) + "\n"


def torchrun_script(
    job: Job,
    *,
    workdir: str,
    plan: str | None,
    draft: str | None = None,
) -> str:
    """The torchrun each node runs (no scheduler): `HEAD=<first node> bash launch_torchrun.sh`.
    `draft`: as for `slurm_script`."""
    launch, hw = job.run.launch, job.run.hardware
    torchrun = _torchrun(
        hw,
        python=launch.python or sys.executable,
        nnodes=str(hw.nodes),
        endpoint=f'"$HEAD":{launch.rdzv_port}',
    )
    torchrun += [
        f'--rdzv-id="${{RDZV_ID:-{job_name(job)}}}"',
        f"--max-restarts={launch.max_restarts}",
    ]
    lines = [
        "#!/bin/bash",
        f"# Run on each of the {hw.nodes} node(s), at about the same time, with HEAD set to one",
        "# node's address (it hosts the rendezvous):  HEAD=node-0 bash launch_torchrun.sh",
        *_header(job, plan, draft),
        "set -euo pipefail",
        *_guard(draft),
        ': "${HEAD:?set HEAD to the address of the node that hosts the rendezvous}"',
        f"cd {shlex.quote(workdir)}",
        *_EXPORTS,
        "exec " + _command_lines(torchrun, job),
    ]
    return "\n".join(lines) + "\n"
