"""Parity with lm-eval, not circular: lm-eval's own `hf` model against evalkit on the same saved
transformers weights, 0-shot, per example.

What is compared, like with like:
- per-choice (multiple choice) and per-example (language modeling) log-likelihoods, within 1e-4;
- raw accuracy (`acc`: argmax of the summed log-likelihood; greedy match for LAMBADA): identical;
- lm-eval's `acc_norm` divides by the characters of each choice; evalkit reports that as
  `acc_norm_chars` (identical); evalkit's headline `acc_norm_tokens` (llm-foundry's: mean per
  token) has no lm-eval counterpart and is not compared.

lm-eval runs with `softmax_dtype=float64` (its own option): by default it sums per-token
log-probabilities in fp32, whose rounding on sums near -500 (random weights, ~8-11 nats per token,
long PIQA choices) is itself ~1e-4; in float64 lm-eval is the exact side and the
1e-4 bound measures evalkit's fp32 log-softmax with float64 sums (measured: ~1e-5).
With random weights no LAMBADA word is the greedy continuation (accuracy 0 on both sides); the
synthetic test's copy rows give greedy verdicts of both kinds, compared the same way.
The tasks reach lm-eval through `evalkit.lm_eval_tasks` (dataset_path: json, local data_files)
because our data is llm-foundry jsonl; the strings scored are checked to be evalkit's own.
"""

from __future__ import annotations

import json

import pytest
import torch

from evalkit import EvalConfig, TaskConfig, evaluate, load_hf
from evalkit.lm_eval_tasks import write_lm_eval_tasks
from evalkit.testing import write_tasks

transformers = pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")


def save_gpt2(folder, tokenizer, *, width: int, layers: int, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_embd=width,
        n_layer=layers,
        n_head=2,
        vocab_size=len(tokenizer),
        n_positions=2048,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def lm_eval_hf(folder, names, include, limit):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include), include_defaults=False)
    args = {
        "pretrained": str(folder),
        "dtype": "float32",
        "softmax_dtype": "float64",
        "device": "cpu",
    }
    return lm_eval.simple_evaluate(
        model="hf",
        model_args=args,
        tasks=list(names.values()),
        batch_size=64,
        task_manager=manager,
        log_samples=True,
        limit=limit,
        # No stderr is compared: skip lm-eval's bootstrap of perplexity's stderr (100,000
        # resamples in a process pool, most of this test's time otherwise).
        bootstrap_iters=0,
    )


def assert_parity(ours, theirs, names):
    worst = 0.0
    for name, lm_name in names.items():
        task, result = ours.tasks[name], theirs["results"][lm_name]
        samples = sorted(theirs["samples"][lm_name], key=lambda s: s["doc_id"])
        assert len(samples) == task.n_examples >= 1
        for sample, example in zip(samples, task.examples, strict=True):
            lls = [r[0] for r in sample["filtered_resps"]]
            worst = max(worst, *(abs(a - b) for a, b in zip(lls, example.logprobs, strict=True)))
            assert lls == pytest.approx(example.logprobs, abs=1e-4, rel=0), (name, example.line)
        assert result["acc,none"] == task.metrics["acc"], name  # raw accuracy: identical
        if task.task_type == "multiple_choice":
            assert result["acc_norm,none"] == task.metrics["acc_norm_chars"], name
    return worst


def trained_bpe(files, vocab_size: int):
    """A byte-level BPE tokenizer trained on `files` in the test (GPT-2's scheme, small vocab)."""
    tokenizers = pytest.importorskip("tokenizers")
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train([str(f) for f in files], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")


def copy_rows(n: int) -> str:
    """Language-modeling rows whose continuation repeats the context's last word half the time:
    a random GPT-2 with tied embeddings predicts the token it reads, so its greedy verdicts are
    a mix of right and wrong (on LAMBADA they are all wrong) and the comparison means something."""
    words = "red blue green cat dog bird river hill apple bread stone".split()
    rows = []
    for i in range(n):
        context = [words[(i * 7 + k * 3) % len(words)] for k in range(5)]
        continuation = context[-1] if i % 2 == 0 else words[(i + 1) % len(words)]
        rows.append(json.dumps({"context": " ".join(context), "continuation": continuation}))
    return "\n".join(rows) + "\n"


def test_parity_on_synthetic_tasks(tmp_path):
    write_tasks(tmp_path / "tasks", n=16)
    (tmp_path / "tasks" / "lm.jsonl").write_text(copy_rows(16))
    tok = trained_bpe((tmp_path / "tasks").glob("*.jsonl"), 400)
    folder = save_gpt2(tmp_path / "gpt2", tok, width=32, layers=2)
    model, tokenizer = load_hf(folder)
    data = tmp_path / "tasks"
    configs = [
        TaskConfig(
            label="lm", dataset_uri=str(data / "lm.jsonl"), icl_task_type="language_modeling"
        ),
        TaskConfig(
            label="mc",
            dataset_uri=str(data / "mc.jsonl"),
            icl_task_type="multiple_choice",
            continuation_delimiter="\nAnswer: ",
        ),
        TaskConfig(label="schema", dataset_uri=str(data / "schema.jsonl"), icl_task_type="schema"),
    ]
    ours = evaluate(model, tokenizer, tasks=configs)
    assert 0 < ours.tasks["lm/0-shot"].metrics["acc"] < 1  # greedy verdicts of both kinds
    names, _ = write_lm_eval_tasks(configs, tmp_path / "lm", tokenizer=tokenizer)
    assert_parity(ours, lm_eval_hf(folder, names, tmp_path / "lm", None), names)
    # the same weights through lm-eval's registry as "evalkit", from the folder's path
    from lm_eval.tasks import TaskManager

    import evalkit.lm_eval  # noqa: F401 (registers "evalkit")

    via = lm_eval.simple_evaluate(
        model="evalkit",
        model_args=f"pretrained={folder}",
        tasks=list(names.values()),
        task_manager=TaskManager(include_path=str(tmp_path / "lm"), include_defaults=False),
        bootstrap_iters=0,
    )
    for name, lm_name in names.items():
        assert via["results"][lm_name]["acc,none"] == ours.tasks[name].metrics["acc"]


@pytest.mark.shared_data
def test_parity_on_lambada_and_piqa(shared_data, tmp_path):
    """>= 500 examples each of LAMBADA and PIQA, 0-shot. The tokenizer is a 4,096-token byte-level
    BPE trained on the two files here (the NeoX tokenizer's 50k vocabulary makes lm-eval's full
    log-softmax over every position take minutes on this CPU; tools/bench/eval_bench.py runs
    both tools with the NeoX tokenizer and checks equal scores there)."""
    icl = shared_data / "eval" / "icl"
    files = [
        icl / "language_understanding/lambada_openai.jsonl",
        icl / "commonsense_reasoning/piqa.jsonl",
    ]
    tok = trained_bpe(files, 4096)
    folder = save_gpt2(tmp_path / "gpt2", tok, width=64, layers=2)
    configs = [
        TaskConfig(
            label="lambada_openai",
            dataset_uri=str(icl / "language_understanding/lambada_openai.jsonl"),
            icl_task_type="language_modeling",
        ),
        TaskConfig(
            label="piqa",
            dataset_uri=str(icl / "commonsense_reasoning/piqa.jsonl"),
            icl_task_type="multiple_choice",
            continuation_delimiter="\nAnswer: ",
        ),
    ]
    model, tokenizer = load_hf(folder)
    ours = evaluate(model, tokenizer, tasks=configs, config=EvalConfig(limit=500))
    assert [t.n_examples for t in ours.tasks.values()] == [500, 500]
    names, problems = write_lm_eval_tasks(configs, tmp_path / "lm", tokenizer=tokenizer, limit=500)
    assert problems == []
    theirs = lm_eval_hf(folder, names, tmp_path / "lm", 500)
    worst = assert_parity(ours, theirs, names)
    assert worst < 1e-4
    # lm-eval scored exactly the strings evalkit scored
    piqa = sorted(theirs["samples"][names["piqa/0-shot"]], key=lambda s: s["doc_id"])[0]
    assert (
        piqa["arguments"][0][0]
        == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    )
