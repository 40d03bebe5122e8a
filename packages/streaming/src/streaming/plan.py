"""One epoch's sample sequence: mixing of streams, shuffling, and canonical-node interleaving.

`epoch_sequence` is a pure function of the dataset's shard sizes, the stream weights, the seed,
the epoch, the number of canonical nodes and the interleave chunk: every rank and worker computes
the same sequence and reads its own part of it (`streaming.partition`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streaming.mixing import SAMPLING_METHODS, epoch_entries
from streaming.partition import interleave_canonical
from streaming.shuffle import SHUFFLES, no_shuffle

__all__ = ["PlanConfig", "entry_spans", "epoch_sequence"]


@dataclass(frozen=True, kw_only=True)
class PlanConfig:
    """What decides an epoch's sequence (and nothing about how the work is split)."""

    num_canonical_nodes: int
    chunk: int  # max(1, global batch // canonical nodes): see streaming.partition
    shuffle: bool = False
    shuffle_algo: str = "py1e"
    shuffle_seed: int = 9176
    shuffle_block_size: int = 1 << 18
    sampling_method: str = "balanced"  # "fixed": the same extra samples every epoch
    sampling_granularity: int = 1  # extra samples drawn this many at a time from one shard

    def __post_init__(self) -> None:
        if self.sampling_method not in SAMPLING_METHODS:
            raise ValueError(
                f"sampling_method={self.sampling_method!r} is not one of {SAMPLING_METHODS}"
            )
        if not (isinstance(self.sampling_granularity, int) and self.sampling_granularity > 0):
            raise ValueError(
                f"sampling_granularity={self.sampling_granularity!r} must be a positive integer"
            )
        if self.shuffle and self.shuffle_algo not in SHUFFLES:
            raise ValueError(
                f"unknown shuffle_algo {self.shuffle_algo!r}; choose from {sorted(SHUFFLES)}"
            )
        if self.num_canonical_nodes < 1 or self.chunk < 1 or self.shuffle_block_size < 1:
            raise ValueError(
                f"num_canonical_nodes, chunk and shuffle_block_size must be positive: {self}"
            )


def entry_spans(local_ids: np.ndarray, shard_ends: np.ndarray, offset: int) -> np.ndarray:
    """(begin, end) epoch positions of each run of entries from one shard, in one pass.

    `local_ids` are one stream's drawn sample indices (sorted within each pass), `shard_ends` the
    cumulative sample counts of its shards, `offset` the epoch position of its first entry.
    """
    if len(local_ids) == 0:
        return np.zeros((0, 2), np.int64)
    shard = np.searchsorted(shard_ends, local_ids, side="right")
    breaks = np.flatnonzero((np.diff(shard) != 0) | (np.diff(local_ids) <= 0)) + 1
    begins = np.concatenate([[0], breaks]) + offset
    ends = np.concatenate([breaks, [len(local_ids)]]) + offset
    return np.stack([begins, ends], axis=1)


def epoch_sequence(
    shard_sizes: list[np.ndarray], counts: np.ndarray, config: PlanConfig, epoch: int
) -> np.ndarray:
    """Global sample ids (streams concatenated in order) of one epoch, in reading order."""
    sizes = [int(s.sum()) for s in shard_sizes]
    per_stream = epoch_entries(
        counts,
        shard_sizes,
        config.shuffle_seed,
        epoch,
        sampling_method=config.sampling_method,
        sampling_granularity=config.sampling_granularity,
    )
    stream_offsets = np.concatenate([[0], np.cumsum(sizes)])
    entries, spans, position = [], [], 0
    for ids, sizes_of_shards, offset in zip(per_stream, shard_sizes, stream_offsets, strict=False):
        entries.append(ids + offset)
        spans.append(entry_spans(ids, np.cumsum(sizes_of_shards), position))
        position += len(ids)
    flat_entries = np.concatenate(entries) if entries else np.zeros(0, np.int64)
    all_spans = np.concatenate(spans) if spans else np.zeros((0, 2), np.int64)
    algo = SHUFFLES[config.shuffle_algo] if config.shuffle else no_shuffle
    order = algo(
        all_spans, config.num_canonical_nodes, config.shuffle_seed, epoch, config.shuffle_block_size
    )
    return flat_entries[interleave_canonical(order, config.num_canonical_nodes, config.chunk)]
