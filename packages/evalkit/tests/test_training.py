"""ICL evaluation inside a composer-lite training run, through the Trainer's evaluation hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from composer_lite import Trainer
from composer_lite.protocols import check_evaluator
from evalkit import EvalConfig, Evaluator
from evalkit.testing import tiny_lm
from evalkit.training import InTrainingEvaluator


class Trainable(nn.Module):
    """composer-lite's trainable-model contract around an evalkit test LM."""

    def __init__(self) -> None:
        super().__init__()
        self.lm = tiny_lm("masked")

    def forward(self, batch):
        return self.lm(batch["input_ids"])

    def loss(self, logits, batch):
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())


class Memory:
    def __init__(self) -> None:
        self.metrics: list[tuple[dict, int]] = []

    def log_hyperparameters(self, config) -> None:
        pass

    def log_metrics(self, metrics, step) -> None:
        self.metrics.append((dict(metrics), step))

    def close(self) -> None:
        pass


def test_icl_metrics_are_logged_at_the_trainers_evaluation_points(tasks_yaml, tokenizer):
    evaluator = Evaluator(tokenizer, tasks_yaml, config=EvalConfig(limit=4, progress=False))
    icl = InTrainingEvaluator(evaluator, causal_lm=lambda trained: trained.lm)
    check_evaluator(icl)
    torch.manual_seed(0)
    model, memory = Trainable(), Memory()
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(1, 512, (4, 16), generator=g) for _ in range(5)]
    batches = [{"input_ids": x, "labels": x.clone()} for x in ids]
    trainer = Trainer(
        model,
        batches,
        torch.optim.SGD(model.parameters(), lr=0.5),
        max_duration="5ba",
        eval_interval="2ba",
        evaluators=[icl],
        loggers=[memory],
        default_callbacks=False,
    )
    trainer.fit()
    logged = [(step, m) for m, step in memory.metrics if any(k.startswith("icl/") for k in m)]
    assert [step for step, _ in logged] == [2, 4, 5]  # every eval_interval, and the end
    names = set(logged[-1][1])
    assert any(n.startswith("icl/") and "-shot/" in n for n in names)
    # the numbers are the evaluator's own on the model as it was then (here: the final one)
    expected = {f"icl/{k}": v for k, v in evaluator.metrics(model.lm).items()}
    assert {k: v for k, v in logged[-1][1].items() if k.startswith("icl/")} == pytest.approx(
        expected
    )
    assert logged[0][1] != logged[-1][1]  # the model changed between evaluations


def test_only_a_prepared_evaluator_is_taken(tasks_yaml):
    with pytest.raises(TypeError, match="takes an evalkit.Evaluator"):
        InTrainingEvaluator(tasks_yaml)
