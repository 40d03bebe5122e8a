"""Evaluation over 2 gloo ranks gives what one process gives, also with FSDP2 and uneven shares.

Each rank scores a share of every task and the per-example results are gathered; with a model
sharded by FSDP2 every forward is a collective, so ranks with fewer batches run dummy ones (a
missing one would hang until the helper's timeout). Tolerance 1e-5 as in test_scoring: another
batch composition moves fp32 sums by a few ulps.
"""

from __future__ import annotations

import pytest
import torch

from evalkit import EvalConfig, EvalResults, evaluate
from evalkit.testing import WordTokenizer, tiny_lm, write_tasks
from streaming.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed

CONFIG = EvalConfig(batch_size=2, max_batch_tokens=96, pack_len=48)


def _rank(rank, world, tasks, kind, shard):
    from composer_lite.parallel import ParallelConfig, apply_parallelism, is_sharded

    model = tiny_lm(kind)
    if shard:
        model = apply_parallelism(model, ParallelConfig(), device=torch.device("cpu"))
        assert is_sharded(model)
    return evaluate(model, WordTokenizer(), tasks=tasks, config=CONFIG).to_dict()


def assert_same(got: EvalResults, want: EvalResults) -> None:
    assert got.tasks.keys() == want.tasks.keys()
    for name, task in got.tasks.items():
        other = want.tasks[name]
        assert [e.line for e in task.examples] == [e.line for e in other.examples]
        for a, b in zip(task.examples, other.examples, strict=True):
            assert all(abs(x - y) < 1e-5 for x, y in zip(a.logprobs, b.logprobs, strict=True))
            assert a.correct == b.correct and a.text == b.text
        assert task.metrics == other.metrics


@pytest.mark.parametrize(("kind", "shard"), [("packed", False), ("cache", True), ("plain", True)])
def test_two_ranks_give_the_results_of_one(tmp_path, kind, shard):
    tasks = write_tasks(tmp_path, n=11)  # 11 examples: the ranks' shares are uneven
    alone = evaluate(tiny_lm(kind), WordTokenizer(), tasks=tasks, config=CONFIG)
    ranks = run_distributed(_rank, world_size=2, args=(tasks, kind, shard), timeout=240)
    for result in ranks:
        assert_same(EvalResults.from_dict(result), alone)
