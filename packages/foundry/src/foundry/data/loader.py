"""Prepared MDS data as the trainer's LM batches: a `StreamingDataLoader` over a data mix.

Pretraining rows are concatenated token sequences (DESIGN's pretraining-MDS contract), so the
batch is `input_ids` and `labels` equal to them (the model shifts the labels); finetuning rows
carry their own `labels` (-100 on prompt tokens) and, when packed, a `sequence_id`, and their
batch an `attention_mask` that marks the padding, so that the Trainer's token count (`time/token`,
`foundry report x=tokens`) is of real tokens. Pretraining batches have no padding and no mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from foundry.data.format import tokens_of
from foundry.data.mix import streams_from_config
from foundry.schema import DataConfig, parse_count

__all__ = ["LoaderSettings", "build_loader", "lm_collate"]


def _padded(rows: Sequence[Mapping[str, Any]], name: str, fill: int | None) -> torch.Tensor:
    """(B, T) int64 of column `name`, rows shorter than the longest padded at their end with
    `fill` (None: one more than the row's last value, a segment of its own for `sequence_id`)."""
    values = [np.asarray(r[name]).reshape(-1) for r in rows]
    out = np.empty((len(values), max(len(v) for v in values)), dtype=np.int64)
    for row, v in zip(out, values, strict=True):
        row[: len(v)] = v
        row[len(v) :] = fill if fill is not None else (int(v[-1]) + 1 if len(v) else 0)
    return torch.from_numpy(out)


def _real_tokens(rows: Sequence[Mapping[str, Any]], width: int) -> torch.Tensor:
    """(B, width) int64 `attention_mask` of finetuning rows: 0 on padding, 1 elsewhere. Padding is
    what the collator adds past a row's end and, in a packed row, the segment of its own that
    `foundry.data.packing` pads it with: the tokens after its last example, whose `sequence_id`
    exceeds that of the last labelled token (every example carries a label: `foundry.data.sft`
    drops one with none left)."""
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for row, r in zip(mask, rows, strict=True):
        real = np.ones(np.asarray(r["input_ids"]).size, dtype=bool)
        labels = np.asarray(r["labels"]).reshape(-1)
        labelled = np.flatnonzero(labels != -100)
        if "sequence_id" in r and labelled.size:
            seq = np.asarray(r["sequence_id"]).reshape(-1)
            real = seq <= seq[labelled[-1]]
        row[: real.size] = real
    return torch.from_numpy(mask)


def lm_collate(rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """An LM batch (int64 (B, T) `input_ids`, `labels`, and `sequence_id` when rows have it) from
    pretraining rows (`tokens`, or llm-foundry's older `bytes`) or finetuning rows (`input_ids`,
    `labels`). Finetuning rows of different lengths are padded at their end to the longest:
    `input_ids` 0 (causal attention: no earlier token sees a pad) and `labels` -100 (no loss);
    their `attention_mask` is 0 on that padding and on a packed row's own (`_real_tokens`)."""
    if "input_ids" in rows[0]:
        batch = {
            "input_ids": _padded(rows, "input_ids", 0),
            "labels": _padded(rows, "labels", -100),
        }
        if "sequence_id" in rows[0]:
            batch["sequence_id"] = _padded(rows, "sequence_id", None)
        batch["attention_mask"] = _real_tokens(rows, batch["input_ids"].shape[1])
        return batch
    lengths = {len(tokens_of(r)) for r in rows}
    if len(lengths) != 1:
        raise ValueError(
            f"pretraining rows of different lengths {sorted(lengths)} in one batch: the data was"
            " prepared with different max_seq_len values"
        )
    ids = torch.from_numpy(np.stack([tokens_of(r) for r in rows]))
    return {"input_ids": ids, "labels": ids.clone()}


@dataclass(frozen=True, kw_only=True)
class LoaderSettings:
    """What a loader needs beside the data: the per-rank batch and how to read."""

    batch_size: int  # per rank
    shuffle: bool
    seed: int
    num_workers: int = 0
    drop_last: bool = True  # training: every step sees a whole batch; evaluation: False


def build_loader(data: DataConfig, settings: LoaderSettings):
    """A `StreamingDataLoader` over the mix in `data` (its sources checked to exist first)."""
    from streaming import StreamingDataLoader, StreamingDataset

    epoch_size = None
    if data.epoch_size is not None:
        epoch_size = parse_count(data.epoch_size, key="data.epoch_size")
    dataset = StreamingDataset(
        streams=streams_from_config(data),
        batch_size=settings.batch_size,
        shuffle=settings.shuffle,
        shuffle_seed=settings.seed,
        epoch_size=epoch_size,
        cache_dir=data.cache_dir,
    )
    return StreamingDataLoader(
        dataset,
        collate_fn=lm_collate,
        num_workers=settings.num_workers,
        drop_last=settings.drop_last,
    )
