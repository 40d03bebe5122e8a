"""Step-wise learning-rate schedules with a warmup given as a `Time`.

Each schedule is a plain function of the step (`lr multiplier = f(step, warmup, total)`), wrapped
by `Schedule`, a `torch.optim.lr_scheduler.LambdaLR` whose warmup and length are resolved from
`Time`s once the Trainer knows the batch and dataloader sizes. Choose one from `SCHEDULES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from composer_lite.time import Time

__all__ = ["SCHEDULES", "Schedule", "constant", "cosine", "inverse_sqrt", "linear"]

ScheduleFn = Callable[[int, int, int, float], float]


def _warmup(step: int, warmup: int) -> float | None:
    return (step + 1) / warmup if warmup and step < warmup else None


def constant(step: int, warmup: int, total: int, alpha_f: float) -> float:
    """1 after a linear warmup."""
    w = _warmup(step, warmup)
    return 1.0 if w is None else w


def linear(step: int, warmup: int, total: int, alpha_f: float) -> float:
    """Linear warmup, then linear decay from 1 to `alpha_f` at `total`."""
    w = _warmup(step, warmup)
    if w is not None:
        return w
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 + (alpha_f - 1.0) * frac


def cosine(step: int, warmup: int, total: int, alpha_f: float) -> float:
    """Linear warmup, then half a cosine from 1 to `alpha_f` at `total` (MPT's schedule)."""
    w = _warmup(step, warmup)
    if w is not None:
        return w
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return alpha_f + (1.0 - alpha_f) * 0.5 * (1.0 + math.cos(math.pi * frac))


def inverse_sqrt(step: int, warmup: int, total: int, alpha_f: float) -> float:
    """Linear warmup, then 1/sqrt(step / warmup)."""
    w = _warmup(step, warmup)
    return w if w is not None else math.sqrt(max(warmup, 1) / max(step + 1, 1))


SCHEDULES: dict[str, ScheduleFn] = {
    "constant": constant,
    "linear": linear,
    "cosine": cosine,
    "inverse_sqrt": inverse_sqrt,
}


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """A schedule to build once the run's length in steps is known.

    name:    one of SCHEDULES.
    warmup:  a Time ('100ba', '0.01dur', ...); 0 for none.
    alpha_f: the final multiplier of decaying schedules.
    t_max:   the schedule's length (default: the run's max_duration).
    tokens_per_batch: the global batch's tokens, to convert 'tok' times into steps.
    """

    name: str = "cosine"
    warmup: Time | str = "0ba"
    alpha_f: float = 0.0
    t_max: Time | str | None = None
    tokens_per_batch: int | None = None

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; choose from {sorted(SCHEDULES)}")
        object.__setattr__(self, "warmup", Time.coerce(self.warmup))
        if self.t_max is not None:
            object.__setattr__(self, "t_max", Time.coerce(self.t_max))

    def build(
        self, optimizer: torch.optim.Optimizer, to_steps: Callable[[Time], int], max_duration: Time
    ) -> torch.optim.lr_scheduler.LambdaLR:
        """A LambdaLR stepping once per optimizer step; `to_steps` converts a Time to steps."""
        fn = SCHEDULES[self.name]
        warmup = to_steps(self.warmup)
        total = to_steps(self.t_max or max_duration)
        if warmup > total:
            raise ValueError(
                f"warmup {self.warmup} ({warmup} steps) is longer than the schedule ({total} steps)"
            )
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: fn(step, warmup, total, self.alpha_f)
        )
