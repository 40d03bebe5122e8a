"""`foundry finetune`: a tiny MPT pretrained here at T finetunes on response tokens (chat data,
the embedding grown for the ChatML tokens), saves and resumes, runs at 4T, finetunes at 2T to a
lower loss there, starts from a Hugging Face directory, and on two gloo ranks with FSDP2; bad
finetunes are refused before any weights are read."""

from __future__ import annotations

import json
import random
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
from foundry.tokenizer import save_tokenizer, train_bpe
from mpt import MPTConfig
from streaming import MDSWriter
from streaming.testing.distributed import run_distributed

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
    with pytest.raises(ValueError, match="/absent holds no prepared dataset"):
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


def _finetune_rank(rank: int, world_size: int, cfg: FinetuneCommand) -> tuple:
    from torch.distributed.tensor import DTensor

    run = finetune(cfg)
    weight = run.trainer.state.model.model.transformer.wte.weight
    return (
        run.trainer.state.timestamp.batch,
        run.trainer.state.step.loss,
        isinstance(weight, DTensor),
    )


def test_two_gloo_ranks_finetune_with_fsdp2(pretrained, tmp_path):
    data = sft_rows(tmp_path / "sft", 16, 2 * T, seed=5)
    cfg = finetune_config(
        f"load_path={pretrained}",
        f"data.sources.main.local={data}",
        "max_seq_len=64",
        "hardware.gpus_per_node=2",
        "max_duration=2ba",
        f"save_folder={tmp_path / 'ft'}",
        "save_interval=2ba",
    )
    ranks = run_distributed(_finetune_rank, world_size=2, args=(cfg,), timeout=240)
    assert [(batch, sharded) for batch, _, sharded in ranks] == [(2, True), (2, True)]
    # from the pretrained weights: far below the loss of a uniform guess over the vocabulary
    assert all(loss < 0.6 * np.log(VOCAB) for _, loss, _ in ranks)
    assert [p.name for p in (tmp_path / "ft").glob("ep*")] == ["ep0-ba2"]
    assert load_model(str(tmp_path / "ft")).model.config.max_seq_len == 64
