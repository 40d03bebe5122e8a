"""`foundry convert`: a Hugging Face MPT directory to a save folder of ours and back (transformers
loads the result offline and generates what we generate), a 2-rank FSDP2 checkpoint to one
safetensors file, and conversions that cannot work refused by name before any weight is read."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from composer_lite.checkpoint import CorruptCheckpointError
from foundry.checkpoints import load_trained
from foundry.cli import main
from foundry.compose import compose_config
from foundry.convert import convert
from foundry.finetune_model import load_pretrained
from foundry.generate import Sampling, generate_ids
from foundry.schema import TrainCommand
from foundry.sources import inspect_source, load_source
from foundry.tokenizer import load_tokenizer
from mpt import MPTConfig, MPTForCausalLM
from mpt.hf import export_hf
from streaming.testing.distributed import run_distributed

VOCAB = 600  # the tiny tokenizer's
TINY = ["model.d_model=32", "model.n_heads=2", "model.n_layers=2", "model.max_seq_len=64"]
TINY += [f"model.vocab_size={VOCAB}", "model.tie_word_embeddings=false", "model.init_std=0.3"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread (no OpenMP hand-off per small op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_config(*overrides: str) -> str:
    """foundry_config.yaml of a tiny run, as `foundry train` writes it."""
    return compose_config(
        "train", [*TINY, "data.sources.main.local=mds", "max_duration=1ba", *overrides]
    ).to_yaml()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="session")
def hf_dir(tiny_tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    config = MPTConfig(
        d_model=32, n_heads=2, n_layers=2, max_seq_len=64, vocab_size=VOCAB, init_std=0.3
    )
    out = export_hf(MPTForCausalLM(config), None, tmp_path_factory.mktemp("conv") / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_tokenizer / name, out / name)
    return out


def test_hf_to_ours_and_back_to_what_transformers_loads(hf_dir, tmp_path):
    import transformers

    run = convert(str(hf_dir), str(tmp_path / "run"), to="foundry")
    assert (run / "tokenizer.json").is_file()
    model, cfg = load_trained(str(run))
    assert isinstance(cfg, TrainCommand) and cfg.tokenizer == str(run.resolve())
    from_hf = load_source(inspect_source(str(hf_dir)))
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(model, ids), logits(from_hf, ids), rtol=0, atol=0)
    finetuned_from = load_pretrained(str(run))  # what `foundry finetune load_path=` starts from
    torch.testing.assert_close(logits(finetuned_from, ids), logits(model, ids), rtol=0, atol=0)
    with pytest.raises(FileExistsError, match=f"out={tmp_path / 'run'} exists"):
        convert(str(hf_dir), str(run), to="foundry")

    out = convert(str(run), str(tmp_path / "hf"), to="hf", max_shard_size="20KB")
    assert len(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]) > 2
    hf = transformers.MptForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(hf, ids), logits(model, ids), rtol=1e-5, atol=1e-5)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)  # the run's tokenizer, copied
    text = "w5 w6 w7 w8"
    assert hf_tok.encode(text, add_special_tokens=False) == load_tokenizer(run).encode(text)
    eos = hf.generation_config.eos_token_id
    assert eos == 0 and hf.generation_config.pad_token_id == 1
    prompt = hf_tok.encode(text, add_special_tokens=False)
    ours = generate_ids(model, [prompt], Sampling(max_new_tokens=16), eos_token_ids=[eos])
    theirs = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=16)
    assert ours[0] == theirs[0, len(prompt) :].tolist()  # greedy, token for token


def _train_one_step_and_save(rank: int, world: int, folder: str, config: MPTConfig):
    """On each of 2 gloo ranks: FSDP2 over the blocks, one AdamW step, a checkpoint with the
    optimizer state; returns the full weights (every rank gathers, as FSDP2 needs)."""
    from composer_lite import ParallelConfig
    from composer_lite.checkpoint import CheckpointManager
    from composer_lite.parallel import apply_parallelism
    from foundry.model import MPTTrainable

    torch.manual_seed(0)
    model = MPTTrainable(MPTForCausalLM(config))
    apply_parallelism(model, ParallelConfig(), device=torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(rank))
    model.train()
    model({"input_ids": ids, "labels": ids}).loss.backward()
    optimizer.step()
    CheckpointManager(folder).save("ep0-ba1", model=model, optimizer=optimizer, objects={})
    return {k: v.full_tensor() for k, v in model.model.state_dict().items()}


@pytest.fixture(scope="session")
def fsdp_run(tmp_path_factory):
    """(save folder of a 2-rank FSDP2 run, its full weights)."""
    folder = tmp_path_factory.mktemp("fsdp") / "run"
    text = run_config(f"save_folder={folder}")
    config = compose_config("train", [*TINY, "data.sources.main.local=x", "max_duration=1ba"])
    model_config = config.build(TrainCommand).model
    weights = run_distributed(
        _train_one_step_and_save, world_size=2, args=(str(folder), model_config)
    )[0]
    (folder / "foundry_config.yaml").write_text(text)
    return folder, weights


def test_a_sharded_checkpoint_becomes_one_file(fsdp_run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder, weights = fsdp_run
    assert len(list((folder / "ep0-ba1" / "state").glob("*.distcp"))) == 2
    out = convert(str(folder), str(tmp_path / "m.safetensors"), to="file")
    saved = load_file(out)  # safetensors' own reader; only the model, no optimizer state
    assert saved.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(saved[name], tensor), name
    with safe_open(out, framework="pt") as f:
        assert json.loads(f.metadata()["mpt_config"])["d_model"] == 32
    model, _ = load_trained(str(folder))  # DCP resharding to one process: the same function
    from_file = load_source(inspect_source(str(out)))
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(logits(from_file, ids), logits(model, ids), rtol=0, atol=0)

    half = convert(
        str(folder / "ep0-ba1"), str(tmp_path / "h.safetensors"), to="file", dtype=torch.bfloat16
    )
    assert {t.dtype for t in load_file(half).values()} == {torch.bfloat16}
    with pytest.raises(FileExistsError, match="overwrite=true"):
        convert(str(folder), str(out), to="file")
    hf = convert(str(out), str(tmp_path / "hf"), to="hf")  # the file converts on
    assert inspect_source(str(hf)).kind == "hf"


def test_a_corrupt_shard_is_named_and_nothing_is_written(fsdp_run, tmp_path):
    folder, _ = fsdp_run
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    shard = sorted((copy / "ep0-ba1" / "state").glob("*.distcp"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=f"state/{shard.name}: recorded"):
        convert(str(copy), str(tmp_path / "m.safetensors"), to="file")
    assert not list(tmp_path.glob("*m.safetensors*"))


def test_conversions_that_cannot_work_are_refused_before_any_weight_is_read(
    hf_dir, tmp_path, capsys
):
    run = tmp_path / "run"  # a config whose model transformers cannot compute, and no checkpoint
    run.mkdir()
    (run / "foundry_config.yaml").write_text(run_config("model.qk_ln=true"))
    base = ["convert", f"load_path={run}", f"out={tmp_path / 'hf'}"]
    assert main([*base, "to=hf"]) == 1
    err = capsys.readouterr().err
    assert "cannot be converted to=hf" in err and "qk_ln=True (it has no q/k LayerNorm)" in err
    assert not (tmp_path / "hf").exists()
    assert main([*base, "to=foundry"]) == 1
    assert "it converts to=file or to=hf, not to=foundry" in capsys.readouterr().err
    assert main(["convert", f"load_path={hf_dir}", "to=file", "out=x"]) == 1
    assert "it converts to=foundry, not to=file" in capsys.readouterr().err
    assert main([*base, "to=hf5"]) == 2
    assert "to: expected one of 'hf', 'foundry', 'file'" in capsys.readouterr().err
    assert main([*base, "to=hf", "max_shard_size=big"]) == 2
    assert "max_shard_size must be like '5GB'" in capsys.readouterr().err
    assert main(["convert", f"load_path={tmp_path}", "to=hf", "out=y"]) == 1
    assert f"load_path={tmp_path}: not a foundry save folder" in capsys.readouterr().err


def test_an_out_written_while_converting_is_kept_without_overwrite(tmp_path):
    from foundry.convert import _move_into_place, _staging

    out = tmp_path / "out"
    tmp = _staging(out)
    (tmp / "new.txt").write_text("new")
    out.mkdir()  # another writer finished first, after `_check_out` let this one start
    (out / "theirs.txt").write_text("theirs")
    with pytest.raises(FileExistsError, match=f"out={out} exists"):
        _move_into_place(tmp, out, overwrite=False)
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert not tmp.exists()
    tmp = _staging(out)
    (tmp / "new.txt").write_text("new")
    _move_into_place(tmp, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_convert_under_torchrun_is_refused(hf_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "ours"
    assert main(["convert", f"load_path={hf_dir}", "to=foundry", f"out={out}"]) == 1
    assert "foundry convert runs in one process" in capsys.readouterr().err
    assert not out.exists()
