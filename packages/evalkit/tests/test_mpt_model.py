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


@pytest.mark.parametrize(("window", "forwards"), [(None, 4), (24, 4), (64, 2)])
def test_a_cached_batch_never_outgrows_the_window(window, forwards):
    """A long trunk with short branches and a short trunk with long branches, each within a
    24-token window: batched together their padded cache (20 + 15 positions) would not fit (mpt
    refuses a sequence longer than max_seq_len), so they run in separate forwards (a trunk and
    a branch forward each), and score as without the cache. In a 64-token window they share one
    pair of forwards."""
    from evalkit.logprobs import Request
    from evalkit.scoring import ScoringOptions, score_requests

    torch.manual_seed(0)
    config = mpt.MPTConfig(
        d_model=32, n_heads=2, n_layers=2, vocab_size=64, max_seq_len=window or 24
    )
    model = mpt.MPTForCausalLM(config).eval()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape))
    long_trunk = [Request(tuple(range(1, 21)), (30 + c, 40)) for c in range(2)]
    long_branches = [Request((1, 2, 3, 4), tuple(range(30 + c, 44 + c))) for c in range(2)]
    groups = [long_trunk, long_branches]
    options = ScoringOptions(sharing="kv_cache", batch_size=8, max_seq_len=window)
    cached = score_requests(model, groups, options)
    assert len(calls) == forwards
    plain = score_requests(model, groups, ScoringOptions(sharing="none", batch_size=8))
    for a, b in zip(sum(cached, []), sum(plain, []), strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
