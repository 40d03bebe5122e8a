"""One dataloader worker's pass over a `StreamingDataset`: which samples it reads, in order, and
reading them with their shards asked for ahead of need.

    positions = this rank's and worker's slice of [start, padded end)   # streaming.partition
    ids       = sequence[positions % len(sequence)]                     # global sample ids
    for i, sample id in enumerate(ids):
        ask the cache for the shards of samples up to i + window, each as deep into its shard
        as those samples go (window: one batch at first, growing to `predownload` samples)
        yield the sample

Worker 0 makes each pass's first batch with the whole machine (the other workers wait for it,
`PassCounter.wait_first_batch`) and says when that batch is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.iteration import PassCounter
from streaming.partition import padded_end, rank_worker_positions
from streaming.shardcache import ShardCache
from streaming.world import World

__all__ = ["PassReads", "pass_reads", "read_pass"]


@dataclass(frozen=True, kw_only=True)
class PassReads:
    """A worker's samples in one pass, in reading order: their global ids, each one's shard, and
    how far into its shard each lies (a fraction of the shard, to prefetch just what is needed)."""

    ids: np.ndarray
    shard_of: np.ndarray
    depth: np.ndarray


def pass_reads(
    sequence: np.ndarray,
    start: int,
    shard_ends: np.ndarray,
    *,
    batch_size: int,
    num_canonical_nodes: int,
    world: World,
) -> PassReads:
    """The samples this process's worker reads of an epoch's `sequence`, from position `start`
    (`shard_ends`: the cumulative samples per shard)."""
    positions = rank_worker_positions(
        start=start,
        end=padded_end(len(sequence), num_canonical_nodes, world.num_ranks, start),
        global_batch=batch_size * world.num_ranks,
        rank=world.rank,
        num_ranks=world.num_ranks,
        worker=world.worker,
        num_workers=world.num_workers,
    )
    ids = sequence[positions % len(sequence)] if len(sequence) else positions
    shard_of = np.searchsorted(shard_ends, ids, side="right")
    starts = np.concatenate([[0], shard_ends[:-1]])
    depth = (ids - starts[shard_of] + 1) / (shard_ends[shard_of] - starts[shard_of])
    return PassReads(ids=ids, shard_of=shard_of, depth=depth)


def read_pass(
    reads: PassReads,
    *,
    get_item: Callable[[int], dict[str, Any]],
    cache: ShardCache,
    batch_size: int,
    predownload: int,
    passes: PassCounter,
    first_batch_of: int | None,
) -> Iterator[dict[str, Any]]:
    """The samples of `reads`, each shard asked of `cache` ahead of them; `first_batch_of`: the
    pass whose first batch this worker makes (worker 0), told to `passes` once it is done."""
    ids, shard_of, depth = reads.ids, reads.shard_of, reads.depth
    ahead = 0  # samples [i, ahead) have had their shards asked for in advance
    asked: dict[int, float] = {}
    for i, sample_id in enumerate(ids):
        if i == batch_size and first_batch_of is not None:
            passes.first_batch_done(first_batch_of)
        # The window grows from one batch to `predownload` samples, so that the first batch
        # is not held up by work for later ones.
        window = min(predownload, max(batch_size, i))
        while ahead < len(ids) and ahead <= i + window:
            shard_id, need = int(shard_of[ahead]), float(depth[ahead])
            if need > asked.get(shard_id, 0.0):
                asked[shard_id] = need
                cache.prefetch(shard_id, need)
            ahead += 1
        yield get_item(sample_id)
