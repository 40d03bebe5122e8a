"""`foundry train`: a tiny MPT trains on prepared MDS data, saves, resumes; bad runs are refused
before any work, each naming what to change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from evalkit.testing import write_tasks
from foundry.cli import main
from foundry.compose import compose_config
from foundry.schema import TrainCommand
from foundry.train import TrainError, check_run, run_command, to_time
from streaming import MDSWriter
from streaming.testing.distributed import free_port

VOCAB, SEQ = 64, 32
TINY = [
    f"model.vocab_size={VOCAB}",
    f"model.max_seq_len={SEQ}",
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=2",
    f"data.max_seq_len={SEQ}",
    "global_train_batch_size=4",
    "scheduler.warmup=2ba",
    "log.console_every=100",
]


def write_pretraining_data(out: Path, samples: int = 64, seed: int = 0) -> Path:
    """Rows of a repeating token pattern (learnable) in foundry's layout (`tokens`, int32)."""
    rng = np.random.default_rng(seed)
    with MDSWriter(out=str(out), columns={"tokens": "ndarray:int32"}, size_limit=1 << 12) as w:
        for _ in range(samples):
            start = int(rng.integers(0, 8))
            w.write({"tokens": ((np.arange(SEQ) + start) % 8 + 2).astype(np.int32)})
    return out


@pytest.fixture
def data(tmp_path) -> Path:
    return write_pretraining_data(tmp_path / "mds")


def train_config(*overrides: str) -> TrainCommand:
    return compose_config("train", [*TINY, *overrides]).build(TrainCommand)


def losses(metrics: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()[1:]]
    return {
        r["step"]: r["metrics"]["loss/train/total"]
        for r in rows
        if "metrics" in r and "loss/train/total" in r["metrics"]
    }


def test_trains_saves_and_resumes(data, tmp_path, capsys):
    run = tmp_path / "run"
    args = [f"data.sources.main.local={data}", f"save_folder={run}", "save_interval=6ba"]
    args += [f"eval_data.local={data}", "eval_interval=6ba", "eval_subset_num_batches=2"]
    assert main(["train", *TINY, *args, "max_duration=12ba"]) == 0
    out = capsys.readouterr().out
    assert "trained to batch 12 (sdpa attention)" in out and f"checkpoint: {run}/ep" in out
    saved = yaml.safe_load((run / "foundry_config.yaml").read_text())
    assert saved["model"]["d_model"] == 32 and saved["max_duration"] == "12ba"
    first = losses(run / "metrics.jsonl")
    assert first[12] < first[1] * 0.7  # it learns the pattern
    assert main(["train", *TINY, *args, "max_duration=18ba"]) == 0  # autoresume: 6 more batches
    assert "trained to batch 18" in capsys.readouterr().out
    assert sorted(losses(run / "metrics.jsonl")) == list(range(1, 19))  # no batch twice


def test_two_processes_train_with_fsdp_under_torchrun(data, tmp_path, tiny_tokenizer):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    command += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}"]
    command += ["-m", "foundry", "train", *TINY, "hardware=cpu"]
    command += ["hardware.gpus_per_node=2", f"data.sources.main.local={data}", "max_duration=6ba"]
    command += [f"save_folder={run}", "save_interval=3ba"]
    # evalkit's ICL tasks at each evaluation, through the FSDP2-sharded model's root
    tasks = write_tasks(tmp_path / "icl", n=4)
    command += [f"icl_tasks={tasks}", f"tokenizer={tiny_tokenizer}", "model.vocab_size=640"]
    command += ["eval_interval=3ba"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained to batch 6") == 1  # rank 0 reports
    assert done.stdout.count("max_duration: 6ba") == 1  # the resolved config is printed once
    assert sorted(p.name for p in run.glob("ep*")) == ["ep0-ba3", "ep0-ba6"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()[1:]]
    icl = [r["step"] for r in records if any(k.startswith("icl/") for k in r.get("metrics", {}))]
    assert icl == [3, 6]


def test_times_with_scaled_counts():
    assert to_time("26Btok", key="max_duration") == "26000000000tok"
    assert to_time("1.5Msp", key="max_duration") == "1500000sp"
    assert to_time("100ba", key="max_duration") == "100ba"


def _place(world: int = 1):
    import torch

    from foundry.train import Placement

    return Placement(rank=0, world=world, device=torch.device("cpu"))


def test_bad_runs_are_refused_before_any_work(data, tmp_path, tiny_tokenizer, capsys):
    base = [f"data.sources.main.local={data}", "max_duration=4ba"]
    # a key that does not exist, with a suggestion
    assert main(["train", *TINY, *base, "max_durration=4ba"]) == 2
    assert "did you mean 'max_duration'" in capsys.readouterr().err
    # a data path that does not exist
    assert main(["train", *TINY, "data.sources.main.local=/nowhere", "max_duration=4ba"]) == 1
    assert "/nowhere holds no prepared dataset" in capsys.readouterr().err
    # max_seq_len of the data larger than the model's
    with pytest.raises(Exception, match="data.max_seq_len 64 is longer than model.max_seq_len 32"):
        train_config(*base, "data.max_seq_len=64")
    # a tokenizer whose vocabulary is larger than the model's
    cfg = train_config(*base, f"tokenizer={tiny_tokenizer}")
    with pytest.raises(ValueError, match=f"has 600 tokens but model.vocab_size={VOCAB}"):
        check_run(cfg, _place(), command="train")
    # hardware that this process is not: the launch it needs runs this command
    eight = ["hardware=8xh100", "global_train_batch_size=8", "launch.launcher=none"]
    assert main(["train", *TINY, *base, *eight]) == 1
    err = capsys.readouterr().err
    assert "hardware has 8 rank(s) (1 node(s) x 8), but this process is one of 1" in err
    assert "launch with torchrun --nnodes=1 --nproc-per-node=8 -m foundry train ...," in err
    with pytest.raises(TrainError, match="names H100-SXM GPUs but this machine has no CUDA"):
        check_run(train_config(*base, "hardware=1xh100"), _place(), command="train")


def test_a_save_folder_of_another_model_shape_is_refused(data, tmp_path, capsys):
    run = tmp_path / "run"
    args = [f"data.sources.main.local={data}", f"save_folder={run}", "max_duration=2ba"]
    assert main(["train", *TINY, *args]) == 0
    before = sorted(p.name for p in run.iterdir())
    capsys.readouterr()
    assert main(["train", *TINY, *args, "model.d_model=64"]) == 1
    err = capsys.readouterr().err
    assert "holds a run of another model shape (model.d_model: 32 there, 64 here)" in err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing touched
    fresh = train_config(*args, "model.d_model=64", "save_overwrite=true")
    assert run_command(fresh, "model: {}\n") == 0  # asked for: starts afresh there


def test_rows_of_another_length_are_refused_before_training(data):
    from foundry.train import build_run

    short = train_config(
        f"data.sources.main.local={data}", "max_duration=2ba", "data.max_seq_len=16"
    )
    with pytest.raises(
        TrainError, match="data: its rows hold 32 tokens, but data.max_seq_len is 16"
    ):
        build_run(short, _place())  # was: an error at the first forward, or a silent crop


def test_checkpoints_and_config_go_to_s3(data, s3_bucket, capsys):
    folder = f"{s3_bucket}/runs/tiny"
    args = [f"data.sources.main.local={data}", f"save_folder={folder}", "max_duration=2ba"]
    assert main(["train", *TINY, *args]) == 0
    assert f"checkpoint: {folder}/ep0-ba2" in capsys.readouterr().out
    from foundry.checkpoints import load_trained

    model, cfg = load_trained(folder)  # the config read back from the bucket, then the weights
    assert cfg.model.d_model == 32 and model.config.vocab_size == VOCAB
    assert main(["train", *TINY, *args, "max_duration=3ba"]) == 0  # autoresume from the bucket
    assert "trained to batch 3" in capsys.readouterr().out


def test_fsdp2_param_dtype_auto_is_bf16_on_gpus_and_none_on_cpus():
    from foundry.compose import compose_config
    from foundry.schema import TrainCommand
    from foundry.train import param_dtype

    base = ["data.sources.main.local=x", "max_duration=1ba"]
    auto = compose_config("train", base).build(TrainCommand)
    assert auto.parallelism.param_dtype == "auto"
    assert (param_dtype(auto, "cuda"), param_dtype(auto, "cpu")) == ("bf16", None)
    for given, expected in (("null", None), ("fp16", "fp16"), ("bf16", "bf16")):
        cfg = compose_config("train", [*base, f"parallelism.param_dtype={given}"]).build(
            TrainCommand
        )
        assert param_dtype(cfg, "cuda") == expected


def test_the_recipe_auto_picks_on_each_machine():
    from foundry.recipe import resolve_compile, resolve_precision

    one_gpu = dict(on_gpu=True, world=1)
    assert resolve_precision("auto", **one_gpu, optimizer="decoupled_adamw") == "bf16_master"
    assert resolve_precision("auto", **one_gpu, optimizer="adamw") == "bf16_master"
    assert resolve_precision("auto", **one_gpu, optimizer="lion") == "amp_bf16"  # no masters
    assert resolve_precision("auto", on_gpu=True, world=8, optimizer="adamw") == "amp_bf16"
    assert resolve_precision("auto", on_gpu=False, world=1, optimizer="adamw") == "fp32"
    assert resolve_precision("amp_bf16", **one_gpu, optimizer="adamw") == "amp_bf16"
    assert (resolve_compile("auto", on_gpu=True), resolve_compile("auto", on_gpu=False)) == (
        True,
        False,
    )
    base = ["data.sources.main.local=x", "max_duration=1ba", "precision=bf16_master"]
    with pytest.raises(ValueError, match="one-GPU recipe, but hardware has 8 ranks"):
        compose_config("train", [*base, "hardware=8xh100"]).build(TrainCommand)
    with pytest.raises(ValueError, match="but optimizer is lion: use precision=amp_bf16"):
        compose_config("train", [*base, "optimizer=lion"]).build(TrainCommand)


def test_on_a_gpu_the_micro_batch_is_the_largest_the_plan_fits():
    import torch

    from foundry.train import _micro_batch

    base = ["data.sources.main.local=x", "max_duration=1ba", "model=mpt_7b", "hardware=1xh200"]
    seven = compose_config("train", [*base, "global_train_batch_size=24"]).build(TrainCommand)
    gpu = torch.device("cuda")  # only its type is read: no GPU needed
    assert _micro_batch(seven, 24, gpu) == 3  # the plan's: 126 of 127 GiB usable
    assert _micro_batch(seven, 24, torch.device("cpu")) is None  # the whole device batch
    small = compose_config("train", [*base, "global_train_batch_size=2"]).build(TrainCommand)
    assert _micro_batch(small, 2, gpu) is None  # the device batch fits: one micro-batch
    given = compose_config(
        "train", [*base, "global_train_batch_size=24", "device_train_microbatch_size=6"]
    ).build(TrainCommand)
    assert _micro_batch(given, 24, gpu) == 6  # as configured


def test_bf16_weights_with_fp32_masters_train_on_the_cpu(data, tmp_path, capsys):
    """precision=bf16_master (auto's pick on one GPU) asked for on the CPU: bf16 weights, the
    update in MasterWeightAdamW, decoupled weight decay carried over as wd / lr."""
    import torch

    from composer_lite import MasterWeightAdamW
    from foundry.train import build_run, placement, save_config

    composed = compose_config(
        "train",
        [
            *TINY,
            f"data.sources.main.local={data}",
            "max_duration=6ba",
            "precision=bf16_master",
            "optimizer.lr=0.01",
            "optimizer.weight_decay=0.0001",
            f"save_folder={tmp_path / 'run'}",
            "save_interval=100ba",
        ],
    )
    cfg = composed.build(TrainCommand)
    save_config(cfg, composed.to_yaml(), placement(cfg))
    run = build_run(cfg, placement(cfg))
    optimizer = run.trainer.state.optimizer
    assert isinstance(optimizer, MasterWeightAdamW)
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.0001 / 0.01)
    assert {p.dtype for p in run.trainer.state.model.parameters()} == {torch.bfloat16}
    run.trainer.fit()
    steps = list(losses(tmp_path / "run" / "metrics.jsonl").values())
    assert len(steps) == 6 and steps[-1] < steps[0]
    state = optimizer.state[next(iter(run.trainer.state.model.parameters()))]
    assert state["master"].dtype == torch.float32
    from foundry.checkpoints import load_model  # eval, generate and convert read it as fp32

    loaded = load_model(str(tmp_path / "run")).model.state_dict()
    for name, trained in run.trainer.state.model.model.state_dict().items():
        assert torch.equal(loaded[name], trained.float()), name
