"""From a pretrained checkpoint to an evaluated, chatting model, as a user runs it on a CPU:

tokenizer and pretraining (`foundry tokenizer train`, `data prep`, `train`) → an instruction
finetune on the dolly file with the prompts masked (`foundry data finetune`, `finetune`) → a chat
finetune on the ShareGPT conversations → `foundry eval` on two seed-table tasks → `foundry convert`
to a Hugging Face directory → transformers' `MptForCausalLM` loads it offline → the same greedy
tokens from `foundry generate` (and `foundry.generate.generate_ids`) as from transformers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from foundry.cli import main as foundry

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DOLLY = SHARED / "sft" / "dolly_hhrlhf_train_small.jsonl"
CHAT = SHARED / "chat" / "dummy_conversation.json"
EVAL_ROOT = SHARED / "eval"
MODEL = [
    "model=mpt_tiny",
    "model.d_model=64",
    "model.n_heads=4",
    "model.n_layers=2",
    "model.vocab_size=1024",
    "model.max_seq_len=128",
]
COMMON = [
    "hardware=cpu",
    "global_train_batch_size=8",
    "log.console_every=5",
    "save_interval=1000ba",
]
PROMPT = "Instruction: What is the capital of France? Response:"

pytestmark = pytest.mark.skipif(
    not (DOLLY.is_file() and CHAT.is_file() and EVAL_ROOT.is_dir()),
    reason=f"needs ../shared/data (the dolly file, the conversations, the eval tasks) at {SHARED}",
)


def run(*argv: str) -> None:
    assert foundry(list(argv)) == 0, f"foundry {' '.join(argv[:2])} failed"


def losses(save_folder: Path) -> list[float]:
    rows = [json.loads(line) for line in (save_folder / "metrics.jsonl").read_text().splitlines()]
    return [r["metrics"]["loss/train/total"] for r in rows if r["kind"] == "metrics"]


def learned(curve: list[float]) -> bool:
    """The mean of the last three steps' losses below that of the first three."""
    return sum(curve[-3:]) < sum(curve[:3])


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_pretrain_finetune_chat_eval_convert_generate(tmp_path: Path, capsys) -> None:
    # pretraining text: the dolly rows as plain documents
    rows = [json.loads(line) for line in DOLLY.read_text().splitlines()]
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": r["prompt"] + r["response"]}) + "\n" for r in rows))
    tok = tmp_path / "tokenizer"
    run("tokenizer", "train", f"inputs=[{text}]", f"out={tok}", "vocab_size=1000")
    run(
        "data",
        "prep",
        f"inputs=[{text}]",
        f"out={tmp_path / 'mds'}",
        f"tokenizer={tok}",
        "max_seq_len=128",
        "dedup.near=false",
        "num_proc=1",
    )
    run(
        "train",
        *MODEL,
        *COMMON,
        f"data.sources.main.local={tmp_path / 'mds'}",
        "max_duration=30ba",
        "scheduler.warmup=5ba",
        f"save_folder={tmp_path / 'base'}",
        f"tokenizer={tok}",
    )

    # instruction finetune: loss on the responses only
    run(
        "data",
        "finetune",
        f"inputs=[{DOLLY}]",
        f"tokenizer={tok}",
        f"out={tmp_path / 'sft'}",
        "max_seq_len=128",
        "progress=false",
    )
    run(
        "finetune",
        f"load_path={tmp_path / 'base'}",
        *COMMON,
        "max_duration=12ba",
        f"data.sources.main.local={tmp_path / 'sft'}",
        f"save_folder={tmp_path / 'instruct'}",
    )
    instruct = losses(tmp_path / "instruct")
    assert len(instruct) == 12 and learned(instruct), instruct

    # chat finetune on the conversations (every assistant turn learned, none of the user's)
    run(
        "data",
        "finetune",
        f"inputs=[{CHAT}]",
        f"tokenizer={tok}",
        f"out={tmp_path / 'chat'}",
        "max_seq_len=128",
        "progress=false",
    )
    run(
        "finetune",
        f"load_path={tmp_path / 'instruct'}",
        *COMMON,
        "max_duration=8ba",
        f"data.sources.main.local={tmp_path / 'chat'}",
        f"save_folder={tmp_path / 'chatrun'}",
    )
    chat = losses(tmp_path / "chatrun")
    assert len(chat) == 8 and learned(chat), chat

    # two seed-table tasks
    run(
        "eval",
        f"models=[{tmp_path / 'chatrun'}]",
        "names=[chat]",
        "tasks=seed_table",
        f"eval_root={EVAL_ROOT}",
        "only=[piqa,lambada_openai]",
        "limit=20",
        "progress=false",
        f"out={tmp_path / 'eval'}",
    )
    results = json.loads((tmp_path / "eval" / "results_chat.json").read_text())
    assert {t.split("/")[0] for t in results["tasks"]} == {"piqa", "lambada_openai"}
    assert all(t["n_examples"] == 20 for t in results["tasks"].values())

    # to Hugging Face, then the same greedy tokens three ways
    hf = tmp_path / "hf"
    run("convert", f"load_path={tmp_path / 'chatrun'}", "to=hf", f"out={hf}")
    from transformers import AutoTokenizer, MptForCausalLM

    from foundry.checkpoints import load_model
    from foundry.generate import Sampling, generate_ids

    hf_tok = AutoTokenizer.from_pretrained(hf, local_files_only=True)
    ids = hf_tok(PROMPT)["input_ids"]
    model = MptForCausalLM.from_pretrained(hf, local_files_only=True).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=hf_tok.eos_token_id,
            pad_token_id=hf_tok.pad_token_id,
        )
    theirs = out[0, len(ids) :].tolist()

    ours = generate_ids(
        load_model(str(tmp_path / "chatrun")).model,
        [ids],
        Sampling(max_new_tokens=16),
        eos_token_ids=[hf_tok.eos_token_id],
    )
    assert ours == [theirs]
    capsys.readouterr()
    run("generate", f"load_path={hf}", f"prompt='{PROMPT}'", "max_new_tokens=16")
    printed = capsys.readouterr().out.rstrip("\n")
    expected = hf_tok.decode([t for t in theirs if t != hf_tok.eos_token_id])
    assert printed.endswith("\n" + expected), (printed[-200:], expected)  # after the config
    assert os.path.isfile(hf / "tokenizer.json")
