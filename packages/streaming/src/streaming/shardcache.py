"""One process's view of a dataset's shards: fetched, decompressed, checked and opened on demand,
and prepared ahead of need by a few background threads.

Getting shard s (in the reader's thread, or ahead of time in a pool thread):

    raw copy present (decompressed earlier, by any process)  -> check it at this process's first
                                 open (streaming.rawcopy); damaged: set it aside, go on below
    stored file missing                                      -> download it, once per node
    stored file uncompressed                                 -> open it (hashes checked once)
    stored file compressed                                   -> once per node, under a lock:
        check the compressed file, decompress it into the raw copy's temporary name while
        readers start on its prefix, keep the copy's digest beside it, rename it into place
        (streaming.rawfill), so that every later open on the node skips decompression

Readers never wait for the raw file to be written, only for the decompression, and preparing
several shards at once uses every core (zstandard and file I/O release the GIL). Evicted or
superseded shards are dropped, not closed, so a reader still holding one keeps a valid shard.

Raw copies go to `Stream.raw_folder()`: a remote's cache folder, or for a local dataset the
dataset folder itself unless it is read-only or `cache_dir` is given (then that cache folder,
which `cache_limit` holds like a remote's). A shard of a remote stream whose cached file turns
out damaged (truncated, a digest differs) is fetched again, once.

A process forked from one using the cache (a dataloader worker) keeps the shards open in files
or memory and drops everything the parent's threads were still working on (see `_after_fork`).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from streaming.cache import CacheFiles, raw_copy_folders
from streaming.errors import RemoteNotFoundError, ShardCorruptError
from streaming.format import INDEX_NAME, ShardInfo
from streaming.rawcopy import Trust, check_raw_copy
from streaming.rawfill import DecompressGate, FillJob, PendingShard, RawFill, finish_fills
from streaming.shard import Shard
from streaming.storage.download import discard, file_identity
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


class ShardCache:
    """The shards of one dataset, in one process (see the module docstring).

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
    def _validate(self, stream: Stream) -> bool | str:
        return self.validate_hash if stream.validate_hash is None else stream.validate_hash

    def _keep_zip(self, stream: Stream) -> bool:
        return self.keep_zip if stream.keep_zip is None else stream.keep_zip

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

    def _paths(self, shard_id: int) -> tuple[Stream, ShardInfo, str | None, str]:
        """(stream, info, raw copy path or None, stored file path) of a shard. The raw copy path
        is None for an uncompressed shard, and for a compressed one that has no folder to keep
        it in (decompressed in memory)."""
        stream, info = self.shards[shard_id]
        raw_dir = self._raw_dirs[shard_id]
        raw_path = None
        if info.zip_data is not None and raw_dir is not None:
            raw_path = os.path.join(raw_dir, info.raw_data.basename)
        return stream, info, raw_path, os.path.join(stream.folder, info.basename)

    def _make_ready(self, shard_id: int, pending: PendingShard, attempts: int = 8) -> None:
        """Open (fetching and decompressing first if need be) shard `shard_id`.

        Another process on the node may evict a remote stream's file between our finding or
        fetching it and our opening it (streaming.cache): then it is fetched again, a few times
        at most. A remote stream's cached file that turns out damaged is fetched again, once.
        """
        refetched = False
        for attempt in range(1, attempts + 1):
            try:
                return self._make_ready_once(shard_id, pending)
            except FileNotFoundError as err:
                self._retry_after_eviction(shard_id, pending, err, attempt == attempts)
                time.sleep(0.01 * attempt)  # let the other process's eviction finish
            except ShardCorruptError as err:
                if refetched:
                    stream = self.shards[shard_id][0]
                    raise type(err)(
                        f"{err} (also after fetching it again from {stream.source})"
                    ) from err
                if not self._discard_damaged_download(shard_id, pending, err):
                    raise
                refetched = True
        return self._make_ready_once(shard_id, pending)  # the fetch after the last try's damage

    def _retry_after_eviction(
        self, shard_id: int, pending: PendingShard, err: FileNotFoundError, last: bool
    ) -> None:
        """Raise `err` unless the file may have been evicted by another process (then return)."""
        stream, info = self.shards[shard_id]
        gone_from_remote = isinstance(err, RemoteNotFoundError)
        if stream.source is None or gone_from_remote or pending.event.is_set():
            raise err
        if last:
            raise FileNotFoundError(
                f"shard {info.basename} was evicted from {stream.folder} several times before it "
                f"could be opened: the cache_limit of the processes sharing that folder "
                f"({self.cache_limit} bytes here) is too small for the shards the node's workers "
                "and ranks use at once; raise it"
            ) from err
        log.info(
            "shard %s was evicted from %s before it was opened; fetching it again",
            info.basename,
            stream.folder,
        )

    def _discard_damaged_download(
        self, shard_id: int, pending: PendingShard, err: ShardCorruptError
    ) -> bool:
        """A remote stream's cached shard file is damaged: remove it so that it is fetched again.
        False (nothing done) for a local dataset, or once readers were served from the shard."""
        stream, info, _, stored_path = self._paths(shard_id)
        if stream.source is None or pending.event.is_set():
            return False
        log.warning(
            "shard %s in the cache %s is damaged (%s); fetching it again from %s",
            info.basename,
            stream.folder,
            err,
            stream.source,
        )
        discard(stored_path, file_identity(stored_path))
        return True

    def _make_ready_once(self, shard_id: int, pending: PendingShard) -> None:
        stream, info, raw_path, stored_path = self._paths(shard_id)
        if raw_path is not None and self._open_raw_copy(shard_id, pending):
            return None
        if not os.path.exists(stored_path):
            if stream.source is None:
                return self._open_only_raw_copy(shard_id, pending)
            self._fetch(shard_id)
        if info.zip_data is None:
            verify = self._validate(stream) if shard_id not in self._verified else False
            return self._open_file(shard_id, stored_path, pending, verify=verify)
        if raw_path is None:  # no folder to keep a raw copy in: each process decompresses
            return self._open_file(shard_id, stored_path, pending, verify=self._validate(stream))
        return self._decompress_once(shard_id, pending)

    def _fetch(self, shard_id: int) -> None:
        from streaming.storage import download

        stream, info, _, stored_path = self._paths(shard_id)
        assert stream.source is not None
        download(
            f"{stream.source.rstrip('/')}/{info.basename}",
            stored_path,
            retries=stream.download_retry,
            timeout=stream.download_timeout,
            **stream.storage_options,
        )
        self._cache_files.touch(
            stored_path
        )  # fresh to others' eviction (a copy may keep an old mtime)
        self._evict(keep={stored_path})

    def _open_raw_copy(self, shard_id: int, pending: PendingShard) -> bool:
        """Open the raw copy made earlier (by any process), checked at this process's first open
        (`streaming.rawcopy`). False if there is none, or if it was set aside to be made again:
        it is damaged, or nothing vouches for it and the compressed file is at hand."""
        stream, info, raw_path, stored_path = self._paths(shard_id)
        assert raw_path is not None
        identity = file_identity(raw_path)
        if identity is None:
            return False
        validate = self._validate(stream)
        can_remake = stream.source is not None or os.path.exists(stored_path)
        try:
            shard = Shard.open(raw_path, info, verify=False, allow_pickle=self.allow_pickle)
            trust = Trust.INDEX  # checked by this process already
            if shard_id not in self._verified:
                source = stored_path if stream.source is None else None
                trust = check_raw_copy(raw_path, info, validate, source)
        except ShardCorruptError as err:
            if not can_remake:
                raise type(err)(f"{err}; no compressed file to make it again from") from err
            log.warning("%s; making it again", err)
            discard(raw_path, identity)
            return False
        if trust is Trust.NONE and validate and os.path.exists(stored_path):
            log.info(
                "nothing vouches for %s (no digest kept or recorded); making it again from %s",
                raw_path,
                stored_path,
            )
            shard.close()
            discard(raw_path, identity)
            return False
        self._verified.add(shard_id)
        self._cache_files.touch(raw_path)
        self._publish(shard_id, shard, pending)
        return True

    def _open_only_raw_copy(self, shard_id: int, pending: PendingShard) -> None:
        """A local dataset without the stored file: a raw copy in the dataset folder (which
        mosaicml-streaming may leave there) is all there is; else the shard is missing."""
        stream, info, raw_path, stored_path = self._paths(shard_id)
        local_raw = os.path.join(stream.folder, info.raw_data.basename)
        if info.zip_data is None or local_raw == raw_path or not os.path.exists(local_raw):
            raise FileNotFoundError(
                f"shard {info.basename} of {stream.folder} is missing: {stored_path}"
            )
        shard = Shard.open(local_raw, info, verify=False, allow_pickle=self.allow_pickle)
        if shard_id not in self._verified:
            check_raw_copy(local_raw, info, self._validate(stream))
        self._verified.add(shard_id)
        self._publish(shard_id, shard, pending)

    def _decompress_once(self, shard_id: int, pending: PendingShard) -> None:
        """Decompress a shard once per node into its raw copy, letting readers in as it grows
        (see `streaming.rawfill`). A copy another process made meanwhile is checked like any
        other."""
        stream, info, raw_path, stored_path = self._paths(shard_id)
        assert raw_path is not None
        for _ in range(2):  # a copy that fails its check is set aside: make it once more
            job = FillJob(
                shard_id=shard_id,
                info=info,
                raw_path=raw_path,
                stored_path=stored_path,
                validate=self._validate(stream),
                local=stream.source is None,
                drop_stored=stream.source is not None and not self._keep_zip(stream),
                order=next(self._order),
            )
            started = RawFill(job, pending, self._gate, self).start()
            if started.error is not None:
                raise started.error
            if started.raw is not None:
                shard = Shard.growing(
                    started.raw, info, where=stored_path, allow_pickle=self.allow_pickle
                )
                return self._publish(shard_id, shard, pending)
            if self._open_raw_copy(shard_id, pending):
                return None
        raise ShardCorruptError(
            f"{raw_path}: the decompressed copies made by other processes failed their checks"
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

    def _open_file(
        self, shard_id: int, path: str, pending: PendingShard | None, *, verify: bool | str
    ) -> None:
        shard = Shard.open(
            path, self.shards[shard_id][1], verify=verify, allow_pickle=self.allow_pickle
        )
        self._verified.add(shard_id)
        self._cache_files.touch(path)
        self._publish(shard_id, shard, pending)

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
