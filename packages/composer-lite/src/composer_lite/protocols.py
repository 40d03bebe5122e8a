"""The contracts between the trainer and what it trains and evaluates: the trainable model (and
its optional parts), the LM batch, and the evaluator that runs on the trainer's schedule.

Models and data producers satisfy these structurally; they never import composer_lite. The
`check_*` functions turn a mismatch into one clear error that names every missing piece;
`missing_members(obj, protocol)` is the helper they share, public so that the packages above
(evalkit, foundry) check objects against their own protocols the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from composer_lite.core import State

__all__ = [
    "Evaluator",
    "LMBatch",
    "SupportsBlocks",
    "SupportsFlops",
    "SupportsMetrics",
    "TrainableModel",
    "check_evaluator",
    "check_lm_batch",
    "check_trainable_model",
    "missing_members",
]


@runtime_checkable
class TrainableModel(Protocol):
    """What the Trainer needs of a model.

    `forward(batch)` returns whatever the model likes (logits, a dataclass, ...);
    `loss(outputs, batch)` returns a scalar tensor: the mean over the tokens that count
    (labels != -100), so that the Trainer can weight microbatches by their token counts.
    """

    def forward(self, batch: Mapping[str, Any]) -> Any: ...

    def loss(self, outputs: Any, batch: Mapping[str, Any]) -> torch.Tensor: ...


@runtime_checkable
class SupportsFlops(Protocol):
    """Optional: FLOPs of one training token (forward + backward) at `seq_len`, for MFU."""

    def flops_per_token(self, seq_len: int) -> float: ...


@runtime_checkable
class SupportsBlocks(Protocol):
    """Optional: the repeated units that FSDP2, activation checkpointing and compile wrap."""

    def blocks(self) -> list[nn.Module]: ...


@runtime_checkable
class SupportsMetrics(Protocol):
    """Optional: more eval metrics of one eval batch, beside the loss. The Trainer weights each by
    the batch's loss tokens, as it does the loss, and reports it as `eval/<name>`."""

    def metrics(
        self, outputs: Any, batch: Mapping[str, Any]
    ) -> Mapping[str, torch.Tensor | float]: ...


@runtime_checkable
class Evaluator(Protocol):
    """Runs at the trainer's evaluation points and returns named metrics.

    The Trainer (`Trainer(..., evaluators=[...])`) calls `evaluate(model, state)` at every
    `eval_interval` and at the end of a run that reaches max_duration, after the eval
    dataloader's loss (if there is one), on every rank: `model` is the model to evaluate (the
    EMA weights when an EMA callback is in use, `state.eval_model` when set, else
    `state.model`), in eval mode, under `torch.no_grad()` and the run's autocast. It returns
    `{name: number}` (floats, ints or one-element tensors), the same on every rank (an evaluator
    that splits its work across ranks reduces its results itself); the Trainer merges them into
    `state.eval_metrics` under the names given (a name another evaluator or the loss already
    gave is an error) and logs them.
    """

    def evaluate(self, model: nn.Module, state: State) -> Mapping[str, float]: ...


class LMBatch(TypedDict, total=False):
    """A language-model batch, as foundry produces it and the Trainer consumes it.

    input_ids:      int64 (B, T) token ids.                                    required
    labels:         int64 (B, T) targets; -100 where no loss is taken.         required
    sequence_id:    int64 (B, T) document index within a packed row.           optional
    attention_mask: (B, T) 1 for real tokens, 0 for padding (bool or integer). optional
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    sequence_id: torch.Tensor
    attention_mask: torch.Tensor


_REQUIRED_BATCH_KEYS = ("input_ids", "labels")
_INT64_BATCH_KEYS = ("input_ids", "labels", "sequence_id")


def missing_members(obj: object, protocol: type) -> list[str]:
    """The members of `protocol` that `obj` lacks (methods must also be callable), in the order
    the protocol declares them: the shared helper for checking an object against a contract and
    naming every missing piece at once (an empty list: it conforms)."""
    names: list[str] = []
    for klass in protocol.__mro__:
        if klass in (object, Protocol) or klass.__name__ in ("Protocol", "Generic"):
            continue
        for name in [*vars(klass), *getattr(klass, "__annotations__", {})]:
            public = not name.startswith("_") or name == "__call__"
            if public and name not in names:
                names.append(name)
    missing = []
    for name in names:
        expected_callable = callable(getattr(protocol, name, None))
        if not hasattr(obj, name) or (expected_callable and not callable(getattr(obj, name))):
            missing.append(name)
    return missing


def check_trainable_model(model: object) -> None:
    """Raise a TypeError naming every method the trainable-model contract needs and `model` lacks."""
    missing = missing_members(model, TrainableModel)
    if missing:
        raise TypeError(
            f"{type(model).__name__} does not follow the trainable-model contract: it lacks "
            f"{', '.join(f'{m}()' for m in missing)}. Expected forward(batch) -> outputs and "
            "loss(outputs, batch) -> scalar Tensor (mean over the tokens that count)."
        )


def check_evaluator(evaluator: object) -> None:
    """Raise a TypeError naming an object given as an evaluator that lacks `evaluate()`."""
    if missing_members(evaluator, Evaluator):
        raise TypeError(
            f"{type(evaluator).__name__} is not an evaluator: it lacks evaluate(). Expected "
            "evaluate(model, state) -> Mapping[str, float] (composer_lite.protocols.Evaluator)."
        )


def check_lm_batch(batch: object) -> None:
    """Raise a clear error if `batch` is not an LM batch (see `LMBatch`); every problem at once."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"an LM batch is a dict of tensors; got {type(batch).__name__}")
    problems = [f"missing key {k!r}" for k in _REQUIRED_BATCH_KEYS if k not in batch]
    shape = None
    for key in ("input_ids", "labels", "sequence_id", "attention_mask"):
        value = batch.get(key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key!r} should be a torch.Tensor, got {type(value).__name__}")
            continue
        if value.dim() != 2:
            problems.append(f"{key!r} should have shape (B, T), got {tuple(value.shape)}")
            continue
        if key in _INT64_BATCH_KEYS and value.dtype != torch.int64:
            problems.append(f"{key!r} should be int64, got {value.dtype}")
        if shape is None:
            shape = tuple(value.shape)
        elif tuple(value.shape) != shape:
            problems.append(f"{key!r} has shape {tuple(value.shape)}, input_ids has {shape}")
    if problems:
        raise ValueError("not a valid LM batch: " + "; ".join(problems))
