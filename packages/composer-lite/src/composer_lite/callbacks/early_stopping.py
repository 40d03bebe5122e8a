"""EarlyStopping: stop the run when a metric has not improved for `patience` checks.

An `eval/...` metric is checked at every EVAL_END (in `state.eval_metrics`); any other name at
every BATCH_END (in `state.metrics`, e.g. `loss/train/total`; callbacks that add a metric must
come before this one). Both are the same on every rank (the Trainer all-reduces them), so every
rank stops at the same batch. The stop goes through `state.stop(reason)`: the loop finishes the
batch, saves a checkpoint if saving is on, and returns.
"""

from __future__ import annotations

import math
from typing import Any

from composer_lite.core import Callback, Logger, State

__all__ = ["EarlyStopping"]

_MODES = ("min", "max")


class EarlyStopping(Callback):
    """Stop when `metric` has not improved by more than `min_delta` for `patience` checks.

    mode: 'min' (lower is better, e.g. a loss) or 'max' (e.g. an accuracy).
    """

    def __init__(
        self,
        *,
        metric: str = "eval/loss",
        mode: str = "min",
        patience: int = 3,
        min_delta: float = 0.0,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"EarlyStopping mode must be one of {_MODES}, got {mode!r}")
        if not (isinstance(patience, int) and patience >= 1):
            raise ValueError(f"EarlyStopping patience must be a positive int, got {patience!r}")
        if min_delta < 0:
            raise ValueError(f"EarlyStopping min_delta must be >= 0, got {min_delta!r}")
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best: float | None = None
        self.bad_checks = 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def check(self, value: float) -> bool:
        """Record one value of the metric; True when the run should stop."""
        value = float(value)
        if math.isfinite(value) and self._improved(value):
            self.best, self.bad_checks = value, 0
        else:
            self.bad_checks += 1
        return self.bad_checks >= self.patience

    def _check_in(self, metrics: dict[str, float], state: State, where: str) -> None:
        if self.metric not in metrics:
            raise KeyError(
                f"EarlyStopping watches {self.metric!r}, but {where} has only {sorted(metrics)}"
            )
        if self.check(metrics[self.metric]):
            state.stop(
                f"early stopping: {self.metric} has not improved on {self.best} for "
                f"{self.bad_checks} checks (patience {self.patience})"
            )

    def eval_end(self, state: State, logger: Logger) -> None:
        if self.metric.startswith("eval/"):
            self._check_in(state.eval_metrics, state, "state.eval_metrics at EVAL_END")

    def batch_end(self, state: State, logger: Logger) -> None:
        if not self.metric.startswith("eval/"):
            self._check_in(state.metrics, state, "state.metrics at BATCH_END")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_checks": self.bad_checks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_checks = state.get("best"), int(state.get("bad_checks", 0))
