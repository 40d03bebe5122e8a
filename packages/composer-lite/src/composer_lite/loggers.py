"""Loggers: where metrics go. The console, a JSONL file per run, TensorBoard, MLflow
(`MLFlowLogger`, in `composer_lite.mlflow_logger`), and the hub.

Callbacks and the Trainer see one `LoggerHub`; it fans every call out to its loggers, on rank 0
only unless `all_ranks=True` (metrics are the same on every rank; one writer is enough).

The JSONL file is an on-disk format, defined here and versioned (`JSONL_FORMAT`,
`JSONL_VERSION`): its first line is a header, then one record per line,

    {"kind": "header", "format": "composer_lite.metrics", "version": 1}
    {"kind": "hyperparameters", "time": 1718000000.0, "config": {...}}
    {"kind": "metrics", "time": 1718000001.2, "step": 1, "metrics": {"loss/train/total": 4.1}}

Non-finite numbers are written as the strings "nan", "inf", "-inf" (strict JSON has none);
`read_jsonl` turns them back into floats and rejects an unknown format or version.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

from composer_lite.mlflow_logger import MLFlowLogger

__all__ = [
    "JSONL_FORMAT",
    "JSONL_VERSION",
    "ConsoleLogger",
    "JSONLLogger",
    "LoggerHub",
    "MLFlowLogger",
    "TensorBoardLogger",
    "read_jsonl",
]

log = logging.getLogger(__name__)

JSONL_FORMAT = "composer_lite.metrics"
JSONL_VERSION = 1
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _number(value: Any) -> Any:
    """A plain number from a one-element tensor or numpy scalar; other values pass through."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


class ConsoleLogger:
    """Metrics as one line per log call, for every `every`-th step (eval metrics always); the
    configuration once, as indented JSON, unless `show_config=False` (a caller that prints its
    own). The progress bar shows the steps in between."""

    def __init__(
        self,
        *,
        stream: IO[str] | None = None,
        precision: int = 4,
        every: int = 1,
        show_config: bool = True,
    ) -> None:
        if every < 1:
            raise ValueError(f"ConsoleLogger every must be a positive number of steps, got {every}")
        self._stream, self.precision, self.every = stream, precision, every
        self.show_config = show_config

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    def log_hyperparameters(self, config: dict[str, Any]) -> None:
        if not self.show_config:
            return
        self.stream.write(
            "config: " + json.dumps(_jsonable(config), indent=2, sort_keys=True) + "\n"
        )
        self.stream.flush()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not metrics:
            return
        if step % self.every and not any(name.startswith("eval/") for name in metrics):
            return
        parts = [
            f"{name}: {value:.{self.precision}g}"
            if isinstance(value, float)
            else f"{name}: {value}"
            for name, value in sorted(metrics.items())
        ]
        self.stream.write(f"[step {step}] " + ", ".join(parts) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class JSONLLogger:
    """A JSONL metrics file (format in the module docstring). An existing file (a resumed run)
    is appended to after checking its header; every record is flushed as it is written."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: IO[str] | None = None

    def _open(self) -> IO[str]:
        if self._file is None:
            if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
                _check_header(self.path)
                self._file = open(self.path, "a", encoding="utf-8")
            else:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self._file = open(self.path, "w", encoding="utf-8")
                self._write({"kind": "header", "format": JSONL_FORMAT, "version": JSONL_VERSION})
        return self._file

    def _write(self, record: dict[str, Any]) -> None:
        file = self._file if self._file is not None else self._open()
        file.write(json.dumps(_jsonable(record), sort_keys=False) + "\n")
        file.flush()

    def log_hyperparameters(self, config: dict[str, Any]) -> None:
        self._open()
        self._write({"kind": "hyperparameters", "time": time.time(), "config": config})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._open()
        self._write({"kind": "metrics", "time": time.time(), "step": int(step), "metrics": metrics})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _check_header(path: str) -> None:
    with open(path, encoding="utf-8") as file:
        first = file.readline()
    try:
        header = json.loads(first)
    except json.JSONDecodeError:
        header = None
    if not (isinstance(header, dict) and header.get("kind") == "header"):
        raise ValueError(
            f"{path} is not a composer_lite metrics file: its first line is {first[:80]!r}"
        )
    if header.get("format") != JSONL_FORMAT or header.get("version") != JSONL_VERSION:
        raise ValueError(
            f"{path} is {header.get('format')!r} version {header.get('version')!r}; this "
            f"composer_lite reads {JSONL_FORMAT!r} version {JSONL_VERSION} only"
        )


def _restore(value: Any) -> Any:
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, dict):
        return {k: _restore(v) for k, v in value.items()}
    return value


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSONL metrics file after its header (non-finite numbers restored)."""
    path = os.fspath(path)
    _check_header(path)
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines()[1:]
    records = []
    for record in (json.loads(line) for line in lines if line.strip()):
        if record.get("kind") == "header":  # appended runs never write a second one; be lenient
            continue
        if record.get("kind") == "metrics":
            record["metrics"] = _restore(record["metrics"])
        records.append(record)
    return records


class TensorBoardLogger:
    """Scalars to TensorBoard event files in `log_dir`; the configuration as a text summary.

    Needs the optional extra: `pip install 'composer-lite[tensorboard]'`.
    """

    def __init__(self, log_dir: str | os.PathLike[str], *, flush_secs: int = 30) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "TensorBoardLogger needs the tensorboard package, which is not installed: "
                "pip install 'composer-lite[tensorboard]'"
            ) from err
        self.log_dir = os.fspath(log_dir)
        self._writer = SummaryWriter(log_dir=self.log_dir, flush_secs=flush_secs)

    def log_hyperparameters(self, config: dict[str, Any]) -> None:
        text = json.dumps(_jsonable(config), indent=2, sort_keys=True)
        self._writer.add_text("config", "```\n" + text + "\n```", global_step=0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(name, value, global_step=step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


_LOGGER_METHODS = ("log_metrics", "log_hyperparameters", "close")


class LoggerHub:
    """The logger that callbacks receive: fans each call out to `loggers`.

    Only rank 0 writes unless `all_ranks` (then every rank does; give each rank its own file).
    Tensor values become plain numbers before any logger sees them. A logger may also have
    `fit_end(state)`: the Trainer's `close(state)` calls it first, with the State the loop ended
    with (e.g. `state.stopped_by_signal`).
    """

    def __init__(
        self, loggers: Sequence[Any] = (), *, rank: int = 0, all_ranks: bool = False
    ) -> None:
        for logger in loggers:
            missing = [m for m in _LOGGER_METHODS if not callable(getattr(logger, m, None))]
            if missing:
                raise TypeError(
                    f"{type(logger).__name__} is not a logger: it lacks {', '.join(missing)} "
                    "(expected log_metrics(metrics, step), log_hyperparameters(config), close())"
                )
        self.loggers, self.rank, self.all_ranks = list(loggers), rank, all_ranks

    @property
    def active(self) -> bool:
        """Whether this rank writes."""
        return self.rank == 0 or self.all_ranks

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        if not self.active or not metrics:
            return
        plain = {name: _number(value) for name, value in metrics.items()}
        for logger in self.loggers:
            logger.log_metrics(plain, step)

    def log_hyperparameters(self, config: dict[str, Any]) -> None:
        if self.active:
            for logger in self.loggers:
                logger.log_hyperparameters(config)

    def close(self, state: Any = None) -> None:
        """Flush and close every logger (a later log call reopens a file logger, appending);
        with the Trainer's `state`, call the loggers' optional `fit_end(state)` first. Every
        logger is closed even if one fails; the first error is raised after, the others logged."""
        if not self.active:
            return
        error: BaseException | None = None
        for logger in self.loggers:
            try:
                fit_end = getattr(logger, "fit_end", None)
                try:
                    if state is not None and callable(fit_end):
                        fit_end(state)
                finally:  # closed even if fit_end failed
                    logger.close()
            except BaseException as err:
                if error is None:
                    error = err
                else:
                    log.error("closing %s failed too: %r", type(logger).__name__, err)
        if error is not None:
            raise error
