"""Loggers: the hub (rank 0 only, tensors to numbers), the console, the versioned JSONL file,
TensorBoard (optional), and the configuration logged once at the start of a run."""

from __future__ import annotations

import io
import json
import math
import re
import sys

import pytest
import torch

from composer_lite import Trainer
from composer_lite.loggers import (
    JSONL_VERSION,
    ConsoleLogger,
    JSONLLogger,
    LoggerHub,
    TensorBoardLogger,
    read_jsonl,
)
from composer_lite.testing import TinyLM, random_lm_batch


class Memory:
    def __init__(self):
        self.calls = []

    def log_hyperparameters(self, config):
        self.calls.append(("config", config))

    def log_metrics(self, metrics, step):
        self.calls.append(("metrics", metrics, step))

    def close(self):
        self.calls.append(("close",))


def test_hub_fans_out_on_rank_zero_only_with_plain_numbers():
    a, b = Memory(), Memory()
    hub = LoggerHub([a, b])
    hub.log_hyperparameters({"lr": 0.1})
    hub.log_metrics({"loss": torch.tensor(2.5), "n": 3}, step=7)
    hub.log_metrics({}, step=8)  # nothing to log: no call
    hub.close()
    assert (
        a.calls
        == b.calls
        == [("config", {"lr": 0.1}), ("metrics", {"loss": 2.5, "n": 3}, 7), ("close",)]
    )
    assert type(a.calls[1][1]["loss"]) is float
    quiet = Memory()
    other = LoggerHub([quiet], rank=1)
    other.log_hyperparameters({"lr": 0.1})
    other.log_metrics({"loss": 1.0}, step=1)
    other.close()
    assert quiet.calls == []
    LoggerHub([quiet], rank=1, all_ranks=True).log_metrics({"loss": 1.0}, step=1)
    assert quiet.calls == [("metrics", {"loss": 1.0}, 1)]
    with pytest.raises(TypeError, match="log_hyperparameters, close"):
        LoggerHub([type("Half", (), {"log_metrics": lambda self, m, s: None})()])


class _Broken(Memory):
    def __init__(self, error):
        super().__init__()
        self.error = error

    def close(self):
        super().close()
        raise self.error


def test_hub_close_closes_every_logger_and_raises_the_first_error():
    first, second = OSError("disk full"), RuntimeError("server down")
    a, b, c = _Broken(first), Memory(), _Broken(second)
    with pytest.raises(OSError, match="disk full") as raised:
        LoggerHub([a, b, c]).close()
    assert raised.value is first
    assert a.calls == b.calls == c.calls == [("close",)]


def test_console_logger_lines():
    out = io.StringIO()
    logger = ConsoleLogger(stream=out)
    logger.log_hyperparameters({"max_duration": "1ep", "seed": 17})
    logger.log_metrics({"loss/train/total": 3.14159265, "time/batch": 4}, step=4)
    text = out.getvalue()
    assert '"max_duration": "1ep"' in text
    assert text.splitlines()[-1] == "[step 4] loss/train/total: 3.142, time/batch: 4"
    quiet = io.StringIO()
    ConsoleLogger(stream=quiet, show_config=False).log_hyperparameters({"seed": 17})
    assert quiet.getvalue() == ""  # a caller that prints its own config


def test_jsonl_round_trip_nonfinite_append_and_version(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    logger = JSONLLogger(path)
    logger.log_hyperparameters({"seed": 17, "device": torch.device("cpu")})
    logger.log_metrics({"loss": math.nan, "grad": math.inf, "lr": 0.1}, step=1)
    logger.close()
    again = JSONLLogger(path)  # a resumed run appends
    again.log_metrics({"loss": 1.5}, step=2)
    again.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {
        "kind": "header",
        "format": "composer_lite.metrics",
        "version": JSONL_VERSION,
    }
    assert len(lines) == 4 and "NaN" not in path.read_text()  # strict JSON
    records = read_jsonl(path)
    assert records[0]["config"] == {"seed": 17, "device": "device(type='cpu')"}
    assert math.isnan(records[1]["metrics"]["loss"]) and records[1]["metrics"]["grad"] == math.inf
    assert [r.get("step") for r in records] == [None, 1, 2]
    newer = tmp_path / "newer.jsonl"
    newer.write_text(
        json.dumps({"kind": "header", "format": "composer_lite.metrics", "version": 99}) + "\n"
    )
    with pytest.raises(ValueError, match="version 99"):
        read_jsonl(newer)
    with pytest.raises(ValueError, match="version 99"):
        JSONLLogger(newer).log_metrics({"loss": 1.0}, step=1)
    stranger = tmp_path / "other.jsonl"
    stranger.write_text("hello\n")
    with pytest.raises(ValueError, match="not a composer_lite metrics file"):
        read_jsonl(stranger)


def test_tensorboard_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'composer-lite\[tensorboard\]'"):
        TensorBoardLogger(tmp_path)


def test_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional [tensorboard] extra is not installed")
    logger = TensorBoardLogger(tmp_path / "tb")
    logger.log_hyperparameters({"seed": 17})
    logger.log_metrics({"loss": 2.0, "flag": True}, step=1)
    logger.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("loss")] == [2.0]


class _Loader(list):
    batch_size = 4


def test_trainer_logs_the_resolved_config_once_then_metrics(tmp_path):
    torch.manual_seed(0)
    model = TinyLM()
    data = _Loader(random_lm_batch(4, 8, seed=i) for i in range(2))
    data[1]["attention_mask"] = (torch.arange(8) < torch.tensor([[8], [5], [3], [8]])).long()
    memory, out = Memory(), io.StringIO()
    Trainer(
        model,
        data,
        torch.optim.SGD(model.parameters(), lr=0.1),
        max_duration="2ba",
        loggers=[memory, ConsoleLogger(stream=out), JSONLLogger(tmp_path / "m.jsonl")],
        default_callbacks=False,
    ).fit()
    configs = [c for c in memory.calls if c[0] == "config"]
    assert len(configs) == 1 and configs[0][1]["max_duration"] == "2ba"
    assert [c[2] for c in memory.calls if c[0] == "metrics"] == [1, 2]
    assert memory.calls[-1] == ("close",)
    assert re.search(r"\[step 2\] .*loss/train/total: ", out.getvalue())
    records = read_jsonl(tmp_path / "m.jsonl")
    assert [r["kind"] for r in records] == ["hyperparameters", "metrics", "metrics"]
    # the tokens read so far: every input id, then an attention mask's ones (padding left out)
    assert [r["metrics"]["time/token"] for r in records[1:]] == [32, 32 + 24]


def test_console_logger_every_n_steps_but_eval_always():
    out = io.StringIO()
    logger = ConsoleLogger(stream=out, every=10)
    for step in range(1, 21):
        logger.log_metrics({"loss": 1.0}, step)
    logger.log_metrics({"eval/loss": 2.0}, 13)
    assert [line.split("]")[0] for line in out.getvalue().splitlines()] == [
        "[step 10",
        "[step 20",
        "[step 13",
    ]
    with pytest.raises(ValueError, match="positive number of steps"):
        ConsoleLogger(every=0)
