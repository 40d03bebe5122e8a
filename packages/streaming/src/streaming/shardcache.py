"""One process's view of a dataset's shards: fetched, decompressed, checked and opened on demand,
and prepared ahead of need by a few background threads.

`get(s)` returns shard s open, preparing it in the reader's thread unless a pool thread already
is (`prefetch(s, need)` starts that ahead of time); how a shard is made ready (its raw copy, the
stored file, a fetch, a decompression once per node) is `streaming.shardopen`. At most
`max_open` shards stay open per process, the least recently used dropped first; each cache
folder is held to `cache_limit` (`streaming.cache`) as files are made.

Readers never wait for the raw file to be written, only for the decompression, and preparing
several shards at once uses every core (zstandard and file I/O release the GIL). Evicted or
superseded shards are dropped, not closed, so a reader still holding one keeps a valid shard.

A process forked from one using the cache (a dataloader worker) keeps the shards open in files
or memory and drops everything the parent's threads were still working on (see `_after_fork`).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from streaming.cache import CacheFiles, raw_copy_folders
from streaming.format import INDEX_NAME, ShardInfo
from streaming.rawfill import DecompressGate, FillJob, PendingShard, finish_fills
from streaming.shard import Shard
from streaming.shardopen import ShardOpening
from streaming.stream import Stream

# finish_fills: where streaming 0.1.1 documented it (it lives in streaming.rawfill)
__all__ = ["ShardCache", "finish_fills"]

log = logging.getLogger(__name__)

# Every ShardCache of this process, for the fork handler below.
_caches: weakref.WeakSet[ShardCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """In a forked child, which has only the thread that forked: reset the state that the
    parent's other threads held or were about to finish."""
    for cache in list(_caches):
        cache._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class ShardCache(ShardOpening):
    """The shards of one dataset, in one process (see the module docstring; the steps that make
    one shard ready are `ShardOpening`'s).

    `validate_hash` and `keep_zip` apply to the shards of streams that set none themselves.
    """

    def __init__(
        self,
        shards: Sequence[tuple[Stream, ShardInfo]],
        *,
        validate_hash: bool | str,
        allow_pickle: bool,
        max_open: int,
        cache_limit: int | None,
        threads: int,
        keep_zip: bool = False,
    ) -> None:
        self.shards = list(shards)
        self.validate_hash = validate_hash
        self.allow_pickle = allow_pickle
        self.max_open = max(1, max_open)
        self.cache_limit = cache_limit
        self.keep_zip = keep_zip
        self.threads = max(1, threads)
        self._raw_dirs = raw_copy_folders([stream for stream, _ in self.shards])
        self._cache_files = CacheFiles(self._files_the_cache_may_evict())
        self._open: OrderedDict[int, Shard] = OrderedDict()
        self._verified: set[int] = set()
        self._start_threads_state()
        _caches.add(self)

    def _start_threads_state(self) -> None:
        """What this process's threads share: none of it survives a fork or a pickle."""
        self._lock = threading.Lock()
        self._pending: dict[int, PendingShard] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = -1
        self._gate = DecompressGate(os.cpu_count() or 1)
        self._order = itertools.count()
        self._need: dict[int, float] = {}  # shard -> fraction upcoming reads need (see prefetch)

    def __getstate__(self) -> dict:
        # A copy in another process (a dataloader worker) starts with nothing open or pending.
        threads = {"_lock", "_pending", "_pool", "_gate", "_order", "_need"}
        dropped = threads | {"_open", "_verified"}
        return {key: value for key, value in self.__dict__.items() if key not in dropped}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open, self._verified = OrderedDict(), set()
        self._start_threads_state()
        _caches.add(self)

    def _after_fork(self) -> None:
        """Start over in a forked child with what needs none of the parent's threads.

        A shard published while its raw file is still being written, a shard being prepared,
        the lock and the gate's slots all depend on threads the child does not have: a reader
        would wait on them forever. Shards backed by a whole file or by memory stay open (the
        descriptors and pages are the child's too); a dropped shard is prepared again on demand,
        which waits on the node lock for the parent's raw file instead of decompressing twice.
        """
        self._open = OrderedDict((i, s) for i, s in self._open.items() if not s.is_growing)
        self._start_threads_state()

    # -- public -------------------------------------------------------------------------------
    def get(self, shard_id: int) -> Shard:
        """The open shard, preparing it in this thread if nobody is preparing it yet."""
        with self._lock:
            shard = self._open.get(shard_id)
            if shard is not None:
                self._open.move_to_end(shard_id)
                return shard
            pending, mine = self._claim(shard_id)
        if mine:
            self._prepare(shard_id, pending)
        return pending.wait()

    def prefetch(self, shard_id: int, need: float = 1.0) -> None:
        """Start preparing a shard in a background thread (no-op if open or under way).

        `need` is the fraction of the shard (from its start) that upcoming reads will use: a
        shard being decompressed gets the CPU first up to that point, and the rest of it after
        the other shards' needed parts.
        """
        with self._lock:
            if need > self._need.get(shard_id, 0.0):
                self._need[shard_id] = need
            if shard_id in self._open or shard_id in self._pending:
                return
            pending, _ = self._claim(shard_id)
        self._executor().submit(self._prepare, shard_id, pending)

    def cached_files(self, shard_id: int) -> list[str]:
        """The files of a shard that this cache made and may delete (a remote stream's download
        and raw copy, a local dataset's raw copy kept outside it); never a dataset's own."""
        stream, _, raw_path, stored_path = self._paths(shard_id)
        files = [stored_path] if stream.source is not None else []
        if raw_path is not None and (
            stream.source is not None or self._raw_dirs[shard_id] != stream.folder
        ):
            files.append(raw_path)
        return files

    def drop(self, shard_id: int) -> None:
        """Close the shard in this process (it is opened again, fetched if need be, when read)."""
        with self._lock:
            self._open.pop(shard_id, None)
            self._verified.discard(shard_id)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._open.clear()
        if pool is not None and self._pool_pid == os.getpid():
            pool.shutdown(wait=False, cancel_futures=True)

    # -- internals ----------------------------------------------------------------------------
    def _claim(self, shard_id: int) -> tuple[PendingShard, bool]:
        pending = self._pending.get(shard_id)
        if pending is not None:
            return pending, False
        pending = self._pending[shard_id] = PendingShard()
        return pending, True

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_pid != os.getpid():  # none yet, or forked since
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="streaming-shards")
            self._pool_pid = os.getpid()
        return self._pool

    def _publish(self, shard_id: int, shard: Shard, pending: PendingShard | None) -> None:
        with self._lock:
            self._open[shard_id] = shard
            self._open.move_to_end(shard_id)
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)  # dropped, not closed: a reader may hold it
            if pending is not None:
                self._pending.pop(shard_id, None)
        if pending is not None:
            pending.shard = shard
            pending.event.set()

    def _prepare(self, shard_id: int, pending: PendingShard) -> None:
        try:
            self._make_ready(shard_id, pending)
        except BaseException as err:
            with self._lock:
                self._pending.pop(shard_id, None)
            if not pending.event.is_set():
                pending.error = err
                pending.event.set()
            else:  # readers already have the shard in memory; only the raw file is missing
                log.warning(
                    "could not cache shard %s as a raw file: %s",
                    self.shards[shard_id][1].basename,
                    err,
                )

    # -- what a RawFill asks of the cache (rawfill.FillHost) -----------------------------------
    def needed(self, shard_id: int) -> float:
        """The fraction of the shard (from its start) that upcoming reads use (`prefetch`)."""
        return self._need.get(shard_id, 1.0)

    def copy_made(self, job: FillJob, pending: PendingShard, *, grew: bool) -> None:
        """A fill put the raw copy in place: hold the cache to its limit, and move a shard
        published over the growing file this fill wrote to the finished copy."""
        self._evict(keep={job.raw_path})
        if grew and pending.event.is_set():
            self._open_file(job.shard_id, job.raw_path, None, verify=False)

    def _files_the_cache_may_evict(self) -> list[list[str]]:
        """Per cache folder, the files `cache_limit` holds: a remote stream's index.json (counted,
        never evicted: see `_evict`), downloads and raw copies, and the raw copies of a local
        dataset kept outside it. Never a local dataset's own files."""
        by_folder: dict[str, set[str]] = {}
        for shard_id, (stream, _) in enumerate(self.shards):
            _, _, raw_path, stored_path = self._paths(shard_id)
            if stream.source is not None:
                index = os.path.join(stream.folder, INDEX_NAME)
                by_folder.setdefault(stream.folder, set()).update((stored_path, index))
            if raw_path is not None and (
                stream.source is not None or self._raw_dirs[shard_id] != stream.folder
            ):
                by_folder.setdefault(os.path.dirname(raw_path), set()).add(raw_path)
        return [sorted(paths) for paths in by_folder.values()]

    def _evict(self, keep: set[str]) -> None:
        """Hold each cache folder to `cache_limit`, sparing `keep` (the file just produced) and
        the files of shards being prepared, which are yet to be opened.

        Open shards are not spared: they read through their own descriptor, which outlives the
        file's name (as in other processes, see streaming.cache), so a reader never notices. The
        disk space of such a file is freed once its shard is dropped from the open shards.
        """
        if self.cache_limit is None:
            return
        with self._lock:
            pending = list(self._pending)
        keep |= {os.path.join(s.folder, INDEX_NAME) for s, _ in self.shards if s.source is not None}
        for shard_id in pending:
            keep |= {path for path in self._paths(shard_id)[2:] if path is not None}
        self._cache_files.evict(self.cache_limit, keep)  # others' fresh files are spared too
