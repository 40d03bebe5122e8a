"""`MLFlowLogger` against a real local MLflow tracking store (a `file:` URI in tmp_path), read
back through MLflow's own client: parameters, metrics by step, tags, artifacts, the end status
(FINISHED, FAILED), rank 0 only, and the extra to install when MLflow is missing."""

from __future__ import annotations

import os
import signal
import sys

import pytest
import torch

from composer_lite import Callback, Trainer
from composer_lite.loggers import JSONLLogger, MLFlowLogger, read_jsonl
from composer_lite.mlflow_logger import flatten_params
from composer_lite.testing import TinyLM, random_lm_batch

pytest.importorskip("mlflow", reason="the optional [mlflow] extra (mlflow-skinny) is not installed")


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it for file stores
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # no test touches the network
    return (tmp_path / "mlruns").as_uri()


class _Loader(list):
    batch_size = 4


def _fit(loggers, *, callbacks=(), batches=3):
    torch.manual_seed(0)
    model = TinyLM()
    data = _Loader(random_lm_batch(4, 8, seed=i) for i in range(batches))
    trainer = Trainer(
        model,
        data,
        torch.optim.SGD(model.parameters(), lr=0.1),
        max_duration=f"{batches}ba",
        loggers=loggers,
        callbacks=list(callbacks),
        default_callbacks=False,
    )
    trainer.fit()


def _runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return client, runs


def test_a_trainer_run_is_recorded_with_params_metrics_tags_and_artifacts(store, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("resolved config")
    logger = MLFlowLogger(
        tracking_uri=store,
        experiment_name="tiny",
        run_name="tiny-run",
        tags={"team": "pretrain"},
        artifacts=[notes, tmp_path / "absent.txt"],
        flush_interval_s=3600,  # everything goes at close(): the buffer must be sent then
    )
    _fit([logger, JSONLLogger(tmp_path / "m.jsonl")])
    client, runs = _runs(store, "tiny")
    assert len(runs) == 1 and runs[0].info.run_id == logger.run_id
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.runName"] == "tiny-run" and run.data.tags["team"] == "pretrain"
    assert run.data.params["max_duration"] == "3ba"
    assert run.data.params["guard.on_nonfinite"] == "stop"  # nested keys flattened with dots
    expected = {
        r["step"]: r["metrics"]["loss/train/total"]
        for r in read_jsonl(tmp_path / "m.jsonl")
        if r["kind"] == "metrics"
    }
    history = client.get_metric_history(logger.run_id, "loss/train/total")
    assert {m.step: m.value for m in history} == pytest.approx(expected)
    assert sorted(expected) == [1, 2, 3]
    assert [a.path for a in client.list_artifacts(logger.run_id)] == ["notes.txt"]

    logger.log_metrics({"late/metric": 1.5, "flag": True, "text": "x"}, step=9)  # reopens the run
    assert client.get_run(logger.run_id).info.status == "RUNNING"
    logger.close()
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["late/metric"] == 1.5
    assert "flag" not in run.data.metrics and "text" not in run.data.metrics


class _Explode(Callback):
    def batch_end(self, state, logger):
        if state.timestamp.batch == 2:
            raise RuntimeError("boom at batch 2")


def test_a_failed_fit_ends_the_run_failed_with_its_metrics_sent(store):
    logger = MLFlowLogger(tracking_uri=store, experiment_name="fails", flush_interval_s=3600)
    with pytest.raises(RuntimeError, match="boom at batch 2"):
        _fit([logger], callbacks=[_Explode()])
    client, runs = _runs(store, "fails")
    assert [r.info.status for r in runs] == ["FAILED"]
    steps = [m.step for m in client.get_metric_history(logger.run_id, "loss/train/total")]
    assert steps == [1]


class _Interrupt(Callback):
    def batch_end(self, state, logger):
        if state.timestamp.batch == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the Trainer stops gracefully


def test_a_fit_stopped_by_a_signal_ends_the_run_killed(store):
    logger = MLFlowLogger(tracking_uri=store, experiment_name="killed")
    _fit([logger], callbacks=[_Interrupt()], batches=10)  # returns normally
    client, runs = _runs(store, "killed")
    assert [r.info.status for r in runs] == ["KILLED"]
    steps = [m.step for m in client.get_metric_history(logger.run_id, "loss/train/total")]
    assert steps[-1] < 10  # it did stop early


def test_a_trainer_that_never_fits_leaves_no_run(store):
    logger = MLFlowLogger(tracking_uri=store, experiment_name="unfit")
    model = TinyLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    Trainer(
        model, _Loader([random_lm_batch(4, 8)]), optimizer, max_duration="1ba", loggers=[logger]
    )
    assert logger.run_id is None and _runs(store, "unfit")[1] == []
    logger.log_metrics({"loss": 1.0}, step=1)  # the first metric starts it, with the params
    run = _runs(store, "unfit")[1][0]
    assert run.info.status == "RUNNING" and run.data.params["max_duration"] == "1ba"
    logger.close()


def test_a_failed_flush_at_close_ends_the_run_failed_and_raises(store, monkeypatch):
    logger = MLFlowLogger(tracking_uri=store, experiment_name="flush", flush_interval_s=3600)
    logger.log_metrics({"loss": 1.0}, step=1)

    def down(*args, **kwargs):
        raise ConnectionError("tracking server down")

    monkeypatch.setattr(logger._client, "log_batch", down)
    with pytest.raises(ConnectionError, match="server down"):
        logger.close()
    assert [r.info.status for r in _runs(store, "flush")[1]] == ["FAILED"]


def test_only_rank_zero_writes(store):
    quiet = MLFlowLogger(tracking_uri=store, experiment_name="ranks", rank=1)
    quiet.log_hyperparameters({"lr": 0.1})
    quiet.log_metrics({"loss": 1.0}, step=1)
    quiet.close()
    assert not quiet.active and quiet.run_id is None
    assert _runs(store, "ranks")[1] == []  # no experiment, no run: the store was not touched


def test_missing_mlflow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ImportError, match=r"pip install 'composer-lite\[mlflow\]'"):
        MLFlowLogger(rank=0)


def test_flatten_params():
    flat = flatten_params(
        {"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": True, "g h+i": "x" * 7000, "j": {}}
    )
    assert flat["a.b"] == "1" and flat["a.c.d"] == "null" and flat["e"] == "[1, 2]"
    assert flat["f"] == "true" and flat["j"] == "{}"
    assert len(flat["g h_i"]) == 6000 and flat["g h_i"].endswith("(7000 characters)")
