"""What callbacks and algorithms see and change: `State`, and their base classes.

`State` is the run's shared, mutable state. Callbacks observe it and may change it (stop the run,
skip a step, change the learning rate); algorithms are callbacks with a `match` test that are
expected to rewrite parts of it (the model at INIT, the batch at BATCH_START, the loss at
AFTER_LOSS). Both keep their own state in `state_dict()`, which checkpoints save.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from composer_lite.events import Event
from composer_lite.time import Time, Timestamp

__all__ = ["Algorithm", "Callback", "Logger", "State"]


@runtime_checkable
class Logger(Protocol):
    """Where metrics go: the console, a JSONL file, TensorBoard, ..."""

    def log_hyperparameters(self, config: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


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
    # The current step: the global batch of this rank, its microbatches, the last outputs and loss.
    batch: Any = None
    microbatch: Any = None
    outputs: Any = None
    loss: torch.Tensor | None = None
    # Metrics of this step for the loggers (callbacks add theirs here; BATCH_END logs them).
    metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    # What callbacks ask of the loop.
    stop_reason: str | None = None
    skip_step: bool = False
    # Models to evaluate and save instead of `model` (an EMA callback sets it).
    eval_model: nn.Module | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self, reason: str) -> None:
        """Ask the loop to stop after this batch (it saves a checkpoint if saving is on)."""
        self.stop_reason = self.stop_reason or reason

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
