"""LRMonitor: the learning rate of every parameter group, as the step used it.

It reads the rates at BEFORE_OPTIMIZER_STEP (after the scheduler's previous step, before this
one), so the value logged for batch n is the one batch n trained with. Metric names follow
composer: `lr-<optimizer class>/group<i>`, e.g. `lr-AdamW/group0`.
"""

from __future__ import annotations

from composer_lite.core import Callback, Logger, State

__all__ = ["LRMonitor", "learning_rates"]


def learning_rates(optimizer) -> dict[str, float]:
    """`{"lr-<Optimizer>/group<i>": lr}` for each parameter group of `optimizer`."""
    name = type(optimizer).__name__
    return {f"lr-{name}/group{i}": float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}


class LRMonitor(Callback):
    """Adds each parameter group's learning rate to the step's metrics."""

    def before_optimizer_step(self, state: State, logger: Logger) -> None:
        state.metrics.update(learning_rates(state.optimizer))
