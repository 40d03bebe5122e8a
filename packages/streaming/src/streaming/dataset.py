"""`StreamingDataset`: samples from MDS shards on local disk or object stores, deterministically
partitioned over nodes, ranks and dataloader workers, resumable mid-epoch.

With torch installed it is a `torch.utils.data.IterableDataset`; without, it is still iterable and
indexable (`dataset[i]` is sample i of the streams concatenated in order).

One pass (epoch) in one worker (`streaming.reading`):

    epoch, start = which pass this is (shared by all workers; a resumed run starts mid-epoch)
    sequence     = epoch_sequence(...)             # same in every process: mix, shuffle, interleave
    end          = padded_end(len(sequence), canonical nodes, ranks, start)   # mosaicml's padding
    for each of this worker's batches (rank slice of global batches t with t % workers == worker):
        for position in the batch:
            yield sample sequence[position % len(sequence)]    # shards fetched once per node

`len(dataset)` is mosaicml-streaming's: ceil(epoch_size / ranks), the padding not counted.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from streaming.array import Array
from streaming.iteration import PassCounter
from streaming.layout import load_layout
from streaming.members import DatasetMembers
from streaming.mixing import epoch_counts, resolved_weights
from streaming.options import (
    check_cache_limit,
    check_mosaic_options,
    check_shuffle_algo,
    parse_epoch_size,
    parse_validate_hash,
    usage_warnings,
)
from streaming.plan import PlanConfig, epoch_sequence
from streaming.reading import pass_reads, read_pass
from streaming.resumption import make_state, read_state
from streaming.shardcache import ShardCache
from streaming.sizes import parse_bytes
from streaming.stream import Stream, dataset_streams, with_defaults
from streaming.world import World

try:
    from torch.utils.data import IterableDataset

    _BASES: tuple[type, ...] = (IterableDataset, Array)
except ImportError:  # torch is optional
    _BASES = (Array,)

__all__ = ["StreamingDataset"]

log = logging.getLogger(__name__)


class StreamingDataset(DatasetMembers, *_BASES):
    """Stream samples from one or more MDS datasets. See the module docstring for the pass;
    mosaicml-streaming's members beyond iterating (`shards`, `evict_shard`, `cache_usage`, ...)
    come from `streaming.members.DatasetMembers`.

    Give either `streams=[Stream(...), ...]` or a single `remote=`/`local=` (+ `split=`,
    `cache_dir=`: see `Stream`).
    batch_size:          per-device batch (as in mosaicml-streaming; None means 1); the global
                         batch is this times the number of ranks, and fixes the global order
                         together with the seed and `num_canonical_nodes`.
    epoch_size:          samples per epoch, an int or e.g. '1.5k' (default: what the stream
                         weights give).
    shuffle, shuffle_algo ('py1e', 'py1s', 'naive'), shuffle_seed, shuffle_block_size (default:
                         max(4,000,000 // canonical nodes, 2**18), with the checkpoint's canonical
                         nodes after `load_state_dict`).
    num_canonical_nodes: default: the number of physical nodes of the first run (kept on resume).
    cache_limit:         bytes (or '10gb', units of 1024 as in `streaming.sizes`) of shards to
                         keep per cache folder (a remote stream's, or one holding a local
                         dataset's decompressed copies).
    predownload:         samples ahead of reading whose shards are fetched and decompressed in the
                         background (default 8 x batch_size; 0 turns it off).
    validate_hash:       True (default): check every hash index.json records, when a process
                         first opens a shard (stored file, or decompressed copy); a hash
                         algorithm's name (mosaicml-streaming's meaning): check only that one;
                         None/False: no hash (sizes and layout are always checked). A Stream's own
                         validate_hash / keep_zip win over the dataset's.
    allow_pickle:        decode `pkl` columns (executes code from the data: only for trusted data);
                         `allow_unsafe_types` is mosaicml-streaming's name for it.
    keep_zip:            keep a remote stream's compressed shards after decompressing them.
    max_open_shards:     shards each process keeps open at once.
    shard_threads:       threads per process that download and decompress shards ahead of need
                         (default: up to 4).
    sampling_method:     "balanced" (default) or "fixed"; sampling_granularity: samples drawn
                         at a time from one shard (`streaming.mixing`), as mosaicml-streaming.
    replication:         consecutive ranks that read the same samples (tensor/sequence parallel).
    partition_algo, batching_method, stream_name, stream_config: mosaicml-streaming's; only
                         the values that mean what streaming does are accepted (their
                         defaults), others are refused here with what streaming does instead
                         (`streaming.options`).
    """

    def __init__(
        self,
        *,
        streams: Sequence[Stream] | None = None,
        remote: str | None = None,
        local: str | None = None,
        split: str | None = None,
        cache_dir: str | None = None,
        batch_size: int | None = 1,
        epoch_size: int | str | None = None,
        shuffle: bool = False,
        shuffle_algo: str = "py1e",
        shuffle_seed: int = 9176,
        shuffle_block_size: int | None = None,
        num_canonical_nodes: int | None = None,
        cache_limit: int | str | None = None,
        predownload: int | None = None,
        download_retry: int = 2,
        download_timeout: float | None = 60.0,
        validate_hash: bool | str | None = True,
        allow_pickle: bool = False,
        allow_unsafe_types: bool | None = None,
        keep_zip: bool = False,
        max_open_shards: int = 64,
        shard_threads: int | None = None,
        storage_options: dict[str, Any] | None = None,
        sampling_method: str = "balanced",
        sampling_granularity: int = 1,
        partition_algo: str = "relaxed",
        batching_method: str = "random",
        replication: int | None = None,
        stream_name: str = "stream",
        stream_config: dict[str, Any] | None = None,
    ) -> None:
        check_mosaic_options(
            partition_algo=partition_algo,
            batching_method=batching_method,
            stream_name=stream_name,
            stream_config=stream_config,
        )
        check_shuffle_algo(shuffle_algo)
        validate_hash = parse_validate_hash(validate_hash)
        batch_size = 1 if batch_size is None else batch_size
        if shuffle_seed < 0:
            raise ValueError(f"shuffle_seed={shuffle_seed} must be a non-negative integer")
        streams = dataset_streams(
            streams,
            remote=remote,
            local=local,
            split=split,
            cache_dir=cache_dir,
            download_retry=download_retry,
            download_timeout=download_timeout,
            storage_options=storage_options,
        )
        if batch_size < 1:
            raise ValueError(
                f"batch_size must be a positive per-device batch size, got {batch_size}"
            )
        # Each stream with the dataset's split / validate_hash / keep_zip where it sets none.
        self.streams = [
            with_defaults(s, split=split, validate_hash=validate_hash, keep_zip=keep_zip)
            for s in streams
        ]
        self.batch_size = batch_size
        self.replication = replication
        self._world()  # a replication that does not divide the world is refused here
        self.shuffle = shuffle
        # mosaicml-streaming keeps its arguments under their names
        self.sampling_method, self.sampling_granularity = sampling_method, sampling_granularity
        self.partition_algo, self.batching_method = partition_algo, batching_method
        self.shuffle_algo = shuffle_algo
        self.validate_hash = validate_hash
        self.allow_pickle = allow_pickle = bool(allow_pickle or allow_unsafe_types)
        self.allow_unsafe_types = allow_pickle
        self.max_open_shards = max(1, max_open_shards)
        self.cache_limit: int | None = None
        if cache_limit is not None:  # 0 is no limit, as in mosaicml-streaming
            self.cache_limit = parse_bytes(cache_limit, setting="cache_limit") or None
        self.predownload = 8 * batch_size if predownload is None else predownload

        layout = load_layout(self.streams, allow_pickle=allow_pickle)
        self._claims = layout.claims  # remote streams' cache folders (streaming.cacheuse)
        self._shards = list(layout.shards)
        sizes_per_stream = layout.shard_sizes_per_stream()
        self._shard_sizes = sizes_per_stream
        self._shard_ends = np.cumsum(layout.samples_per_shard).astype(np.int64)
        self.num_samples = int(self._shard_ends[-1])
        vars(self).update(layout.bookkeeping())  # num_shards, samples_per_shard, ... (mosaicml's)
        stream_sizes = [int(s.sum()) for s in sizes_per_stream]
        self._counts = epoch_counts(
            self.streams, stream_sizes, parse_epoch_size(epoch_size), shuffle_seed
        )
        self.epoch_size = int(self._counts.sum())
        # Each stream's weights as derived, filled in as mosaicml-streaming does (on our copies).
        for stream, weights in zip(
            self.streams, resolved_weights(self.streams, stream_sizes, self._counts), strict=True
        ):
            stream.proportion, stream.repeat, stream.choose = weights
        if self.cache_limit is not None:
            check_cache_limit(
                self.cache_limit,
                index_bytes=layout.cached_index_bytes,
                largest_shard=layout.largest_shard,
            )

        world = self._world()
        canonical = num_canonical_nodes or world.num_nodes
        self._plan_args = dict(
            shuffle=shuffle,
            shuffle_algo=shuffle_algo,
            shuffle_seed=shuffle_seed,
            sampling_method=sampling_method,
            sampling_granularity=sampling_granularity,
        )
        # None: derived from the canonical node count in use (see _set_plan).
        self._shuffle_block_size = shuffle_block_size
        self._set_plan(canonical, max(1, batch_size * world.num_ranks // canonical))
        self._initial_nodes = world.num_nodes  # mosaicml-streaming's initial_physical_nodes
        for message in usage_warnings(
            batch_size=batch_size,
            predownload=predownload,
            epoch_size=self.epoch_size,
            num_canonical_nodes=canonical,
            num_nodes=world.num_nodes,
            shuffle=shuffle,
            shuffle_algo=shuffle_algo,
            shuffle_block_size=self._plan.shuffle_block_size,
            max_shard_samples=max(info.samples for _, info in self._shards),
        ):
            warnings.warn(message, UserWarning, stacklevel=2)
        self._resume: tuple[int, int] = (0, 0)  # (epoch, sample in epoch) of the first pass
        self._passes = PassCounter()
        self._cache = ShardCache(
            [(self.streams[s], info) for s, info in self._shards],
            validate_hash=validate_hash,
            allow_pickle=allow_pickle,
            max_open=max_open_shards,
            cache_limit=self.cache_limit,
            keep_zip=keep_zip,
            threads=shard_threads or min(4, os.cpu_count() or 1),
        )
        self._sequence_cache: tuple[int, np.ndarray] | None = None

    def _world(self) -> World:
        """This process's world as the data sees it: with `replication`, each group of that
        many consecutive ranks reads as one (mosaicml-streaming's replication)."""
        world = World.detect()
        return world if self.replication is None else world.replicate(self.replication)

    # -- samples ------------------------------------------------------------------------------
    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, Any]:
        """Sample `sample_id` of the streams concatenated in order (its shard fetched, checked
        and opened if need be; a shard file gone from a cache is fetched again). `retry` is
        mosaicml-streaming's; here downloads retry by each stream's `download_retry`."""
        index = int(sample_id)
        if not 0 <= index < self.num_samples:
            raise IndexError(
                f"sample {sample_id} out of range for a dataset of {self.num_samples} samples"
            )
        shard_id = int(np.searchsorted(self._shard_ends, index, side="right"))
        start = int(self._shard_ends[shard_id - 1]) if shard_id else 0
        return self._cache.get(shard_id)[index - start]

    def __getitem__(self, at: Any) -> Any:
        """`dataset[i]`, `dataset[2:10]`, `dataset[[1, 5]]`, `dataset[np.array(...)]`: a sample
        or a (nested) list of samples, as mosaicml-streaming indexes (`streaming.array`)."""
        return Array.__getitem__(self, at)

    # -- the epoch's order ------------------------------------------------------------------
    def _set_plan(self, canonical: int, chunk: int) -> None:
        # The default block size depends on the number of canonical nodes, so it is derived from
        # the number in use: a run resumed with another node count takes the checkpoint's number
        # and must shuffle with the block size the checkpointed run used, or samples repeat.
        block = self._shuffle_block_size or max(4_000_000 // canonical, 1 << 18)
        self._plan = PlanConfig(
            num_canonical_nodes=canonical, chunk=chunk, shuffle_block_size=block, **self._plan_args
        )

    @property
    def num_canonical_nodes(self) -> int:
        return self._plan.num_canonical_nodes

    @property
    def shuffle_seed(self) -> int:
        return self._plan.shuffle_seed

    @property
    def shuffle_block_size(self) -> int:
        """The block size in use (derived from the canonical nodes when not given)."""
        return self._plan.shuffle_block_size

    def epoch_sequence(self, epoch: int) -> np.ndarray:
        """Global sample ids of one epoch in global reading order (the same in every process)."""
        if self._sequence_cache is None or self._sequence_cache[0] != epoch:
            self._sequence_cache = (
                epoch,
                epoch_sequence(self._shard_sizes, self._counts, self._plan, epoch),
            )
        return self._sequence_cache[1]

    def __len__(self) -> int:
        """Samples per rank and epoch as mosaicml-streaming counts them: ceil(epoch_size / ranks).

        The padding that evens out canonical nodes and ranks (`streaming.partition.padded_end`)
        is not counted, as in mosaicml-streaming."""
        return -(-self.epoch_size // self._world().num_ranks)

    # -- iteration ----------------------------------------------------------------------------
    def begin_pass(self) -> None:
        """Called by StreamingDataLoader in the main process before each pass (see iteration.py)."""
        self._passes.begin()

    def _pass_to_epoch(self, n: int) -> tuple[int, int]:
        """Epoch and starting sample of pass n of this run (pass 0 may resume mid-epoch)."""
        epoch, start = self._resume
        return (epoch, start) if n == 0 else (epoch + n, 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """This worker's samples of its pass (`streaming.reading`)."""
        world = self._world()
        n = self._passes.claim(world.worker)
        epoch, start = self._pass_to_epoch(n)
        reads = pass_reads(
            self.epoch_sequence(epoch),
            start,
            self._shard_ends,
            batch_size=self.batch_size,
            num_canonical_nodes=self.num_canonical_nodes,
            world=world,
        )
        if world.worker > 0:  # worker 0 makes the pass's first batch with the whole machine
            self._passes.wait_first_batch(n, timeout=10.0)
        try:
            yield from read_pass(
                reads,
                get_item=self.get_item,
                cache=self._cache,
                batch_size=self.batch_size,
                predownload=self.predownload,
                passes=self._passes,
                first_batch_of=n if world.worker == 0 else None,
            )
        finally:
            if world.worker == 0:
                self._passes.first_batch_done(n)

    # -- resumption ---------------------------------------------------------------------------
    def state_dict(self, num_samples: int, from_beginning: bool) -> dict[str, Any]:
        """Where the run is, as a small JSON-serializable dict (`streaming.resumption`).

        num_samples:    samples consumed by all ranks together in the current epoch;
        from_beginning: True if they count from the epoch's start, False if from where this
                        run resumed (the resumed offset is then added).
        """
        epoch, start = self._pass_to_epoch(max(self._passes.current(), 0))
        sample = (0 if from_beginning else start) + int(num_samples)
        return make_state(epoch, sample, self._plan, self._initial_nodes)

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """Resume at the position a `state_dict` recorded (possibly with other ranks/workers);
        mosaicml-streaming's state dicts are read too (the same epoch and sample, our order)."""
        state = read_state(obj)
        if state.shuffle_seed != self._plan.shuffle_seed:
            log.warning(
                "resuming with shuffle_seed %s from the checkpoint (was %s)",
                state.shuffle_seed,
                self._plan.shuffle_seed,
            )
            self._plan_args["shuffle_seed"] = state.shuffle_seed
        canonical = state.num_canonical_nodes
        global_batch = self.batch_size * self._world().num_ranks
        self._set_plan(canonical, state.interleave_chunk or max(1, global_batch // canonical))
        self._initial_nodes = state.initial_physical_nodes or self._initial_nodes
        # A checkpoint taken at the very end of an epoch resumes at the start of the next.
        at_end = state.sample_in_epoch >= self.epoch_size
        self._resume = (state.epoch + 1, 0) if at_end else (state.epoch, state.sample_in_epoch)
        self._sequence_cache = None
        self._passes.reset()
