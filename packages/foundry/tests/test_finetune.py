"""`foundry finetune`: a tiny MPT pretrained here at T finetunes on response tokens (chat data,
the embedding grown for the ChatML tokens), saves and resumes, runs at 4T, finetunes at 2T to a
lower loss there, starts from a Hugging Face directory, and on two gloo ranks with FSDP2 under
the torchrun foundry starts; for a cluster it writes the launch instead (a draft, when only its
data and duration are missing); bad finetunes are refused before any weights are read, and before
torchrun starts any rank. Its run settings are `foundry train`'s, and stay so."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from foundry.checkpoints import load_model
from foundry.cli import main
from foundry.compose import compose_config
from foundry.data.finetune_prep import COLUMNS
from foundry.finetune import FinetuneCommand, finetune, plan_finetune
from foundry.finetune_model import FinetuneError, load_pretrained, target_config
from foundry.launch_scripts import SLURM_SCRIPT, TORCHRUN_SCRIPT
from foundry.schema import RunSettings, TrainCommand, run_settings
from foundry.tokenizer import save_tokenizer, train_bpe
from mpt import MPTConfig
from streaming import MDSWriter

T, VOCAB = 32, 576
TINY = [f"model.vocab_size={VOCAB}", f"model.max_seq_len={T}", "model.d_model=32"]
TINY += ["model.n_heads=2", "model.n_layers=2", "log.console_every=100"]
RUN = ["global_train_batch_size=4", "log.console_every=100"]


def pattern(n: int, length: int, seed: int) -> np.ndarray:
    """Rows of a repeating 8-token pattern (ids 2..9) from random starts: learnable."""
    starts = np.random.default_rng(seed).integers(0, 8, size=(n, 1))
    return ((np.arange(length)[None, :] + starts) % 8 + 2).astype(np.int32)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """A BPE of exactly the model's 576 tokens, without ChatML's tokens."""
    rng = random.Random(5)
    words = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choices(words, k=50)) for _ in range(300)]
    backend = train_bpe(texts, vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|pad|>"])
    assert backend.get_vocab_size() == VOCAB
    out = tmp_path_factory.mktemp("tok") / "tok576"
    return save_tokenizer(backend, out, eos_token="<|endoftext|>", pad_token="<|pad|>")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tokenizer) -> Path:
    """mpt_tiny-shaped (d_model 32, 2 layers) pretrained 16 steps at T=32 on the pattern."""
    root = tmp_path_factory.mktemp("pretrained")
    with MDSWriter(out=str(root / "mds"), columns={"tokens": "ndarray:int32"}) as writer:
        for row in pattern(96, T, seed=0):
            writer.write({"tokens": row})
    args = [f"data.sources.main.local={root / 'mds'}", f"save_folder={root / 'run'}"]
    args += [f"tokenizer={tokenizer}", "max_duration=16ba", "scheduler.warmup=2ba"]
    assert main(["train", *TINY, *RUN, *args]) == 0
    return root / "run"


def finetune_config(*overrides: str) -> FinetuneCommand:
    return compose_config("finetune", [*RUN, *overrides]).build(FinetuneCommand)


def sft_rows(out: Path, n: int, length: int, seed: int) -> Path:
    """Finetuning rows (DESIGN's layout) of the pattern: a prompt of 8 tokens, then the response."""
    with MDSWriter(out=str(out), columns=COLUMNS) as writer:
        for row in pattern(n, length, seed):
            labels = row.copy()
            labels[:8] = -100
            writer.write({"input_ids": row, "labels": labels})
    return out


def loss_at(model, rows: np.ndarray) -> float:
    ids = torch.from_numpy(rows).long()
    labels = ids.clone()
    labels[:, :8] = -100
    with torch.no_grad():
        return float(model.eval()(ids, labels=labels).loss)


def test_runs_at_4t_and_finetuning_at_2t_lowers_the_loss_there(pretrained, tmp_path):
    held_out = pattern(8, 2 * T, seed=99)
    at_4t = pattern(2, 4 * T, seed=98)
    with pytest.raises(ValueError, match=f"sequence length {4 * T} exceeds max_seq_len {T}"):
        loss_at(load_model(str(pretrained)).model, at_4t)
    assert np.isfinite(loss_at(load_pretrained(str(pretrained), max_seq_len=4 * T), at_4t))
    before = loss_at(load_pretrained(str(pretrained), max_seq_len=2 * T), held_out)

    data = sft_rows(tmp_path / "sft", 32, 2 * T, seed=1)
    cfg = finetune_config(
        f"load_path={pretrained}",
        f"data.sources.main.local={data}",
        f"max_seq_len={2 * T}",
        "max_duration=6ba",
        f"save_folder={tmp_path / 'ft'}",
    )
    run = finetune(cfg)
    assert run.trainer.state.timestamp.batch == 6
    finetuned = load_model(str(tmp_path / "ft")).model
    assert finetuned.config.max_seq_len == 2 * T
    assert loss_at(finetuned, held_out) < before


def test_cli_finetunes_chat_data_grows_the_embedding_saves_and_resumes(
    pretrained, tokenizer, tmp_path, capsys
):
    rng = random.Random(0)
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"w{rng.randint(0, 99)} w7"},
                {"role": "assistant", "content": f"w{rng.randint(0, 99)} w8"},
            ]
        }
        for _ in range(24)
    ]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    sft = tmp_path / "sft"
    prep = ["data", "finetune", f"inputs=[{tmp_path / 'chat.jsonl'}]", f"tokenizer={tokenizer}"]
    # one example per row: rows of their own lengths, shorter than the window; the collator pads
    assert main([*prep, f"out={sft}", "max_seq_len=48", "packing=false", "progress=false"]) == 0
    assert "added 2 ChatML token(s) to the tokenizer (now 578 tokens" in capsys.readouterr().out

    # the two new rows of the embedding, padded to 640 (a multiple of 64), start at the mean
    grown = load_pretrained(str(pretrained), vocab_needed=578).transformer.wte.weight
    assert grown.shape[0] == 640
    mean = grown[:VOCAB].mean(dim=0)
    torch.testing.assert_close(grown[VOCAB:], mean.expand(640 - VOCAB, -1))
    kept = load_pretrained(str(pretrained), vocab_needed=VOCAB).transformer.wte.weight
    assert kept.shape[0] == VOCAB  # room enough: nothing grows
    torch.testing.assert_close(kept, grown[:VOCAB])

    ft = tmp_path / "ft"
    args = ["finetune", f"load_path={pretrained}", f"data.sources.main.local={sft}", *RUN]
    args += [f"save_folder={ft}", "save_interval=2ba", "max_seq_len=64"]
    assert main([*args, "max_duration=4ba"]) == 0
    out = capsys.readouterr().out
    assert "embedding grown from 576 to 640 rows for the tokenizer's 578 tokens" in out
    assert f"finetuned {pretrained} to batch 4" in out
    loaded = load_model(str(ft))  # the save folder reads back like a `foundry train` run's
    assert loaded.model.config.vocab_size == 640 and loaded.model.config.max_seq_len == 64
    assert loaded.tokenizer == str(ft / "tokenizer")
    assert (ft / "foundry_finetune.yaml").is_file()
    assert main([*args, "max_duration=6ba"]) == 0  # autoresume: two more batches
    assert f"finetuned {pretrained} to batch 6" in capsys.readouterr().out
    rows = [json.loads(line) for line in (ft / "metrics.jsonl").read_text().splitlines()[1:]]
    steps = [r["step"] for r in rows if "loss/train/total" in r.get("metrics", {})]
    assert steps == list(range(1, 7))  # no batch twice

    # the pretraining folder holds the 576-row model: finetuning into it is refused, untouched
    before = sorted(p.name for p in pretrained.iterdir())
    assert main([*args, f"save_folder={pretrained}", "max_duration=2ba"]) == 1
    err = capsys.readouterr().err
    assert "holds a run of another model shape (model.vocab_size: 576 there, 640 here)" in err
    assert sorted(p.name for p in pretrained.iterdir()) == before


def test_bad_finetunes_are_refused_before_any_weights_are_read(pretrained, tmp_path):
    data = sft_rows(tmp_path / "sft", 4, 2 * T, seed=2)
    base = [f"load_path={pretrained}", f"data.sources.main.local={data}", "max_duration=2ba"]
    with pytest.raises(FinetuneError, match="model.d_model: 32 in the checkpoint, 128 here"):
        plan_finetune(finetune_config(*base, "model=mpt_tiny", f"max_seq_len={2 * T}"))
    with pytest.raises(FinetuneError, match=f"rows hold up to {2 * T} tokens, longer than the"):
        plan_finetune(finetune_config(*base))  # the window stays the checkpoint's T
    pretraining = f"data.sources.main.local={pretrained.parent / 'mds'}"
    with pytest.raises(
        FinetuneError, match="holds rows with columns \\['tokens'\\], not finetuning"
    ):
        plan_finetune(finetune_config(*base, pretraining))
    with pytest.raises(FinetuneError, match="load_path=/nowhere: not a Hugging Face MPT dir"):
        plan_finetune(finetune_config(*base, "load_path=/nowhere"))
    with pytest.raises(FinetuneError, match="data.sources.main.local: /absent does not exist"):
        plan_finetune(finetune_config(*base, "data.sources.main.local=/absent", "max_seq_len=64"))
    learned = MPTConfig(
        d_model=32, n_heads=2, n_layers=2, max_seq_len=T, alibi=False, learned_pos_emb=True
    )
    with pytest.raises(FinetuneError, match=f"trained at {T} with learned positions"):
        target_config(learned, model=None, max_seq_len=2 * T, vocab_needed=None)


def test_finetune_from_a_hugging_face_mpt_directory(pretrained, tokenizer, tmp_path):
    from mpt.hf import export_hf

    ours = load_model(str(pretrained)).model
    hf = export_hf(ours, None, tmp_path / "hf")
    (hf / "tokenizer.json").write_text((tokenizer / "tokenizer.json").read_text())
    ids = torch.from_numpy(pattern(2, T, seed=3)).long()
    from_hf = load_pretrained(str(hf), max_seq_len=2 * T)  # the same weights, a longer window
    with torch.no_grad():
        torch.testing.assert_close(from_hf(ids).logits, ours(ids).logits, atol=1e-5, rtol=1e-5)
    data = sft_rows(tmp_path / "sft", 8, 2 * T, seed=4)
    cfg = finetune_config(
        f"load_path={hf}", f"data.sources.main.local={data}", "max_seq_len=64", "max_duration=2ba"
    )
    plan = plan_finetune(cfg)
    assert plan.start.source == "hf" and plan.tokenizer == str(hf)  # its tokenizer, beside it
    assert plan.train.model.max_seq_len == 64 and plan.train.model.vocab_size == VOCAB
    assert run_settings(plan.train) == run_settings(cfg)  # the train form runs as configured


def _names(schema: type) -> set[str]:
    return {f.name for f in dataclasses.fields(schema)}


def _keys(tree: dict, prefix: str = "") -> set[str]:
    """The dotted keys a composed config sets."""
    out = set()
    for name, value in tree.items():
        key = f"{prefix}{name}"
        out |= _keys(value, key + ".") if isinstance(value, dict) else {key}
    return out


def test_train_and_finetune_share_one_set_of_run_settings():
    """A setting added for one command is added for both, or this fails: each command holds
    `RunSettings` and adds only its inputs, and both YAMLs set the same run-setting keys."""
    shared = _names(RunSettings)
    assert _names(TrainCommand) - shared == {"model", "data", "tokenizer"}
    finetune_inputs = {"load_path", "model", "max_seq_len", "data", "tokenizer"}
    assert _names(FinetuneCommand) - shared == finetune_inputs
    configs = [compose_config(name).config for name in ("train", "finetune")]
    train, tuned = ({k: v for k, v in c.items() if k in shared} for c in configs)
    assert _keys(train) == _keys(tuned)


@pytest.mark.distributed
def test_finetune_starts_torchrun_when_the_hardware_is_this_machine(
    pretrained, tmp_path, capfd, monkeypatch
):
    """hardware=cpu with 2 processes: foundry starts torchrun, whose 2 gloo ranks finetune with
    FSDP2 from the pretrained weights."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data, ft = sft_rows(tmp_path / "sft", 16, 2 * T, seed=5), tmp_path / "ft"
    args = [f"load_path={pretrained}", f"data.sources.main.local={data}", "max_seq_len=64"]
    args += ["hardware.gpus_per_node=2", "max_duration=2ba", f"save_folder={ft}"]
    assert main(["finetune", *RUN, *args, "save_interval=2ba"]) == 0
    out, err = capfd.readouterr()
    assert "torch.distributed.run --standalone --nproc-per-node=2" in err
    assert "-m foundry finetune" in err and "launch.launcher=none" in err
    assert "FSDP2 mesh" in err  # rank 0's log: the model was sharded over the two ranks
    assert out.count(f"finetuned {pretrained} to batch 2") == 1  # rank 0 of the 2 workers
    # from the pretrained weights: far below the loss of a uniform guess over the vocabulary
    assert float(re.search(r"last step loss: (\S+)", out)[1]) < 0.6 * np.log(VOCAB)
    assert [p.name for p in ft.glob("ep*")] == ["ep0-ba2"]
    assert load_model(str(ft)).model.config.max_seq_len == 64


def test_a_finetune_for_a_cluster_writes_its_launch_and_nothing_trains(
    pretrained, tmp_path, capsys, monkeypatch
):
    """hardware=512xh100 is not this machine: the launch runs `-m foundry finetune` with the
    overrides given (launch.* aside), there is no plan to print, and nothing trains here."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "ft"
    given = [f"load_path={pretrained}", "data.sources.main.local=/cluster/sft", "max_seq_len=64"]
    given += ["hardware=512xh100", "global_train_batch_size=512", "max_duration=100ba"]
    given += [f"save_folder={run}"]
    assert main(["finetune", *given, "launch.partition=gpu"]) == 1
    out, err = capsys.readouterr()
    head = "foundry finetune: hardware is 64 node(s) x 8 H100-SXM (not this machine): nothing"
    assert head in err and f"sbatch {run / SLURM_SCRIPT}" in err
    script = (run / SLURM_SCRIPT).read_text()
    for line in ("#SBATCH --nodes=64", "#SBATCH --partition=gpu", "#SBATCH --job-name=ft"):
        assert line in script, line
    command = script.split("-m foundry finetune \\\n    ")[1].split(" \\\n    ")
    assert [word.strip() for word in command] == [*given, "launch.launcher=none"]
    assert "plan" not in out + err + script  # foundry finetune has none to print
    for path in (run / SLURM_SCRIPT, run / TORCHRUN_SCRIPT):
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0  # valid bash
        assert os.access(path, os.X_OK)
    assert sorted(p.name for p in run.iterdir()) == [SLURM_SCRIPT, TORCHRUN_SCRIPT]


def test_a_finetune_on_the_wrong_number_of_ranks_says_how_to_launch_a_finetune(
    pretrained, tmp_path, capsys
):
    """One process of a run on 2 (launch.launcher=none: in this process, as it is)."""
    data = sft_rows(tmp_path / "sft", 8, 2 * T, seed=7)
    given = [f"load_path={pretrained}", f"data.sources.main.local={data}", "max_seq_len=64"]
    given += ["hardware.gpus_per_node=2", "max_duration=2ba", "launch.launcher=none"]
    assert main(["finetune", *RUN, *given]) == 1
    err = capsys.readouterr().err
    assert "hardware has 2 rank(s) (1 node(s) x 2), but this process is one of 1" in err
    assert "launch with torchrun --nnodes=1 --nproc-per-node=2 -m foundry finetune ...," in err


def test_a_finetune_that_cannot_start_starts_no_ranks(pretrained, tmp_path, capfd, monkeypatch):
    """On this machine's 2 processes, a missing checkpoint or data folder, or a warm-up longer
    than the run (its tokens counted at the window), is refused in this process before torchrun
    starts any rank (which would retry it), the error naming the key and the path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    data = sft_rows(tmp_path / "sft", 8, 2 * T, seed=6)
    good = [f"load_path={pretrained}", f"data.sources.main.local={data}", "max_seq_len=64"]
    two = [*RUN, *good, "hardware.gpus_per_node=2", "max_duration=2ba", "launch.max_restarts=0"]
    refused = {
        "load_path=/nowhere": "load_path=/nowhere: not a Hugging Face MPT directory",
        "data.sources.main.local=absent": (
            f"data.sources.main.local: absent does not exist (no absent/index.json) (relative"
            f" to {tmp_path}): prepare it with `foundry data finetune`, or fix the path"
        ),
        "data.sources.main.local=empty": "data.sources.main.local: empty holds no prepared",
        # 1000 tokens at 4 rows of 64 a batch: 4 steps
        "scheduler.warmup=1000tok": (
            "scheduler.warmup 1000tok (4 steps) is longer than the schedule (max_duration 2ba:"
        ),
    }
    for override, message in refused.items():
        assert main(["finetune", *two, override]) == 1
        err = capfd.readouterr().err
        assert message in err and "starting" not in err, override  # no torchrun


def test_a_cluster_finetune_without_its_data_gets_a_draft(tmp_path, capsys, monkeypatch):
    """As `foundry train`'s: given its checkpoint and its cluster only, a finetune writes a
    draft launch that says what it needs and exits 2 if started, and exits 2 itself."""
    monkeypatch.chdir(tmp_path)
    given = ["load_path=/cluster/mpt-7b", "hardware=512xh100"]
    assert main(["finetune", *given, "launch.submit=true"]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no config printed, and a finetune has no plan
    head = "foundry finetune: hardware is 64 node(s) x 8 H100-SXM (not this machine): nothing"
    needs = "data.sources.main.local=..., max_duration=..., global_train_batch_size=..."
    assert head in err and "a DRAFT of the launch is written" in err
    assert f"the run needs {needs}: rerun foundry finetune with them" in err
    assert "not submitted (a draft cannot train)" in err
    drafts = tmp_path / "foundry_launch"
    assert sorted(p.name for p in drafts.iterdir()) == [
        "launch_slurm.draft.sh",
        "launch_torchrun.draft.sh",
    ]
    for path in drafts.iterdir():  # each stops before it starts anything
        stopped = subprocess.run(["bash", str(path)], capture_output=True, text=True, env={})
        assert stopped.returncode == 2 and needs in stopped.stderr
        text = path.read_text()
        assert "-m foundry finetune" in text and "load_path=/cluster/mpt-7b" in text

    # given what it needs, the same command writes the real launch
    run = tmp_path / "run"
    rest = ["data.sources.main.local=/cluster/sft", "max_duration=100ba", f"save_folder={run}"]
    assert main(["finetune", *given, *rest, "global_train_batch_size=512"]) == 1
    assert sorted(p.name for p in run.iterdir()) == [SLURM_SCRIPT, TORCHRUN_SCRIPT]
    capsys.readouterr()

    # not a draft: no load_path either, or this machine's hardware (a local run needs its data)
    assert main(["finetune", "hardware=512xh100"]) == 2
    assert "load_path: required, but not set" in capsys.readouterr().err
    assert main(["finetune", "load_path=/cluster/mpt-7b"]) == 2
    assert "data.sources.main.local: required, but not set" in capsys.readouterr().err
