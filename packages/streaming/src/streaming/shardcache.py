"""One process's view of a dataset's shards: fetched, decompressed, checked and opened on demand,
and prepared ahead of need by a few background threads.

Getting shard s (in the reader's thread, or ahead of time in a pool thread):

    raw file present (decompressed earlier, by any process)  -> open it (samples read with pread)
    stored file missing                                      -> download it, once per node
    stored file uncompressed                                 -> open it (hashes checked once)
    stored file compressed                                   -> once per node, under a lock:
        decompress in memory, check hashes, hand the shard to readers at once, then write the raw
        file beside it (atomically) so that every later open on the node skips decompression

Readers never wait for the raw file to be written, only for the decompression, and preparing
several shards at once uses every core (zstandard and file I/O release the GIL). Evicted or
superseded shards are dropped, not closed, so a reader still holding one keeps a valid shard.

A process forked from one using the cache (a dataloader worker) keeps the shards open in files
or memory and drops everything the parent's threads were still working on (see `_after_fork`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import multiprocessing.util
import os
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from streaming.cache import enforce_cache_limit, touch
from streaming.compression import decompress_stream
from streaming.errors import RemoteNotFoundError, ShardCorruptError, ShardTruncatedError
from streaming.format import ShardInfo
from streaming.shard import GrowingRaw, Shard, verify_hashes
from streaming.stream import Stream

__all__ = ["ShardCache"]

log = logging.getLogger(__name__)
_PAGE = mmap.PAGESIZE

# Raw files still being written when the process exits (the reader had what it needed from the
# shard in memory): exit waits for them, so the node's cache ends up holding them whole and no
# temp file is left behind. One that outlasts the wait dies with the process; the next process
# that makes that file removes its temp file (storage.produce_once).
EXIT_WAIT_S = 60.0
# A file another process on the node fetched or used this recently is not evicted: it may be
# between its fetch and its open (a reader that still finds it gone fetches it again).
EVICT_GRACE_S = 5.0
_filling: set[threading.Thread] = set()
_filling_lock = threading.Lock()
_exit_hook_pid: int | None = None


def _track_fill(thread: threading.Thread) -> None:
    """Start `thread` (a raw-file fill) and have this process's exit wait for it."""
    global _exit_hook_pid
    with _filling_lock:
        if _exit_hook_pid != os.getpid():  # first fill here, or in a forked child
            _filling.clear()  # a parent's threads do not run in a child
            # multiprocessing's exit runs this in the main process (atexit) and in its workers
            # (which skip atexit); a forked child starts with the registry cleared.
            multiprocessing.util.Finalize(None, finish_fills, exitpriority=100)
            _exit_hook_pid = os.getpid()
        _filling.add(thread)
    thread.start()


def _untrack_fill() -> None:
    with _filling_lock:
        _filling.discard(threading.current_thread())


def finish_fills(timeout: float | None = None) -> int:
    """Wait up to `timeout` seconds (default `EXIT_WAIT_S`) for the raw files this process is
    still writing; returns how many are still running. Called at exit."""
    deadline = time.monotonic() + (EXIT_WAIT_S if timeout is None else timeout)
    with _filling_lock:
        threads = list(_filling)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = sum(thread.is_alive() for thread in threads)
    if left:
        log.warning(
            "streaming: %d shard decompression(s) still running at exit; their temp files are "
            "removed by the next process that prepares those shards",
            left,
        )
    return left


# Every ShardCache of this process, for the fork handler below.
_caches: weakref.WeakSet[ShardCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """In a forked child, which has only the thread that forked: reset the state that the
    parent's other threads held or were about to finish."""
    global _filling_lock
    _filling_lock = threading.Lock()  # a fill thread may have held it at the fork
    for cache in list(_caches):
        cache._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Pending:
    """A shard being prepared: readers wait on it until it is published or fails."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.shard: Shard | None = None
        self.error: BaseException | None = None
        self.waiting = 0  # readers blocked until it is published (decompression priority)

    def wait(self) -> Shard:
        if not self.event.is_set():
            self.waiting += 1
            try:
                self.event.wait()
            finally:
                self.waiting -= 1
        if self.error is not None:
            raise self.error
        assert self.shard is not None
        return self.shard


class _Gate:
    """Lets at most `slots` decompressions run a piece at once: first a shard a reader is waiting
    for, then the parts of shards that upcoming reads need, then the rest, each in the order the
    shards were asked for. Pieces are small (a few hundred KB), so a reader's shard gets the CPU
    within a few milliseconds, and the first batch waits only for the prefixes of its shards that
    hold its samples, not for whole shards. A release hands its slot straight to the best waiter
    (no thundering herd of waiters re-ranking the queue).
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.busy = 0
        self.queue: list[tuple[int, Callable[[], int], threading.Event]] = []
        self.lock = threading.Lock()

    def _dispatch(self) -> None:  # with self.lock held
        while self.busy < self.slots and self.queue:
            best = min(self.queue, key=lambda e: (e[1](), e[0]))
            self.queue.remove(best)
            self.busy += 1
            best[2].set()

    def acquire(self, order: int, urgent: Callable[[], int]) -> None:
        """Wait for a slot; `urgent()` ranks the caller (lower first), then `order`."""
        with self.lock:
            if self.busy < self.slots and not self.queue:
                self.busy += 1
                return
            admitted = threading.Event()
            self.queue.append((order, urgent, admitted))
        while not admitted.wait(0.05):  # also re-rank now and then: readers start waiting
            with self.lock:
                self._dispatch()

    def release(self) -> None:
        with self.lock:
            self.busy -= 1
            self._dispatch()

    def pause(self, order: int, urgent: Callable[[], int]) -> None:
        """Between pieces: keep the slot unless a waiter ranks before the caller."""
        with self.lock:
            if not self.queue or min((e[1](), e[0]) for e in self.queue) > (urgent(), order):
                return
            self.busy -= 1
            self._dispatch()
        self.acquire(order, urgent)


class ShardCache:
    """The shards of one dataset, in one process (see the module docstring)."""

    def __init__(
        self,
        shards: Sequence[tuple[Stream, ShardInfo]],
        *,
        validate_hash: bool,
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
        self._lock = threading.Lock()
        self._open: OrderedDict[int, Shard] = OrderedDict()
        self._pending: dict[int, _Pending] = {}
        self._verified: set[int] = set()
        # path -> the mtime this process left it with (its touch on open, or its own download):
        # a later mtime means another process used or re-made the file since (see _evict)
        self._touched: dict[str, float] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = -1
        self._gate = _Gate(os.cpu_count() or 1)
        self._order = itertools.count()
        self._need: dict[int, float] = {}  # shard -> fraction upcoming reads need (see prefetch)
        _caches.add(self)

    def __getstate__(self) -> dict:
        # A copy in another process (a dataloader worker) starts with nothing open or pending.
        state = self.__dict__.copy()
        for key in ("_lock", "_open", "_pending", "_pool", "_verified", "_gate", "_order", "_need"):
            del state[key]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._open, self._pending, self._verified = OrderedDict(), {}, set()
        self._touched = {}
        self._pool, self._pool_pid = None, -1
        self._gate, self._order, self._need = _Gate(os.cpu_count() or 1), itertools.count(), {}
        _caches.add(self)

    def _after_fork(self) -> None:
        """Start over in a forked child with what needs none of the parent's threads.

        A shard published while its raw file is still being written, a shard being prepared,
        the lock and the gate's slots all depend on threads the child does not have: a reader
        would wait on them forever. Shards backed by a whole file or by memory stay open (the
        descriptors and pages are the child's too); a dropped shard is prepared again on demand,
        which waits on the node lock for the parent's raw file instead of decompressing twice.
        """
        self._lock = threading.Lock()
        self._open = OrderedDict((i, s) for i, s in self._open.items() if not s.is_growing)
        self._pending, self._need = {}, {}
        self._pool, self._pool_pid = None, -1
        self._gate, self._order = _Gate(os.cpu_count() or 1), itertools.count()

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

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._open.clear()
        if pool is not None and self._pool_pid == os.getpid():
            pool.shutdown(wait=False, cancel_futures=True)

    # -- internals ----------------------------------------------------------------------------
    def _claim(self, shard_id: int) -> tuple[_Pending, bool]:
        pending = self._pending.get(shard_id)
        if pending is not None:
            return pending, False
        pending = self._pending[shard_id] = _Pending()
        return pending, True

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_pid != os.getpid():  # none yet, or forked since
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="streaming-shards")
            self._pool_pid = os.getpid()
        return self._pool

    def _publish(self, shard_id: int, shard: Shard, pending: _Pending | None) -> None:
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

    def _prepare(self, shard_id: int, pending: _Pending) -> None:
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

    def _paths(self, shard_id: int) -> tuple[Stream, ShardInfo, str, str]:
        stream, info = self.shards[shard_id]
        return (
            stream,
            info,
            os.path.join(stream.local, info.raw_data.basename),
            os.path.join(stream.local, info.basename),
        )

    def _make_ready(self, shard_id: int, pending: _Pending, attempts: int = 8) -> None:
        """Open (fetching and decompressing first if need be) shard `shard_id`. Another process
        on the node may evict a remote stream's file between our finding or fetching it and our
        opening it (streaming.cache): then it is fetched again, a few times at most."""
        stream, info = self.shards[shard_id]
        for attempt in range(1, attempts + 1):
            try:
                return self._make_ready_once(shard_id, pending)
            except FileNotFoundError as err:
                gone_from_remote = isinstance(err, RemoteNotFoundError)
                if stream.remote is None or gone_from_remote or pending.event.is_set():
                    raise
                if attempt == attempts:
                    raise FileNotFoundError(
                        f"shard {info.basename} was evicted from {stream.local} {attempts} times"
                        " before it could be opened: the cache_limit of the processes sharing"
                        f" that folder ({self.cache_limit} bytes here) is too small for the"
                        " shards the node's workers and ranks use at once; raise it"
                    ) from err
                log.info(
                    "shard %s was evicted from %s before it was opened; fetching it again",
                    info.basename, stream.local,
                )  # fmt: skip
                time.sleep(0.01 * attempt)  # let the other process's eviction finish

    def _make_ready_once(self, shard_id: int, pending: _Pending) -> None:
        stream, info, raw_path, stored_path = self._paths(shard_id)
        compressed = info.zip_data is not None
        if compressed and os.path.exists(raw_path):
            return self._open_file(shard_id, raw_path, pending, verify=False)
        if not os.path.exists(stored_path):
            if stream.remote is None:
                raise FileNotFoundError(
                    f"shard {info.basename} of {stream.local} is missing: {stored_path}"
                )
            from streaming.storage import download

            download(
                f"{stream.remote.rstrip('/')}/{info.basename}",
                stored_path,
                retries=stream.download_retry,
                timeout=stream.download_timeout,
                **stream.storage_options,
            )
            self._touch(stored_path)  # fresh to others' eviction (a copy may keep an old mtime)
            self._evict(keep={stored_path})
        if not compressed:
            verify = self.validate_hash and shard_id not in self._verified
            return self._open_file(shard_id, stored_path, pending, verify=verify)
        if not os.access(stream.local, os.W_OK):  # read-only dataset folder: decompress in memory
            return self._publish(shard_id, self._decompress(stored_path, info), pending)

        self._decompress_once(shard_id, pending, stored_path, raw_path)

    def _decompress_once(
        self, shard_id: int, pending: _Pending, stored_path: str, raw_path: str
    ) -> None:
        """Decompress a shard once per node into its raw file, letting readers in as it grows.

        A filler thread takes the node lock for the raw file and, if no process made the file
        yet, checks the compressed file's hashes and decompresses it chunk by chunk into the
        raw file's temporary name (a `GrowingRaw`), over which this shard is published at once:
        each read waits only for the bytes it needs. Decompressions share the CPU through the
        gate, readers' shards first. Once complete, the file is renamed into place and the
        shard swapped over to it.
        """
        from streaming.storage import produce_once

        stream, info = self.shards[shard_id]
        handoff: queue.Queue = queue.Queue()

        def make(tmp: str) -> None:
            order = next(self._order)
            raw = GrowingRaw(tmp, info.raw_data.bytes)

            def urgent() -> int:  # 0: a reader waits; 1: upcoming reads need more; 2: no hurry
                if raw.waiting or pending.waiting:
                    return 0
                return 1 if raw.filled < self._need.get(shard_id, 1.0) * raw.size else 2

            self._gate.acquire(order, urgent)
            try:
                with open(stored_path, "rb") as f:  # mapped: hashed and read without copies
                    size = os.fstat(f.fileno()).st_size
                    if size != info.zip_data.bytes:
                        raise ShardTruncatedError(
                            f"{stored_path}: shard is {size} bytes, index.json expects {info.zip_data.bytes}"
                        )
                    zipped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
                try:
                    # Only the raw file's hashes to check: readers wait for the whole shard
                    # (its bytes may not be served before they are checked).
                    late = self.validate_hash and not info.zip_data.hashes and info.raw_data.hashes
                    if self.validate_hash and info.zip_data.hashes:
                        verify_hashes(zipped, info.zip_data, where=stored_path)
                    if not late:
                        handoff.put(raw)  # checked: readers may start on the prefix

                    def write(
                        chunk: memoryview,
                    ) -> None:  # between chunks, a more urgent shard may run
                        raw.append(chunk)
                        self._gate.pause(order, urgent)

                    def drop(upto: int) -> None:  # input already decompressed leaves our RSS
                        if isinstance(zipped, mmap.mmap) and upto >= _PAGE:
                            zipped.madvise(mmap.MADV_DONTNEED, 0, upto - upto % _PAGE)

                    try:
                        size = decompress_stream(info.compression, zipped, write, drop)
                    except (ModuleNotFoundError, ShardCorruptError):
                        raise
                    except Exception as err:  # each codec raises its own error type
                        raise ShardCorruptError(
                            f"{stored_path}: cannot decompress with {info.compression}: {err}"
                        ) from err
                finally:
                    if isinstance(zipped, mmap.mmap):
                        zipped.close()
                if size != raw.size:
                    raise ShardCorruptError(
                        f"{stored_path}: decompresses to {size} bytes, index.json expects {raw.size}"
                    )
                if late:
                    verify_hashes(raw.whole(), info.raw_data, where=stored_path)
                    handoff.put(raw)
            except BaseException as err:
                raw.fail(err)
                raise
            finally:
                self._gate.release()
            raw.sync()  # outside the gate: waiting on the disk must not hold up decompression

        def fill() -> None:
            try:
                produce_once(raw_path, make)
                if (
                    stream.remote is not None and not self.keep_zip
                ):  # the raw file replaces the download
                    try:
                        os.unlink(stored_path)
                    except FileNotFoundError:
                        pass
                handoff.put(None)  # unless make() ran, readers open the file another process made
                self._evict(keep={raw_path})
                if pending.event.is_set():  # swap the in-memory shard for the shared raw file
                    self._open_file(shard_id, raw_path, None, verify=False)
            except BaseException as err:
                handoff.put(err)
            finally:
                _untrack_fill()

        _track_fill(threading.Thread(target=fill, daemon=True, name="streaming-decompress"))
        got = handoff.get()
        if isinstance(got, BaseException):
            raise got
        if got is None:
            return self._open_file(shard_id, raw_path, pending, verify=False)
        shard = Shard.growing(got, info, where=stored_path, allow_pickle=self.allow_pickle)
        self._publish(shard_id, shard, pending)

    def _decompress(self, stored_path: str, info: ShardInfo) -> Shard:
        with open(stored_path, "rb") as f:
            data = f.read()
        return Shard.from_bytes(
            data, info, where=stored_path, verify=self.validate_hash, allow_pickle=self.allow_pickle
        )

    def _open_file(
        self, shard_id: int, path: str, pending: _Pending | None, *, verify: bool
    ) -> None:
        shard = Shard.open(
            path, self.shards[shard_id][1], verify=verify, allow_pickle=self.allow_pickle
        )
        self._verified.add(shard_id)
        self._touch(path)
        self._publish(shard_id, shard, pending)

    def _touch(self, path: str) -> None:
        touch(path)
        with contextlib.suppress(OSError):
            self._touched[path] = os.stat(path).st_mtime

    def _evict(self, keep: set[str]) -> None:
        """Hold each remote stream's cache folder to `cache_limit`, sparing `keep` (the file just
        produced) and the files of shards being prepared, which are yet to be opened.

        Open shards are not spared: they read through their own descriptor, which outlives the
        file's name (as in other processes, see streaming.cache), so a reader never notices. The
        disk space of such a file is freed once its shard is dropped from the open shards.
        """
        if self.cache_limit is None:
            return
        with self._lock:
            pending = list(self._pending)
        for shard_id in pending:
            keep |= set(self._paths(shard_id)[2:])
        by_stream: dict[str, set[str]] = {}
        for shard_id, (stream, _) in enumerate(self.shards):
            if stream.remote is not None:
                by_stream.setdefault(stream.local, set()).update(self._paths(shard_id)[2:])
        for paths in by_stream.values():  # others' fresh files: maybe fetched, not yet opened
            enforce_cache_limit(
                sorted(paths), self.cache_limit, keep, own=self._touched, grace_s=EVICT_GRACE_S
            )
