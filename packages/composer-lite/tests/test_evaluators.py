"""Evaluators (`composer_lite.protocols.Evaluator`) on the Trainer's schedule: when they run, on
which model, on which ranks, where their metrics go, and the errors for bad ones."""

from __future__ import annotations

import pytest
import torch

from composer_lite import Callback, Evaluator, Trainer
from composer_lite.callbacks import EMA
from composer_lite.testing import TinyLM, random_lm_batch
from streaming.testing.distributed import run_distributed

PROBE = random_lm_batch(4, 8, seed=99)


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


class Probe:
    """Records what it was called on; returns the model's loss on a fixed batch."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, bool]] = []  # (batch, rank, the model is state.model)
        self.weights: list[torch.Tensor] = []

    def evaluate(self, model, state):
        self.calls.append((state.timestamp.batch, state.rank, model is state.model))
        self.weights.append(flat(model))
        assert not model.training and not torch.is_grad_enabled()
        loss = model.loss(model(PROBE), PROBE)
        return {"probe/loss": loss, "probe/calls": len(self.calls)}


class Memory:
    """A logger that keeps what it is given."""

    def __init__(self) -> None:
        self.metrics: list[tuple[dict, int]] = []

    def log_hyperparameters(self, config) -> None:
        pass

    def log_metrics(self, metrics, step) -> None:
        self.metrics.append((dict(metrics), step))

    def close(self) -> None:
        pass


class Weights(Callback):
    """The live weights and, with an EMA, its average, at the end of each batch."""

    def __init__(self, ema: EMA | None = None) -> None:
        self.ema, self.live, self.average = ema, {}, {}

    def batch_end(self, state, logger) -> None:
        self.live[state.timestamp.batch] = flat(state.model)
        if self.ema is not None:
            weights = self.ema.state_dict()["weights"].values()
            self.average[state.timestamp.batch] = torch.cat([w.flatten() for w in weights])


def train(*, evaluators, callbacks=(), loggers=(), rank_data=0, **options):
    torch.manual_seed(0)
    model = TinyLM()
    data = [random_lm_batch(4, 8, seed=rank_data * 100 + i) for i in range(5)]
    trainer = Trainer(
        model,
        data,
        torch.optim.SGD(model.parameters(), lr=0.1),
        max_duration="5ba",
        eval_interval="2ba",
        evaluators=evaluators,
        callbacks=list(callbacks),
        loggers=list(loggers),
        default_callbacks=False,
        **options,
    )
    trainer.fit()
    return trainer


def _on_two_ranks(rank, world):
    probe, weights, memory = Probe(), Weights(), Memory()
    trainer = train(evaluators=[probe], callbacks=[weights], loggers=[memory], rank_data=rank)
    seen_current = [
        torch.equal(w, weights.live[b])
        for (b, _, _), w in zip(probe.calls, probe.weights, strict=True)
    ]
    return probe.calls, seen_current, memory.metrics, trainer.state.eval_metrics


@pytest.mark.distributed
def test_an_evaluator_runs_on_every_rank_at_the_eval_points_and_its_metrics_are_logged():
    results = run_distributed(_on_two_ranks, world_size=2, timeout=120)
    for rank, (calls, seen_current, _, eval_metrics) in enumerate(results):
        # every 2 batches, and the final model at max_duration; no eval dataloader needed
        assert calls == [(2, rank, True), (4, rank, True), (5, rank, True)]
        assert seen_current == [True, True, True]  # the weights of that batch, on every rank
        assert set(eval_metrics) == {"probe/loss", "probe/calls"}
    # data parallel: both ranks hold the same model, so the same metrics
    assert results[0][3] == pytest.approx(results[1][3])
    logged = [(step, m["probe/loss"]) for m, step in results[0][2] if "probe/loss" in m]
    assert [step for step, _ in logged] == [2, 4, 5]
    assert logged[-1][1] == pytest.approx(results[0][3]["probe/loss"])
    assert results[1][2] == []  # loggers write on rank 0 only


def test_an_evaluator_sees_the_ema_weights_and_training_goes_on_with_the_live_ones():
    ema = EMA(decay=0.5)
    probe, weights = Probe(), Weights(ema)
    trainer = train(evaluators=[probe], callbacks=[ema, weights])
    assert [batch for batch, _, _ in probe.calls] == [2, 4, 5]
    for (batch, _, _), seen in zip(probe.calls, probe.weights, strict=True):
        assert torch.equal(seen, weights.average[batch])
        assert not torch.equal(seen, weights.live[batch])
    assert torch.equal(flat(trainer.state.model), weights.live[5])  # swapped back after eval


def test_evaluator_metrics_join_the_eval_loss_and_a_name_is_given_once():
    probe, memory = Probe(), Memory()
    trainer = train(evaluators=[probe], loggers=[memory], eval_dataloader=[PROBE])
    metrics = trainer.state.eval_metrics
    assert set(metrics) == {"eval/loss", "probe/loss", "probe/calls"}
    assert metrics["probe/loss"] == pytest.approx(metrics["eval/loss"], rel=1e-6)  # one model
    assert sum("eval/loss" in m and "probe/loss" in m for m, _ in memory.metrics) == 3
    with pytest.raises(ValueError, match="evaluator Probe returned 'probe/calls', 'probe/loss'"):
        train(evaluators=[Probe(), Probe()])


class Wordy:
    def evaluate(self, model, state):
        return {"accuracy": 0.5, "verdict": "good", "flags": torch.ones(3)}


class NotAMapping:
    def evaluate(self, model, state):
        return 0.5


def test_a_bad_evaluator_is_a_clear_error_naming_it():
    assert isinstance(Probe(), Evaluator) and not isinstance(object(), Evaluator)
    wordy = r"evaluator Wordy returned metrics that are not named numbers \('verdict': str 'good'"
    with pytest.raises(TypeError, match=wordy + "; 'flags': Tensor"):
        train(evaluators=[Wordy()])
    with pytest.raises(TypeError, match="evaluator NotAMapping returned a float; expected"):
        train(evaluators=[NotAMapping()])
    with pytest.raises(TypeError, match=r"Memory is not an evaluator: it lacks evaluate\(\)"):
        train(evaluators=[Memory()])


def test_evaluate_with_nothing_to_evaluate_says_so():
    torch.manual_seed(0)
    model = TinyLM()
    trainer = Trainer(
        model,
        [PROBE],
        torch.optim.SGD(model.parameters(), lr=0.1),
        max_duration="1ba",
        loggers=[],
        default_callbacks=False,
    )
    with pytest.raises(ValueError, match="nothing to evaluate"):
        trainer.evaluate()
