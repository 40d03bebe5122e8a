"""Splitting a batch into microbatches, and counting the tokens each one's loss averages over.

The Trainer weights each microbatch's loss by its share of the global batch's loss tokens, so a
global batch gives the same gradient whatever the microbatch size and however tokens fall between
ranks: gradient = sum over ranks and microbatches of loss_mb * tokens_mb / tokens_global.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "MicrobatchSize",
    "batch_size_of",
    "count_input_tokens",
    "count_loss_tokens",
    "is_out_of_memory",
    "sequence_length_of",
    "split_batch",
]


class MicrobatchSize:
    """Rows per forward/backward: an int that divides the batch, None (the whole batch), or
    'auto': start at the loader's batch size (or the batch's rows when the loader has none) and
    halve on out-of-memory. A checkpoint keeps the size 'auto' found (`checkpoint_value`)."""

    def __init__(self, setting: int | str | None, loader_batch_size: Any = None) -> None:
        if isinstance(setting, int) and isinstance(loader_batch_size, int):
            if loader_batch_size % setting:
                raise ValueError(
                    f"device_train_microbatch_size={setting} does not divide the batch size "
                    f"{loader_batch_size}"
                )
        self.setting = setting
        self.auto = setting == "auto"
        # with 'auto', the size for the next batch; 2**30 stands for "the whole batch"
        self.size = (loader_batch_size if isinstance(loader_batch_size, int) else 0) or 1 << 30

    def rows(self, batch_rows: int) -> int:
        """The microbatch size for a batch of `batch_rows` rows."""
        if self.auto:
            return min(self.size, batch_rows)
        return self.setting or batch_rows

    def halve(self, current: int) -> int:
        """After an out-of-memory error at `current` rows ('auto' only): the next size to try."""
        self.size = max(1, current // 2)
        return self.size

    def checkpoint_value(self) -> int | None:
        """What a checkpoint records: the size 'auto' found, else the setting."""
        return self.size if self.auto else self.setting

    def restore(self, saved: int | None) -> None:
        """Take back the size a checkpoint recorded (only 'auto' follows it)."""
        if self.auto and saved:
            self.size = saved


def batch_size_of(batch: Any) -> int:
    """Rows in a batch: a tensor, a mapping or sequence of tensors (first one decides)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                return int(value.shape[0])
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        for value in batch:
            if isinstance(value, torch.Tensor):
                return int(value.shape[0])
    raise TypeError(
        f"cannot tell the batch size of a {type(batch).__name__}: expected tensors in a dict, list or tuple"
    )


def split_batch(batch: Any, size: int) -> list[Any]:
    """Consecutive microbatches of `size` rows (the last may be smaller); non-tensors are shared."""
    total = batch_size_of(batch)
    if size >= total:
        return [batch]

    def part(value: Any, start: int) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == total:
            return value[start : start + size]
        if isinstance(value, Mapping):
            return {k: part(v, start) for k, v in value.items()}
        if isinstance(value, (list, tuple)) and len(value) == total and not _holds_tensors(value):
            return type(value)(value[start : start + size])  # one entry per row (e.g. strings)
        if isinstance(value, (list, tuple)):
            return type(value)(part(v, start) for v in value)
        return value

    return [part(batch, start) for start in range(0, total, size)]


def _holds_tensors(value: Any) -> bool:
    """Whether a list/tuple holds tensors (or containers): fields of the batch, not its rows."""
    return any(isinstance(v, (torch.Tensor, Mapping, list, tuple)) for v in value)


def count_loss_tokens(model: Any, batch: Any) -> int:
    """How many targets a batch's loss averages over.

    The model's own `num_loss_tokens(batch)` if it has one (a model that shifts labels inside its
    loss should), else the labels that are not -100, else the number of rows.
    """
    counter = getattr(model, "num_loss_tokens", None)
    if callable(counter):
        return int(counter(batch))
    if isinstance(batch, Mapping) and isinstance(batch.get("labels"), torch.Tensor):
        return int((batch["labels"] != -100).sum())
    return batch_size_of(batch)


def count_input_tokens(batch: Any) -> int | None:
    """Tokens the model reads, as composer's timestamp counts them: the ones of an
    `attention_mask` (padding left out), else every entry of `input_ids`; None for a batch
    without them (the Trainer then counts its loss tokens)."""
    if isinstance(batch, Mapping):
        mask, ids = batch.get("attention_mask"), batch.get("input_ids")
        if isinstance(mask, torch.Tensor):
            return int(mask.sum())
        if isinstance(ids, torch.Tensor):
            return ids.numel()
    return None


def sequence_length_of(batch: Any) -> int | None:
    """T of a batch's input_ids (B, T), or None for a batch without them."""
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    return int(ids.shape[1]) if isinstance(ids, torch.Tensor) and ids.dim() == 2 else None


def is_out_of_memory(err: BaseException) -> bool:
    """A device out-of-memory error (torch.OutOfMemoryError, or CUDA's RuntimeError text)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
