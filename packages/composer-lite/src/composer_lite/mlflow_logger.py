"""`MLFlowLogger`: a run's configuration, metrics and files in an MLflow tracking store.

    from composer_lite.loggers import MLFlowLogger
    Trainer(..., loggers=[MLFlowLogger(tracking_uri="http://mlflow:5000", experiment_name="mpt",
                                       run_name="mpt-125m", tags={"team": "pretrain"})])

The same `Logger` protocol as the other loggers (`log_hyperparameters`, `log_metrics`, `close`):

- the configuration becomes the run's parameters, nested keys flattened with dots
  (`scheduler.warmup.value`); values longer than MLflow takes are cut and marked;
- metrics are buffered and sent in batches (every `flush_interval_s`, at 1000 values, on `flush()`
  and on `close()`) with their step; booleans and non-numbers are left out, as TensorBoard's;
- `close()` sends what is buffered, uploads `artifacts` (files or folders that exist then) and ends
  the run: FINISHED, FAILED when an exception is on its way out of the Trainer, or KILLED when
  the Trainer stopped on SIGINT/SIGTERM (`State.stopped_by_signal`, seen in `fit_end(state)`) or
  a KeyboardInterrupt propagates. A log call after `close()` reopens the same run.

Only rank 0 writes (the rank of the process group, or `RANK` before one is joined): on other
ranks the logger does nothing and touches no store. The run is created lazily: the configuration
is kept until the first metric (or artifact, or the end of `fit()`) starts the run, so a Trainer
built but never fitted leaves no run behind; if sending or uploading fails in `close()`, the run
is ended FAILED and the error raised. The experiment is found or created at once, so a bad
`tracking_uri` fails before training. Needs `pip install 'composer-lite[mlflow]'`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MLFlowLogger", "flatten_params"]

log = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation): per log_batch call, and per parameter.
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_VALUE = 6000
_MAX_KEY = 250
# MLflow names take letters, digits, _ - . / : and spaces; anything else becomes "_".
_BAD_NAME_CHARS = re.compile(r"[^\w\-./: ]")


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """MLflow parameters from a nested configuration: `{"a": {"b": 1}}` -> `{"a.b": "1"}`;
    lists as JSON, None as "null", values longer than MLflow takes cut with a marker."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=name + "."))
            continue
        if isinstance(value, (list, tuple, Mapping)):
            text = json.dumps(value, default=repr)
        elif value is None or isinstance(value, bool):
            text = json.dumps(value)
        else:
            text = str(value)
        if len(text) > _MAX_PARAM_VALUE:
            marker = f"... ({len(text)} characters)"
            text = text[: _MAX_PARAM_VALUE - len(marker)] + marker
        flat[_name(name)] = text
    return flat


def _name(key: str) -> str:
    return _BAD_NAME_CHARS.sub("_", key)[:_MAX_KEY]


def _default_rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _end_status() -> str:
    """FAILED (KILLED for Ctrl-C) when an exception is propagating through the caller of
    `close()` (the Trainer closes its loggers in a `finally`), else FINISHED."""
    error = sys.exc_info()[1]
    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"


class MLFlowLogger:
    """Logs a run to MLflow (see the module docstring).

    tracking_uri:     the store: `http(s)://...`, `databricks`, `file:/path` (MLflow 3 wants
                      MLFLOW_ALLOW_FILE_STORE=true for file stores); None: MLflow's default
                      (`MLFLOW_TRACKING_URI`).
    experiment_name:  found or created; None: `MLFLOW_EXPERIMENT_NAME`, else MLflow's "Default".
    run_name:         the run's name in the UI (None: MLflow makes one up).
    tags:             set on the run when it is created.
    artifacts:        local files or folders uploaded at `close()` (those that exist then).
    flush_interval_s: buffered metrics are sent at least this often (seconds).
    rank:             this process's rank (None: the process group's, else `RANK`); only 0 logs.
    """

    def __init__(
        self,
        *,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        artifacts: Sequence[str | os.PathLike[str]] = (),
        flush_interval_s: float = 10.0,
        rank: int | None = None,
    ) -> None:
        if flush_interval_s < 0:
            raise ValueError(f"MLFlowLogger flush_interval_s must be >= 0, got {flush_interval_s}")
        self.rank = _default_rank() if rank is None else rank
        self.run_name = run_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.artifacts = [os.fspath(a) for a in artifacts]
        self.flush_interval_s = flush_interval_s
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._client: Any = None
        self._buffer: list[Any] = []
        self._params: dict[str, str] = {}  # recorded, sent when the run starts
        self._last_flush = time.monotonic()
        self._open = False
        self._signalled = False  # the last fit stopped on a signal (fit_end)
        if self.rank != 0:
            return
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise ImportError(
                "MLFlowLogger needs MLflow, which is not installed: "
                "pip install 'composer-lite[mlflow]' (mlflow-skinny)"
            ) from err
        self._client = MlflowClient(tracking_uri=tracking_uri)
        name = experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
        found = self._client.get_experiment_by_name(name)
        self.experiment_id = found.experiment_id if found else self._client.create_experiment(name)

    @property
    def active(self) -> bool:
        """Whether this process logs (rank 0)."""
        return self._client is not None

    def _ensure_run(self) -> None:
        if self._open:
            return
        if self.run_id is None:
            run = self._client.create_run(
                self.experiment_id, run_name=self.run_name, tags=self.tags or None
            )
            self.run_id = run.info.run_id
            log.info("MLflow run %s in experiment %s", self.run_id, self.experiment_id)
        else:  # a log call after close(): the same run goes on
            self._client.update_run(self.run_id, status="RUNNING")
        self._open = True
        self._send_params()

    def _send_params(self) -> None:
        from mlflow.entities import Param

        if not self._params:
            return
        known = self._client.get_run(self.run_id).data.params
        # MLflow parameters cannot change: a second call (a resumed fit) adds only new keys
        params = [Param(k, v) for k, v in self._params.items() if k not in known]
        for start in range(0, len(params), _MAX_PARAMS_PER_BATCH):
            self._client.log_batch(
                self.run_id, params=params[start : start + _MAX_PARAMS_PER_BATCH]
            )
        self._params = {}

    def log_hyperparameters(self, config: dict[str, Any]) -> None:
        """Record the configuration; it is sent when the run starts (at once if it has)."""
        if not self.active:
            return
        self._params.update(flatten_params(config))
        if self._open:
            self._send_params()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        self._ensure_run()
        now = int(time.time() * 1000)
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self._buffer.append(Metric(_name(name), float(value), now, int(step)))
        full = len(self._buffer) >= _MAX_METRICS_PER_BATCH
        if full or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Send the buffered metrics now."""
        if not self.active or self.run_id is None:
            return
        buffered, self._buffer = self._buffer, []
        for start in range(0, len(buffered), _MAX_METRICS_PER_BATCH):
            chunk = buffered[start : start + _MAX_METRICS_PER_BATCH]
            self._client.log_batch(self.run_id, metrics=chunk)
        self._last_flush = time.monotonic()

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a local file or folder to the run now (under `artifact_path`, if given)."""
        if not self.active:
            return
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"MLFlowLogger.log_artifact: {path} does not exist")
        self._ensure_run()
        if os.path.isdir(path):
            self._client.log_artifacts(self.run_id, path, artifact_path)
        else:
            self._client.log_artifact(self.run_id, path, artifact_path)

    def fit_end(self, state: Any) -> None:
        """Called by the Trainer before `close()`: remember whether a signal stopped the loop."""
        self._signalled = bool(getattr(state, "stopped_by_signal", False))
        if self.active:
            self._ensure_run()  # a fit that logged no metric is still recorded

    def close(self, status: str | None = None) -> None:
        """Send what is buffered, upload `artifacts`, end the run (`status` None: FAILED/KILLED
        while an exception propagates, else KILLED if a signal stopped the fit, else FINISHED)."""
        signalled, self._signalled = self._signalled, False
        if not self.active or not self._open:
            return
        status = status or _end_status()
        if status == "FINISHED" and signalled:
            status = "KILLED"
        try:
            self.flush()
            for path in self.artifacts:
                if os.path.exists(path):
                    self.log_artifact(path)
                else:
                    log.warning("MLflow artifact %s does not exist; not uploaded", path)
        except BaseException:
            status = _end_status()  # this error: FAILED (KILLED for a KeyboardInterrupt)
            raise
        finally:
            self._client.set_terminated(self.run_id, status=status)
            self._open = False
        log.info("MLflow run %s ended %s", self.run_id, status)
