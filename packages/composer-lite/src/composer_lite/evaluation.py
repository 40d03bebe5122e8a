"""What `Trainer.evaluate()` measures: the token-weighted loss over the eval dataloader (with the
model's optional `metrics`), and the metrics of each `Evaluator` (`composer_lite.protocols`).

Both run on every rank, on the model to evaluate, in eval mode and under `torch.no_grad()`; the
Trainer fires EVAL_START and EVAL_END around them, merges their metrics and logs them.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from composer_lite import dist
from composer_lite.core import State
from composer_lite.microbatch import count_loss_tokens
from composer_lite.precision import autocast
from composer_lite.protocols import Evaluator, SupportsMetrics, missing_members
from composer_lite.training import move_to_device

__all__ = ["dataloader_metrics", "evaluator_metrics"]


def dataloader_metrics(
    model: nn.Module, batches: Iterable, state: State, *, max_batches: int | None = None
) -> dict[str, float]:
    """`eval/loss` (and `eval/<name>` for the model's `metrics`): means over the loss tokens of
    all ranks' batches (the first `max_batches` of each rank). A batch with no loss token counts
    0; a rank without batches takes part in the reductions all the same."""
    has_metrics = not missing_members(model, SupportsMetrics)
    sums: dict[str, float] = {}
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        batch = move_to_device(batch, state.device)
        with autocast(state.precision, state.device):
            outputs = model(batch)
            values = {"loss": model.loss(outputs, batch)}
            if has_metrics:
                values.update(model.metrics(outputs, batch))
        tokens = count_loss_tokens(model, batch)
        sums["_tokens"] = sums.get("_tokens", 0.0) + tokens
        for name, value in values.items():
            # a batch with no loss token counts 0 (its mean is 0/0, NaN)
            sums[name] = sums.get(name, 0.0) + (float(value) * tokens if tokens else 0.0)
    # every rank reduces the same names, also one that had no eval batch
    names = sorted(set().union(*dist.all_gather_object(sorted(sums))))
    reduced = dist.all_reduce([sums.get(n, 0.0) for n in names], device=state.device)
    totals = dict(zip(names, reduced, strict=True))
    count = max(totals.pop("_tokens", 0.0), 1.0)
    return {f"eval/{name}": value / count for name, value in totals.items()}


def evaluator_metrics(
    evaluators: Sequence[Evaluator], model: nn.Module, state: State, *, given: Mapping[str, Any]
) -> dict[str, float]:
    """Run each evaluator (under the run's autocast) and gather their metrics. Each must return
    a mapping of names to numbers (a float, an int or a one-element tensor) under names that the
    loss (`given`) and the evaluators before it did not use; anything else is an error naming
    the evaluator and every bad entry."""
    out: dict[str, float] = {}
    for evaluator in evaluators:
        with autocast(state.precision, state.device):
            got = evaluator.evaluate(model, state)
        name = type(evaluator).__name__
        values = _checked(got, name)
        taken = sorted(key for key in values if key in given or key in out)
        if taken:
            raise ValueError(
                f"evaluator {name} returned {', '.join(map(repr, taken))}, a name the eval loss or "
                "another evaluator already gave: give each metric its own name"
            )
        out.update(values)
    return out


def _checked(got: Any, name: str) -> dict[str, float]:
    """What evaluator `name` returned, as {str: float}; a TypeError naming every bad entry."""
    if not isinstance(got, Mapping):
        raise TypeError(
            f"evaluator {name} returned a {type(got).__name__}; expected a mapping of metric "
            "names to numbers (Mapping[str, float])"
        )
    values = {key: _number(value) for key, value in got.items()}
    bad = [
        f"{key!r}: {type(got[key]).__name__} {got[key]!r}"
        for key, value in values.items()
        if value is None or not isinstance(key, str)
    ]
    if bad:
        raise TypeError(
            f"evaluator {name} returned metrics that are not named numbers ({'; '.join(bad)}); "
            "expected str names and float, int or one-element tensor values"
        )
    return values


def _number(value: Any) -> float | None:
    """A metric value as a float; None when it is not a number (bools are not)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            return None
        return float(value.detach().float().item())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None
