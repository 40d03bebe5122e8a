"""Where a run of `foundry train` or `foundry finetune` runs: in this process, under a torchrun
that foundry starts here, or on the cluster its `hardware` names, through a launch that foundry
writes.

    foundry train hardware=cpu hardware.gpus_per_node=2 ...   # torchrun here, 2 gloo processes
    foundry train model=mpt_30b hardware=512xh100 ...         # writes the launch, exits 1
    foundry train ... launch.launcher=slurm launch.submit=true  # writes it and calls sbatch
    foundry finetune load_path=... hardware=8xh100 ...        # the same, for a finetune

`choose_launch` decides (`launch.launcher`):

- `auto`: inside a job (torchrun's RANK and WORLD_SIZE are set) train here; on a machine that
  *is* the hardware (one node; `cpu`, or this box's CUDA devices are `gpus_per_node` GPUs of the
  hardware's family) start torchrun here, or train in this process for one CPU process;
  otherwise write the launch (both kinds).
- `local`: torchrun here, even for one process; refused when the hardware is not this machine.
- `slurm` / `torchrun`: write that one launch.  `none`: train in this process as it is.

What a launch needs of a run is a `Job`: the command (`train`, `finetune`), the run's
`RunSettings` (hardware, `launch.*`, save folder, run name) and the overrides its ranks get. The
written launch (`foundry.launch_scripts`: a Slurm batch script, and the torchrun each node runs
without Slurm) goes into `launch.out_dir`, default the save folder if it is local. It runs
`foundry <command>` with this run's own overrides (those that do not set `launch.*`) plus
`launch.launcher=none`, from the folder foundry was started in, so the job trains exactly the
config printed here; a written script replaces another run's only with `save_overwrite=true`.
Restarts (torchrun `--max-restarts`, after a worker fails) rerun the same command, and
autoresume continues from the newest checkpoint of `save_folder`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from foundry.launch_scripts import (
    RESTART_ENV,
    SLURM_SCRIPT,
    TORCHRUN_SCRIPT,
    slurm_script,
    torchrun_script,
)
from foundry.validate import opt

if TYPE_CHECKING:
    from foundry.schema import HardwareConfig, RunSettings

__all__ = [
    "LaunchConfig",
    "LaunchError",
    "Draft",
    "Job",
    "JobCommand",
    "Machine",
    "child_overrides",
    "choose_launch",
    "gpu_family",
    "in_job",
    "job_overrides",
    "launch_dir",
    "machine_matches",
    "run_local",
    "this_machine",
    "write_launch",
    "write_script",
]

Launcher = Literal["auto", "local", "slurm", "torchrun", "none"]
JobCommand = Literal["train", "finetune"]  # foundry commands that launch (configs/<command>.yaml)
Where = Literal["here", "local", "write"]  # train in this process | torchrun here | write it

_SLURM_TIME = re.compile(r"^\d+(-\d{1,2}(:\d{2}){0,2}|(:\d{2}){0,2})$")  # sbatch --time forms
_SLURM_WORD = re.compile(r"^[\w.,+\-]+$")  # a job name, partition or account: one shell word


class LaunchError(ValueError):
    """A launch that cannot be made as configured; the message says what to change."""


@dataclass(frozen=True, kw_only=True)
class LaunchConfig:
    """How a run (`foundry train`, `foundry finetune`) gets onto the processes its `hardware`
    describes."""

    launcher: Launcher = opt(
        "auto", "auto: train/torchrun here when the hardware is this machine, else write the launch"
    )
    submit: bool = opt(False, "call sbatch on the written Slurm script (launcher auto or slurm)")
    max_restarts: int = opt(3, "torchrun --max-restarts: worker-group restarts, each resuming")
    rdzv_port: int = opt(29500, "port of the c10d rendezvous on the first node")
    out_dir: str | None = opt(None, "folder of the written launch; null: save_folder (if local)")
    python: str | None = opt(None, "the nodes' Python in the written launch; null: this one")
    job_name: str | None = opt(None, "Slurm job name; null: the run's name")
    partition: str | None = opt(None, "Slurm partition; null: the cluster's default")
    account: str | None = opt(None, "Slurm account; null: the cluster's default")
    time: str | None = opt(None, "Slurm time limit ('2-00:00:00'); null: the partition's")
    cpus_per_task: int | None = opt(None, "Slurm CPUs per node (its one task); null: default")

    def __post_init__(self) -> None:
        problems = []
        if self.submit and self.launcher not in ("auto", "slurm"):
            problems.append(
                f"launch.submit=true calls sbatch: it needs launch.launcher=slurm (or auto), got"
                f" {self.launcher}"
            )
        if self.max_restarts < 0:
            problems.append(f"launch.max_restarts must be >= 0, got {self.max_restarts}")
        if not 0 < self.rdzv_port < 65536:
            problems.append(f"launch.rdzv_port must be a TCP port (1-65535), got {self.rdzv_port}")
        if self.time is not None and not _SLURM_TIME.match(self.time):
            problems.append(
                f"launch.time={self.time!r} is not a Slurm time: minutes, 'HH:MM:SS' or"
                " 'D-HH:MM:SS'"
            )
        for key in ("job_name", "partition", "account"):
            value = getattr(self, key)
            if value is not None and not _SLURM_WORD.match(value):
                problems.append(
                    f"launch.{key}={value!r}: letters, digits and . , + - _ only (it goes into"
                    " an #SBATCH line)"
                )
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            problems.append(f"launch.cpus_per_task must be >= 1, got {self.cpus_per_task}")
        if problems:
            raise ValueError("; ".join(problems))


# ----------------------------------------------------------------------------- the decision


@dataclass(frozen=True, kw_only=True)
class Machine:
    """This machine's CUDA devices: the first one's name (None without CUDA) and their count."""

    gpu_name: str | None
    gpu_count: int

    def describe(self) -> str:
        return f"{self.gpu_count} x {self.gpu_name}" if self.gpu_name else "no CUDA device"


def this_machine() -> Machine:
    """The CUDA devices this process sees (CUDA_VISIBLE_DEVICES applies)."""
    import torch

    if not torch.cuda.is_available():
        return Machine(gpu_name=None, gpu_count=0)
    return Machine(gpu_name=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count())


def gpu_family(name: str) -> str | None:
    """'H100' of 'H100-SXM' or 'NVIDIA H100 80GB HBM3'; 'A100' of 'NVIDIA A100-SXM4-40GB'."""
    found = re.search(r"(?<![A-Z0-9])([A-Z]\d{2,3})(?![0-9])", name.upper())
    return found[1] if found else None


def machine_matches(hw: HardwareConfig, machine: Machine) -> bool:
    """Whether `hw` is this machine: one node, and its CPU, or exactly its GPUs' family and count."""
    if hw.nodes != 1:
        return False
    if hw.gpu == "cpu":
        return True
    family = gpu_family(hw.gpu)
    return (
        machine.gpu_name is not None
        and family is not None
        and gpu_family(machine.gpu_name) == family
        and machine.gpu_count == hw.gpus_per_node
    )


def in_job(env: Mapping[str, str]) -> bool:
    """Whether this process is a rank of a launched job (torchrun sets RANK and WORLD_SIZE)."""
    return "RANK" in env and "WORLD_SIZE" in env


def choose_launch(
    launch: LaunchConfig,
    hw: HardwareConfig,
    *,
    env: Mapping[str, str],
    machine: Callable[[], Machine] = this_machine,
) -> Where:
    """'here' (train in this process), 'local' (start torchrun here) or 'write' (the launch).
    `machine` is asked only outside a job (a rank must not touch CUDA before taking its GPU)."""
    if in_job(env):
        if launch.launcher not in ("auto", "none"):
            raise LaunchError(
                f"launch.launcher={launch.launcher}, but this process is already rank"
                f" {env['RANK']} of a launched job of {env['WORLD_SIZE']}: inside a job use"
                " launch.launcher=none (or auto), as the written launch does"
            )
        return "here"
    if launch.launcher == "none":
        return "here"
    if launch.launcher in ("slurm", "torchrun"):
        return "write"
    here = machine()
    matches = machine_matches(hw, here)
    if launch.launcher == "local":
        if not matches:
            raise LaunchError(
                f"launch.launcher=local: hardware is {hw.nodes} node(s) x {hw.gpus_per_node}"
                f" {hw.gpu}, but this machine has {here.describe()}: pick this machine's"
                " hardware, or launch.launcher=auto to write the launch for the cluster"
            )
        return "local"
    if not matches:
        return "write"
    return "here" if hw.gpu == "cpu" and hw.world_size == 1 else "local"


# ----------------------------------------------------------------------------- the job's command


def job_overrides(given: list[str] | tuple[str, ...]) -> list[str]:
    """The overrides the job's command gets: those given, less `launch.*`, plus
    `launch.launcher=none` (a rank trains; it launches nothing)."""
    overrides = [o for o in given if not o.startswith(("launch.", "launch="))]
    return [*overrides, "launch.launcher=none"]


def child_overrides(command: JobCommand, run: RunSettings, config_text: str) -> list[str]:
    """This run's overrides for the job: the command line's (from the resolved config's header)
    less `launch.*`, plus `launch.launcher=none`; checked to rebuild this very config (`run`, a
    `foundry <command>` config) from `configs/<command>.yaml`."""
    from foundry.compose import compose_config

    header = [line for line in config_text.splitlines() if line.startswith("# overrides:")]
    if not header:
        raise LaunchError(
            "cannot launch: the config text does not say its overrides (no '# overrides:' line);"
            f" run foundry {command} from the command line"
        )
    given = header[0].removeprefix("# overrides:").split()
    given = [] if given == ["(none)"] else given
    overrides = job_overrides(given)
    try:
        rebuilt = compose_config(command, overrides).build(type(run))
        same = replace(rebuilt, launch=run.launch) == run
    except ValueError:  # a ConfigError too: the words split apart are not the overrides given
        same = False
    if not same:
        raise LaunchError(
            "cannot launch: the overrides " + " ".join(given) + " do not rebuild this run's"
            " config for the job (is there a value with a space in it? write it without one)"
        )
    return overrides


@dataclass(frozen=True, kw_only=True)
class Job:
    """A run as its launch sees it: the `foundry` command each rank runs, the run's settings
    (hardware, `launch.*`, save folder, run name) and the overrides the ranks get, which end in
    `launch.launcher=none`."""

    command: JobCommand
    run: RunSettings
    overrides: tuple[str, ...]

    @classmethod
    def of(cls, command: JobCommand, run: RunSettings, config_text: str) -> Job:
        """The job of a run given on the command line (`child_overrides`: they rebuild it)."""
        overrides = child_overrides(command, run, config_text)
        return cls(command=command, run=run, overrides=tuple(overrides))


# ----------------------------------------------------------------------------- doing it


@dataclass(frozen=True, kw_only=True)
class Draft:
    """A launch written before the run is fully described (`foundry.launch_draft`): the keys it
    still needs."""

    needs: tuple[str, ...]

    def reason(self, command: JobCommand) -> str:
        """What the run needs, as the scripts and the message of `foundry <command>` say it."""
        keys = ", ".join(f"{k}=..." for k in self.needs)
        return f"the run needs {keys}: rerun foundry {command} with them to write the launch"


DRAFT_DIR = "foundry_launch"  # a draft's folder without launch.out_dir or a local save_folder


def launch_dir(run: RunSettings) -> str:
    """Where the launch is written: launch.out_dir, else a local save folder (absolute)."""
    from streaming.storage import is_remote

    if run.launch.out_dir is not None:
        return os.path.abspath(run.launch.out_dir)
    if run.save_folder is not None and not is_remote(run.save_folder):
        return os.path.abspath(run.save_folder)
    where = "a remote save_folder" if run.save_folder else "no save_folder"
    raise LaunchError(
        f"the launch is written beside the run's checkpoints, but this run has {where}: set"
        " launch.out_dir=<a local folder> (and save_folder, so that restarts resume)"
    )


def write_script(path: str, text: str, *, overwrite: bool) -> None:
    """Write an executable script atomically; another run's script only with `overwrite`."""
    from streaming.storage import atomic_write

    if os.path.exists(path) and not overwrite:
        with open(path) as file:
            if file.read() != text:
                raise LaunchError(
                    f"{path} holds the launch of another run (its config differs): pick another"
                    " save_folder or launch.out_dir, or save_overwrite=true to replace it"
                )
        return

    def write(tmp: str) -> None:
        with open(tmp, "w") as file:
            file.write(text)
        os.chmod(tmp, 0o755)

    atomic_write(path, write)


def _how_to_start(job: Job, written: list[tuple[str, str]], draft: Draft | None = None) -> str:
    """What the user reads: why nothing trained here, the written files and how to start them."""
    run = job.run
    hw, launcher = run.hardware, run.launch.launcher
    why = "not this machine" if launcher == "auto" else f"launch.launcher={launcher}"
    head = (
        f"foundry {job.command}: hardware is {hw.nodes} node(s) x {hw.gpus_per_node} {hw.gpu}"
        f" ({why}): nothing was trained here; "
    )
    if draft is not None:
        lines = [head + "a DRAFT of the launch is written (it stops at once if started):"]
        lines += [f"  {kind + ':':<10}{path}" for kind, path in written]
        lines.append("  " + draft.reason(job.command))
        if run.save_folder is None:
            lines.append("  and set save_folder=..., so that restarts resume from checkpoints")
        if run.launch.submit:
            lines.append("  launch.submit=true: not submitted (a draft cannot train)")
        return "\n".join(lines)
    lines = [head + "the launch is written:"]
    for kind, path in written:
        how = f"sbatch {path}" if kind == "Slurm" else f"HEAD=<first node> bash {path}  (each node)"
        lines.append(f"  {kind + ':':<10}{how}")
    if any(kind == "Slurm" for kind, _ in written) and not run.launch.submit:
        lines.append("  or, on a Slurm login node, the same command with launch.submit=true")
    if run.save_folder is None or not run.autoresume:
        lines.append("  note: without save_folder and autoresume, a restart trains from the start")
    elif run.save_overwrite:
        lines.append("  note: with save_overwrite=true, each restart starts afresh too")
    return "\n".join(lines)


def write_launch(job: Job, *, plan: str | None, draft: Draft | None = None) -> int:
    """Write the launch for the cluster and say how to start it (and print the plan, if the
    command has one): exit status 1, as nothing was trained; with `launch.submit`, sbatch's exit
    status. A `draft` is written as `*.draft.sh` (scripts that say what the run needs and exit
    2), never submitted, and returns 2."""
    launch = job.run.launch
    out_dir = launch_dir(job.run) if draft is None else _draft_dir(job.run)
    workdir, reason = os.getcwd(), draft and draft.reason(job.command)
    scripts = []
    if launch.launcher in ("auto", "slurm"):
        text = slurm_script(job, workdir=workdir, out_dir=out_dir, plan=plan, draft=reason)
        scripts.append(("Slurm", os.path.join(out_dir, _named(SLURM_SCRIPT, draft)), text))
    if launch.launcher in ("auto", "torchrun"):
        text = torchrun_script(job, workdir=workdir, plan=plan, draft=reason)
        scripts.append(("torchrun", os.path.join(out_dir, _named(TORCHRUN_SCRIPT, draft)), text))
    for _, path, text in scripts:  # a draft replaces a draft: its names are only drafts'
        write_script(path, text, overwrite=job.run.save_overwrite or draft is not None)
    if plan:
        print(plan, flush=True)
    written = [(kind, path) for kind, path, _ in scripts]
    print(_how_to_start(job, written, draft), file=sys.stderr, flush=True)
    if draft is not None:
        return 2
    if not launch.submit:
        return 1
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise LaunchError(
            f"launch.submit=true, but sbatch is not on PATH here: submit {written[0][1]} from a"
            " machine of the Slurm cluster"
        )
    return subprocess.run([sbatch, written[0][1]], check=False).returncode


def _named(script: str, draft: Draft | None) -> str:
    """A script's file name: `launch_slurm.sh`, or `launch_slurm.draft.sh` for a draft."""
    return script if draft is None else script.removesuffix(".sh") + ".draft.sh"


def _draft_dir(run: RunSettings) -> str:
    """A draft's folder: launch.out_dir or a local save folder, else ./foundry_launch."""
    try:
        return launch_dir(run)
    except LaunchError:
        return os.path.abspath(DRAFT_DIR)


def run_local(job: Job) -> int:
    """Start torchrun on this machine for the hardware's processes; its exit status."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # one node: c10d rendezvous on a free port of localhost
        f"--nproc-per-node={job.run.hardware.gpus_per_node}",
        f"--max-restarts={job.run.launch.max_restarts}",
        "-m",
        "foundry",
        job.command,
        *job.overrides,
    ]
    print(f"foundry {job.command}: starting {shlex.join(command)}", file=sys.stderr, flush=True)
    return subprocess.run(command, env={**os.environ, **RESTART_ENV}, check=False).returncode
