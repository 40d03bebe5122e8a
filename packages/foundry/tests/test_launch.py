"""`foundry train` gets onto its hardware: torchrun started here when the hardware is this
machine, the launch written for the cluster (a Slurm batch script, the per-node torchrun)
otherwise, training inside a job; bad launches are refused before any work.

The two-"node" Slurm run (fake sbatch/srun on PATH) with a killed worker is end to end:
tests/test_foundry_pretrain_e2e.py."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from foundry.cli import main
from foundry.compose import CONFIG_DIR, compose_config
from foundry.launch import (
    LaunchConfig,
    LaunchError,
    Machine,
    choose_launch,
    gpu_family,
    machine_matches,
)
from foundry.launch_scripts import SLURM_SCRIPT, TORCHRUN_SCRIPT
from foundry.schema import HardwareConfig, TrainCommand
from foundry.train import Placement, TrainError, check_run
from foundry.validate import ConfigError
from streaming import MDSWriter

TINY = [
    "model.vocab_size=64",
    "model.max_seq_len=32",
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=2",
    "data.max_seq_len=32",
    "global_train_batch_size=4",
    "scheduler.warmup=2ba",
]
# MPT-30B on MosaicML's 512 H100s, from a machine that is not that cluster
CLUSTER = [
    "model=mpt_30b",
    "hardware=512xh100",
    "data.sources.main.local=/cluster/mds",
    "max_duration=1Ttok",
    "global_train_batch_size=1024",
]
NO_GPU = Machine(gpu_name=None, gpu_count=0)


def _hardware(name: str = "cpu", **changes) -> HardwareConfig:
    """A hardware option of configs/hardware/ (read without Hydra: these tests are many)."""
    options = yaml.safe_load((CONFIG_DIR / "hardware" / f"{name}.yaml").read_text())
    return HardwareConfig(**{**options, **changes})


def _train(*overrides: str) -> TrainCommand:
    base = [*TINY, "data.sources.main.local=x", "max_duration=2ba"]
    return compose_config("train", [*base, *overrides]).build(TrainCommand)


def test_gpu_families_and_which_hardware_is_this_machine():
    assert gpu_family("H100-SXM") == gpu_family("NVIDIA H100 80GB HBM3") == "H100"
    assert gpu_family("NVIDIA H100 PCIe") == "H100" and gpu_family("H200") == "H200"
    assert gpu_family("NVIDIA A100-SXM4-40GB") == gpu_family("A100-80GB") == "A100"
    assert gpu_family("NVIDIA H200") == "H200" and gpu_family("cpu") is None
    h200 = Machine(gpu_name="NVIDIA H200", gpu_count=1)
    four_h100 = Machine(gpu_name="NVIDIA H100 80GB HBM3", gpu_count=4)
    assert machine_matches(_hardware("1xh200"), h200)
    assert machine_matches(_hardware("4xh100"), four_h100)
    assert not machine_matches(_hardware("1xh100"), h200)  # another family
    assert not machine_matches(_hardware("2xh100"), four_h100)  # another count
    assert not machine_matches(_hardware("1xh100"), NO_GPU)
    assert machine_matches(_hardware(gpus_per_node=4), NO_GPU)  # 4 processes on this CPU
    assert not machine_matches(_hardware(nodes=2), NO_GPU)  # one machine is one node


def _where(hw: HardwareConfig, env=None, machine=NO_GPU, **launch) -> str:
    return choose_launch(LaunchConfig(**launch), hw, env=env or {}, machine=lambda: machine)


def test_the_launch_decision():
    h200 = Machine(gpu_name="NVIDIA H200", gpu_count=1)
    cpu, cpu2, cluster = _hardware(), _hardware(gpus_per_node=2), _hardware("512xh100")
    assert _where(cpu) == "here"  # one CPU process: in this process, as before
    assert _where(cpu2) == "local"  # 2 gloo ranks under torchrun
    assert _where(_hardware("1xh200"), machine=h200) == "local"  # restarts need torchrun
    assert _where(_hardware("1xh200")) == "write"  # not this machine
    assert _where(cluster) == "write"
    assert _where(cpu, launcher="local") == "local"
    assert _where(cpu, launcher="slurm") == "write"
    assert _where(cpu2, launcher="none") == "here"
    job = {"RANK": "1", "WORLD_SIZE": "2"}  # torchrun's workers train, whatever the hardware
    assert _where(cluster, env=job) == "here"
    with pytest.raises(LaunchError, match="launcher=slurm, but this process is already rank 1"):
        _where(cpu, env=job, launcher="slurm")  # a job never launches itself again
    with pytest.raises(LaunchError, match="launcher=local: hardware is 1 node.*has no CUDA"):
        _where(_hardware("1xh200"), launcher="local")


def test_bad_launch_settings_are_named_together():
    with pytest.raises(ConfigError) as err:
        _train(
            "launch.launcher=torchrun",
            "launch.submit=true",
            "launch.time=two days",
            "launch.partition=a b",
            "launch.max_restarts=-1",
        )
    text = str(err.value)
    assert "launch.submit=true calls sbatch: it needs launch.launcher=slurm" in text
    assert "launch.time='two days' is not a Slurm time" in text
    assert "launch.partition='a b'" in text and "launch.max_restarts must be >= 0" in text


def test_the_launch_for_a_cluster_is_written_and_nothing_trains(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "mpt30b"
    slurm = ["launch.partition=gpu", "launch.time=2-00:00:00", "launch.cpus_per_task=96"]
    assert main(["train", *CLUSTER, f"save_folder={run}", *slurm]) == 1
    out, err = capsys.readouterr()
    assert "plan: mpt_30b on 512 x H100-SXM" in out and "29,957,200,896" in out  # foundry.plan
    assert "nothing was trained here" in err and f"sbatch {run / SLURM_SCRIPT}" in err
    assert f"HEAD=<first node> bash {run / TORCHRUN_SCRIPT}" in err
    script = (run / SLURM_SCRIPT).read_text()
    for line in (
        "#SBATCH --nodes=64",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=96",
        "#SBATCH --time=2-00:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --job-name=mpt30b",
        f"#SBATCH --output={run}/slurm-%j.out",
        f"#SBATCH --chdir={tmp_path}",
        '--nnodes="$SLURM_NNODES"',
        "--nproc-per-node=8",
        '--rdzv-endpoint="$head":29500',
        '--rdzv-id="$SLURM_JOB_ID"',
        "--max-restarts=3",
        "model=mpt_30b",
        "launch.launcher=none",
        "# parameters   29,957,200,896",  # the plan, in the script's header
    ):
        assert line in script, line
    assert "launch.partition" not in script  # the job's config is the run's, launch aside
    node = (run / TORCHRUN_SCRIPT).read_text()
    assert "--nnodes=64" in node and '--rdzv-endpoint="$HEAD":29500' in node
    for path in (run / SLURM_SCRIPT, run / TORCHRUN_SCRIPT):
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0  # valid bash
        assert os.access(path, os.X_OK)
    assert not list(run.glob("ep*")) and not (run / "foundry_config.yaml").exists()

    # the same command again: the same scripts; another run's config: refused, then replaced
    assert main(["train", *CLUSTER, f"save_folder={run}", *slurm]) == 1
    assert (run / SLURM_SCRIPT).read_text() == script
    capsys.readouterr()
    assert main(["train", *CLUSTER, f"save_folder={run}", "max_duration=2Ttok"]) == 1
    assert f"{run / SLURM_SCRIPT} holds the launch of another run" in capsys.readouterr().err
    assert (run / SLURM_SCRIPT).read_text() == script
    replaced = [*CLUSTER, f"save_folder={run}", "max_duration=2Ttok", "save_overwrite=true"]
    assert main(["train", *replaced]) == 1
    assert "max_duration=2Ttok" in (run / SLURM_SCRIPT).read_text()


def test_launches_that_cannot_be_written_or_submitted_say_why(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *CLUSTER, "save_folder=s3://bucket/run"]) == 1
    assert "this run has a remote save_folder: set launch.out_dir=" in capsys.readouterr().err
    assert main(["train", *CLUSTER, "save_folder=run", "run_name=my run"]) == 1
    assert "do not rebuild this run's config" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch here
    submit = ["launch.launcher=slurm", "launch.submit=true", "save_folder=run"]
    assert main(["train", *CLUSTER, *submit]) == 1
    err = capsys.readouterr().err
    assert f"sbatch is not on PATH here: submit {tmp_path / 'run' / SLURM_SCRIPT}" in err


def test_a_cluster_run_without_its_data_gets_the_plan_and_a_draft(tmp_path, capsys, monkeypatch):
    """On a login node, before the data and the budget are chosen: the literal command plans."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "model=mpt_30b", "hardware=512xh100", "launch.submit=true"]) == 2
    out, err = capsys.readouterr()
    assert "plan: mpt_30b on 512 x H100-SXM" in out and "29,957,200,896" in out
    assert "max_duration not set: days and cost are for 20 tokens per parameter" in out
    assert "global_train_batch_size 32 does not divide the 512 ranks" in out
    draft = tmp_path / "foundry_launch" / "launch_slurm.draft.sh"
    assert f"Slurm:    {draft}" in err and "a DRAFT of the launch is written" in err
    needs = "data.sources.main.local=..., max_duration=..., global_train_batch_size=..."
    assert needs in err and "not submitted (a draft cannot train)" in err
    assert sorted(p.name for p in draft.parent.iterdir()) == [
        "launch_slurm.draft.sh",
        "launch_torchrun.draft.sh",
    ]
    for path in draft.parent.iterdir():  # each stops before it starts anything
        stopped = subprocess.run(["bash", str(path)], capture_output=True, text=True, env={})
        assert stopped.returncode == 2 and needs in stopped.stderr
        assert "# parameters   29,957,200,896" in path.read_text()

    # given what it needs, the same command writes the real launch beside nothing of the draft's
    run = tmp_path / "run"
    assert main(["train", *CLUSTER, f"save_folder={run}"]) == 1
    assert sorted(p.name for p in run.iterdir()) == [SLURM_SCRIPT, TORCHRUN_SCRIPT]
    capsys.readouterr()

    # not a draft: a job's rank, this machine's hardware, or another problem too
    assert main(["train", "model=mpt_30b", "hardware=cpu"]) == 2
    assert "required, but not set" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "512")
    assert main(["train", "model=mpt_30b", "hardware=512xh100"]) == 2
    monkeypatch.delenv("RANK")
    assert main(["train", "model=mpt_30b", "hardware=512xh100", "seed=x"]) == 2
    err = capsys.readouterr().err
    assert "seed: expected int" in err and "max_duration: required, but not set" in err
    assert not (tmp_path / "foundry_launch" / "slurm-%j.out").exists()


def test_a_run_that_cannot_start_is_not_launched(tmp_path, capfd, monkeypatch):
    """Its warm-up is longer than the run: refused before torchrun (which would retry it)."""
    monkeypatch.chdir(tmp_path)
    local = [*TINY, "hardware.gpus_per_node=2", "data.sources.main.local=x", "max_duration=1ba"]
    assert main(["train", *local]) == 1
    err = capfd.readouterr().err
    assert "scheduler.warmup 2ba (2 steps) is longer than the schedule" in err
    assert "max_duration 1ba: 1 steps" in err and "starting" not in err  # no torchrun
    assert main(["train", *CLUSTER, "save_folder=run", "scheduler.warmup=2Ttok"]) == 1
    err = capfd.readouterr().err  # tokens count in steps of 1024 x 8192 tokens
    assert "warmup 2Ttok (238419 steps) is longer than the schedule (max_duration 1Ttok:" in err
    assert not (tmp_path / "run").exists()  # no launch written for it
    assert main(["train", *local, "eval_interval=5 batches"]) == 1
    assert "eval_interval='5 batches': unknown time unit 'batches'" in capfd.readouterr().err
    assert main(["train", *CLUSTER, "save_folder=run", "scheduler.warmup=200Btok"]) == 1
    assert (tmp_path / "run" / SLURM_SCRIPT).exists()  # 23842 of 119210 steps: fine


def test_world_checks_inside_a_job(monkeypatch):
    hybrid = _train("hardware.nodes=2", "parallelism.sharding=hybrid")
    cpu2 = Placement(rank=0, world=2, device=torch.device("cpu"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun --nnodes=1 --nproc-per-node=2
    with pytest.raises(TrainError, match="1 process.* per node, but torchrun started 2 on this"):
        check_run(hybrid, cpu2, command="train")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    check_run(
        hybrid, cpu2, command="train"
    )  # 2 nodes x 1: shard within a node, replicate across the two
    bad = replace(hybrid, parallelism=replace(hybrid.parallelism, shard_group_size=3))
    with pytest.raises(TrainError, match="groups of 3 rank.*does not divide the 2 ranks"):
        check_run(bad, cpu2, command="train")


def _pretraining_data(out: Path) -> Path:
    rng = np.random.default_rng(0)
    with MDSWriter(out=str(out), columns={"tokens": "ndarray:int32"}, size_limit=1 << 12) as w:
        for _ in range(32):
            start = int(rng.integers(0, 8))
            w.write({"tokens": ((np.arange(32) + start) % 8 + 2).astype(np.int32)})
    return out


@pytest.mark.distributed
def test_foundry_starts_torchrun_when_the_hardware_is_this_machine(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data, run = _pretraining_data(tmp_path / "mds"), tmp_path / "run"
    args = ["hardware.gpus_per_node=2", f"data.sources.main.local={data}", "max_duration=2ba"]
    assert main(["train", *TINY, *args, f"save_folder={run}"]) == 0
    out, err = capfd.readouterr()
    assert "starting " in err and "torch.distributed.run --standalone --nproc-per-node=2" in err
    assert out.count("trained to batch 2") == 1  # rank 0 of the 2 torchrun workers
    assert yaml.safe_load((run / "foundry_config.yaml").read_text())["launch"]["launcher"] == "none"
    steps = [
        json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert 2 in steps
