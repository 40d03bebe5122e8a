"""What mosaicml-streaming's `StreamingDataset` lets a user do to its shards and its epoch
beyond iterating, as plain functions (the dataset's methods of the same names call them):
prepare a shard now, evict one or the least recently used one from the cache, the cache's size,
and an epoch's draw of samples before shuffling (`resample_streams`).

Eviction deletes only files the cache made (a remote stream's downloads and raw copies, a local
dataset's raw copies kept outside it), never a dataset's own; a shard evicted is fetched or
decompressed again when it is next read.

`DatasetMembers` gives `StreamingDataset` these as its methods and properties (it is one of the
dataset's base classes), with mosaicml-streaming's other names for what the dataset knows
(`size`, `length`, `initial_physical_nodes`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import numpy as np

from streaming.format import INDEX_NAME, ShardInfo
from streaming.mixing import epoch_entries
from streaming.plan import PlanConfig, entry_spans
from streaming.shardcache import ShardCache

__all__ = [
    "DatasetMembers",
    "cache_usage",
    "coldest_shard",
    "evict_shard",
    "prepare_shard",
    "resample_streams",
]


def prepare_shard(cache: ShardCache, shard_id: int, blocking: bool = True) -> None:
    """Fetch, check and decompress shard `shard_id` (and open it); `blocking=False` starts that
    in the background instead of waiting."""
    if not 0 <= shard_id < len(cache.shards):
        raise IndexError(f"shard {shard_id} out of range for a dataset of {len(cache.shards)}")
    if blocking:
        cache.get(shard_id)
    else:
        cache.prefetch(shard_id)


def evict_shard(cache: ShardCache, shard_id: int) -> int:
    """Close the shard here and delete its cached files; the bytes freed."""
    if not 0 <= shard_id < len(cache.shards):
        raise IndexError(f"shard {shard_id} out of range for a dataset of {len(cache.shards)}")
    cache.drop(shard_id)
    freed = 0
    for path in cache.cached_files(shard_id):
        with contextlib.suppress(FileNotFoundError):
            size = os.path.getsize(path)
            os.remove(path)
            freed += size
    return freed


def _last_used(cache: ShardCache, shard_id: int) -> float | None:
    times = []
    for path in cache.cached_files(shard_id):
        with contextlib.suppress(FileNotFoundError):
            times.append(os.stat(path).st_mtime)
    return max(times) if times else None


def coldest_shard(cache: ShardCache) -> int:
    """The shard whose cached files were used least recently (readers touch them on open)."""
    used = [(t, i) for i in range(len(cache.shards)) if (t := _last_used(cache, i)) is not None]
    if not used:
        raise ValueError(
            "no shard has cached files to evict (a local dataset's own files are never evicted)"
        )
    return min(used)[1]


def cache_usage(cache: ShardCache) -> int:
    """Bytes of the cached files present, remote streams' index.json files included."""
    paths = {path for i in range(len(cache.shards)) for path in cache.cached_files(i)}
    paths |= {os.path.join(s.folder, INDEX_NAME) for s, _ in cache.shards if s.source is not None}
    total = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            total += os.path.getsize(path)
    return total


def resample_streams(
    shard_sizes: Sequence[np.ndarray],
    counts: np.ndarray,
    plan: PlanConfig,
    epoch: int,
    stream_id: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(units, sample ids) of an epoch's draw before shuffling, as mosaicml-streaming's
    `resample_streams` returns them: the global ids drawn from each stream (all, or only
    `stream_id`'s) in stream order, and the lengths of their runs from one shard."""
    drawn = epoch_entries(
        counts,
        shard_sizes,
        plan.shuffle_seed,
        epoch,
        sampling_method=plan.sampling_method,
        sampling_granularity=plan.sampling_granularity,
    )
    offsets = np.cumsum([0] + [int(np.sum(s)) for s in shard_sizes])
    chosen = range(len(drawn)) if stream_id is None else [stream_id]
    ids = [drawn[i] + offsets[i] for i in chosen]
    spans = [entry_spans(drawn[i], np.cumsum(shard_sizes[i]), 0) for i in chosen]
    units = [s[:, 1] - s[:, 0] for s in spans]
    empty = np.zeros(0, np.int64)
    return (
        np.concatenate(units).astype(np.int64) if units else empty,
        np.concatenate(ids).astype(np.int64) if ids else empty,
    )


class DatasetMembers:
    """mosaicml-streaming's members of `StreamingDataset` beyond iterating, through the functions
    above. A base class of `StreamingDataset`, whose state they read (declared here)."""

    num_samples: int
    _cache: ShardCache
    _shards: list[tuple[int, ShardInfo]]
    _shard_sizes: list[np.ndarray]
    _counts: np.ndarray
    _plan: PlanConfig
    _initial_nodes: int

    @property
    def shards(self) -> list[ShardInfo]:
        """Each shard's index entry (samples, files, columns), in stream order. mosaicml-streaming
        gives its shard readers here; read samples through the dataset (`get_item`)."""
        return [info for _, info in self._shards]

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        """Fetch, check and decompress a shard now (`blocking=False`: in the background)."""
        prepare_shard(self._cache, shard_id, blocking)

    def evict_shard(self, shard_id: int) -> None:
        """Delete a shard's cached files (never a local dataset's own: see the module docstring)."""
        evict_shard(self._cache, shard_id)

    def evict_coldest_shard(self) -> None:
        """Evict the shard used least recently; ValueError if no shard has cached files."""
        evict_shard(self._cache, coldest_shard(self._cache))

    @property
    def cache_usage(self) -> int:
        """Bytes of cached shard files and remote index.json files now on disk."""
        return cache_usage(self._cache)

    def resample_streams(
        self, epoch: int, stream_id: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(runs from one shard, sample ids) drawn for `epoch` before shuffling."""
        return resample_streams(self._shard_sizes, self._counts, self._plan, epoch, stream_id)

    @property
    def size(self) -> int:
        """Samples in the streams (mosaicml-streaming's name for `num_samples`)."""
        return self.num_samples

    @property
    def initial_physical_nodes(self) -> int:
        """Nodes of the run's first start (mosaicml-streaming's; kept in `state_dict`)."""
        return self._initial_nodes

    @property
    def length(self) -> int:
        """mosaicml-streaming's name for `len(dataset)`."""
        return len(self)
