"""An `mpt` model evaluated through its own KV cache (mpt is imported by this test only: evalkit
never imports it). The cached path and generation must match plain batching."""

from __future__ import annotations

import pytest
import torch

from evalkit import EvalConfig, evaluate

mpt = pytest.importorskip("mpt")


def tiny_mpt():
    torch.manual_seed(0)
    config = mpt.MPTConfig(d_model=32, n_heads=2, n_layers=2, vocab_size=512, max_seq_len=256)
    return mpt.MPTForCausalLM(config).eval()


def test_mpt_scores_the_same_through_its_cache(tasks_yaml, tokenizer):
    cached = evaluate(
        tiny_mpt(), tokenizer, tasks=tasks_yaml, config=EvalConfig(sharing="kv_cache")
    )
    plain = evaluate(tiny_mpt(), tokenizer, tasks=tasks_yaml, config=EvalConfig(sharing="none"))
    assert cached.tasks.keys() == plain.tasks.keys()
    for name, task in cached.tasks.items():
        for a, b in zip(task.examples, plain.tasks[name].examples, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
            assert a.text == b.text  # generation: the cache against recomputing every step
