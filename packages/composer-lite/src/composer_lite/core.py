"""What callbacks and algorithms see and change: `State`, and their base classes.

`State` is the run's shared, mutable state. Callbacks observe it and may change it (stop the run,
skip a step, change the learning rate); algorithms are callbacks with a `match` test that are
expected to rewrite parts of it (the model at INIT, the batch at BATCH_START, the loss at
AFTER_LOSS). Both keep their own state in `state_dict()`, which checkpoints save.

What the Trainer measured of the current step is `state.step`, a `StepResult` (the same on every
rank, set before BEFORE_OPTIMIZER_STEP); what callbacks ask of the loop are typed requests:
`state.stop(reason)`, `state.skip_step = True`, `state.request_rollback(reason)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from composer_lite.events import Event
from composer_lite.time import Time, Timestamp

__all__ = ["Algorithm", "Callback", "Logger", "State", "StepResult"]


@runtime_checkable
class Logger(Protocol):
    """Where metrics go: the console, a JSONL file, TensorBoard, ..."""

    def log_hyperparameters(self, config: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class StepResult:
    """What the Trainer measured of one optimizer step, the same on every rank.

    loss:        the step's loss: the token-weighted mean over all microbatches and ranks.
    grad_norm:   the L2 norm of all gradients (unscaled; inf or nan when they are not finite).
    tokens:      tokens the model read, all ranks (an attention mask's ones, else the input ids;
                 the loss tokens for a batch without input_ids). Token time counts these.
    loss_tokens: targets the loss averaged over (labels != -100), all ranks.
    samples:     rows of the global batch, all ranks.
    seq_len:     the batch's sequence length (input_ids (B, T)), or None when it has none.
    """

    loss: float
    grad_norm: float
    tokens: int
    loss_tokens: int
    samples: int
    seq_len: int | None


@dataclass(eq=False)
class State:
    """The run as callbacks and algorithms see it. The Trainer owns it; they may change it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    max_duration: Time
    timestamp: Timestamp = field(default_factory=Timestamp)
    scheduler: Any = None
    train_dataloader: Iterable | None = None
    eval_dataloader: Iterable | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    rank: int = 0
    world_size: int = 1
    run_name: str = "run"
    # The current step: the global batch of this rank, its microbatches, the last outputs and loss,
    # and what the Trainer measured of it (set before BEFORE_OPTIMIZER_STEP; None before the first).
    batch: Any = None
    microbatch: Any = None
    outputs: Any = None
    loss: torch.Tensor | None = None
    step: StepResult | None = None
    # Metrics of this step for the loggers (callbacks add theirs here; BATCH_END logs them).
    metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    # What callbacks ask of the loop (the Trainer reads and clears skip_step and rollback_reason
    # after BEFORE_OPTIMIZER_STEP).
    stop_reason: str | None = None
    skip_step: bool = False
    rollback_reason: str | None = None
    # Set by the Trainer when it stops because a process (this rank or another) got SIGINT/SIGTERM.
    stopped_by_signal: bool = False
    # The model to evaluate instead of `model`, when a callback sets one.
    eval_model: nn.Module | None = None
    # For users' own callbacks to share values; the Trainer and the built-in callbacks never use it.
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self, reason: str) -> None:
        """Ask the loop to stop after this batch (it saves a checkpoint if saving is on)."""
        self.stop_reason = self.stop_reason or reason

    def request_rollback(self, reason: str) -> None:
        """Ask the loop (at BEFORE_OPTIMIZER_STEP) not to take this step and to restore the model,
        optimizer and scheduler from the last checkpoint; an error if there is none."""
        self.rollback_reason = self.rollback_reason or reason

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class Callback:
    """Observes the run and may change `State`: override the methods of the events you need
    (see `composer_lite.events` for when each runs)."""

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        getattr(self, event.value)(state, logger)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def init(self, state: State, logger: Logger) -> None:
        pass

    def fit_start(self, state: State, logger: Logger) -> None:
        pass

    def epoch_start(self, state: State, logger: Logger) -> None:
        pass

    def batch_start(self, state: State, logger: Logger) -> None:
        pass

    def after_forward(self, state: State, logger: Logger) -> None:
        pass

    def after_loss(self, state: State, logger: Logger) -> None:
        pass

    def after_backward(self, state: State, logger: Logger) -> None:
        pass

    def before_optimizer_step(self, state: State, logger: Logger) -> None:
        pass

    def batch_end(self, state: State, logger: Logger) -> None:
        pass

    def eval_start(self, state: State, logger: Logger) -> None:
        pass

    def eval_end(self, state: State, logger: Logger) -> None:
        pass

    def checkpoint(self, state: State, logger: Logger) -> None:
        pass

    def epoch_end(self, state: State, logger: Logger) -> None:
        pass

    def fit_end(self, state: State, logger: Logger) -> None:
        pass


class Algorithm:
    """Changes the run: `match(event, state)` says when, `apply(event, state, logger)` does it."""

    def match(self, event: Event, state: State) -> bool:
        raise NotImplementedError

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
