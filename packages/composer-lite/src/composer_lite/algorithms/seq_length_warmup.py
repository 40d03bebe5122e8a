"""Sequence-length warmup: train on truncated sequences early, growing to the full length.

    SeqLengthWarmup(duration="0.3dur", min_seq_len=64, step_size=8)

At BATCH_START, every (B, T) tensor of `state.batch` (input_ids, labels, sequence_id,
attention_mask, ...) is cut to its first L positions, where L grows linearly with progress
from `min_seq_len` at the start to T once `duration` has passed, rounded down to a multiple of
`step_size` (a multiple of 8, so tensor-core shapes stay aligned). All keys are cut alike, so
the batch stays a valid LM batch: labels are already aligned with their positions, and a
model that shifts inside its loss sees the same prefix. The Trainer counts tokens after
BATCH_START, so throughput and token budgets see the truncated batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from composer_lite.core import Algorithm, Logger, State
from composer_lite.events import Event
from composer_lite.time import Time, TimeUnit

__all__ = ["SeqLengthWarmup", "truncate_batch", "warmup_length"]


def warmup_length(progress: float, min_seq_len: int, max_seq_len: int, step_size: int) -> int:
    """The sequence length at `progress` (0 to 1) of the warmup, in multiples of `step_size`."""
    if progress >= 1.0 or max_seq_len <= min_seq_len:
        return max_seq_len
    length = min_seq_len + (max_seq_len - min_seq_len) * max(progress, 0.0)
    length = int(length) // step_size * step_size
    return max(min_seq_len, min(length, max_seq_len))


def truncate_batch(batch: Mapping[str, Any], seq_len: int) -> dict[str, Any]:
    """The batch with every (B, T, ...) tensor cut to (B, seq_len, ...); the rest as is.

    T is input_ids' second dimension; only tensors with the same (B, T) are cut.
    """
    ids = batch.get("input_ids")
    if not (isinstance(ids, torch.Tensor) and ids.dim() == 2):
        raise ValueError(
            "sequence-length warmup needs batch['input_ids'] of shape (B, T); got "
            f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}"
        )
    rows, length = ids.shape
    out = {}
    for key, value in batch.items():
        if (
            isinstance(value, torch.Tensor)
            and value.dim() >= 2
            and value.shape[:2] == (rows, length)
        ):
            value = value[:, :seq_len].contiguous()
        out[key] = value
    return out


class SeqLengthWarmup(Algorithm):
    """Truncate batches to a length growing from `min_seq_len` to full over `duration`.

    duration:    how long the warmup lasts: a Time ('0.3dur', '1000ba', '1e8tok', ...).
    min_seq_len: the length at the start (kept when the batch is shorter).
    step_size:   lengths are multiples of this; a multiple of 8.
    """

    def __init__(
        self, *, duration: Time | str = "0.3dur", min_seq_len: int = 8, step_size: int = 8
    ) -> None:
        if not (isinstance(step_size, int) and step_size > 0 and step_size % 8 == 0):
            raise ValueError(f"step_size must be a positive multiple of 8, got {step_size!r}")
        if not (isinstance(min_seq_len, int) and min_seq_len >= step_size):
            raise ValueError(
                f"min_seq_len must be an int >= step_size ({step_size}), got {min_seq_len!r}"
            )
        self.duration = Time.coerce(duration, TimeUnit.BATCH)
        if self.duration.unit is TimeUnit.EPOCH:
            raise ValueError(
                f"a warmup duration of {self.duration} only moves at epoch ends; give it in "
                "'ba', 'sp', 'tok' or 'dur'"
            )
        self.min_seq_len, self.step_size = min_seq_len, step_size

    def progress(self, state: State) -> float:
        """How far through the warmup the run is (0 to 1, or more once it is over)."""
        if self.duration.value == 0:
            return 1.0
        ts = state.timestamp
        if self.duration.unit is TimeUnit.DURATION:
            return ts.fraction_of(state.max_duration) / self.duration.value
        return ts.get(self.duration.unit) / self.duration.value

    def match(self, event: Event, state: State) -> bool:
        return event is Event.BATCH_START

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if not isinstance(state.batch, Mapping):
            raise TypeError(
                f"sequence-length warmup needs a dict batch (an LM batch); got {type(state.batch).__name__}"
            )
        full = int(state.batch["input_ids"].shape[1]) if "input_ids" in state.batch else 0
        length = warmup_length(self.progress(state), self.min_seq_len, full, self.step_size)
        if length < full:
            state.batch = truncate_batch(state.batch, length)
        state.metrics["seq_length_warmup/seq_len"] = min(length, full)
