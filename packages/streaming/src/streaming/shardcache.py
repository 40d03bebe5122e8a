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
        (`_RawFill`), so that every later open on the node skips decompression

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
from dataclasses import dataclass
from enum import IntEnum

from streaming.cache import enforce_cache_limit, mark_cache_folder, touch
from streaming.errors import RemoteNotFoundError, ShardCorruptError
from streaming.format import ShardInfo
from streaming.rawcopy import (
    Trust,
    check_raw_copy,
    new_kept_hasher,
    save_kept_hash,
    source_stamp,
)
from streaming.shard import (
    GrowingRaw,
    Shard,
    check_size,
    decompress_checked,
    selected_hashes,
    verify_hashes,
)
from streaming.storage.download import discard, file_identity, produce_once
from streaming.stream import Stream, is_read_only

__all__ = ["FillStart", "ShardCache", "Urgency", "finish_fills"]

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


class Urgency(IntEnum):
    """How soon a shard being decompressed is needed; the gate runs the lowest first."""

    READER_WAITING = 0  # a reader is blocked on it
    NEEDED_SOON = 1  # upcoming reads need more of it than has been decompressed
    NO_HURRY = 2


@dataclass(frozen=True)
class FillStart:
    """How a raw-copy fill began, as the thread preparing the shard learns it (`_RawFill.start`).

    raw:   this process is decompressing into this growing file: readers may start on it;
    error: the fill failed before readers could start;
    neither: the raw copy exists (another process made it meanwhile): open it.
    """

    raw: GrowingRaw | None = None
    error: BaseException | None = None


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
    shards were asked for (`Urgency`, then order). Pieces are small (a few hundred KB), so a
    reader's shard gets the CPU within a few milliseconds, and the first batch waits only for the
    prefixes of its shards that hold its samples, not for whole shards. A release hands its slot
    straight to the best waiter (no thundering herd of waiters re-ranking the queue).
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.busy = 0
        self.queue: list[tuple[int, Callable[[], Urgency], threading.Event]] = []
        self.lock = threading.Lock()

    def _dispatch(self) -> None:  # with self.lock held
        while self.busy < self.slots and self.queue:
            best = min(self.queue, key=lambda e: (e[1](), e[0]))
            self.queue.remove(best)
            self.busy += 1
            best[2].set()

    def acquire(self, order: int, urgency: Callable[[], Urgency]) -> None:
        """Wait for a slot; `urgency()` ranks the caller (lower first), then `order`."""
        with self.lock:
            if self.busy < self.slots and not self.queue:
                self.busy += 1
                return
            admitted = threading.Event()
            self.queue.append((order, urgency, admitted))
        while not admitted.wait(0.05):  # also re-rank now and then: readers start waiting
            with self.lock:
                self._dispatch()

    def release(self) -> None:
        with self.lock:
            self.busy -= 1
            self._dispatch()

    def pause(self, order: int, urgency: Callable[[], Urgency]) -> None:
        """Between pieces: keep the slot unless a waiter ranks before the caller."""
        with self.lock:
            if not self.queue or min((e[1](), e[0]) for e in self.queue) > (urgency(), order):
                return
            self.busy -= 1
            self._dispatch()
        self.acquire(order, urgency)


class _RawFill:
    """Makes one compressed shard's raw copy, once per node, in a thread of its own.

    The thread takes the node lock for the copy (`produce_once`) and, if no process made it yet,
    checks the compressed file (its size, and the digests `validate_hash` selects) and
    decompresses it piece by piece into the copy's temporary name, a `GrowingRaw` handed to the
    preparing thread at once so that readers start on its prefix (only once it is whole and
    checked when no digest of the compressed file vouched for it). Pieces share the CPU through
    the gate. The digest of what was written is kept beside the copy (`streaming.rawcopy`) before it
    is renamed into place. Then a remote stream's download goes (unless `keep_zip`), the cache
    is held to its limit, and a shard published over the growing file moves to the finished one.
    The exit of the process waits for the thread (`finish_fills`).
    """

    def __init__(self, cache: ShardCache, shard_id: int, pending: _Pending) -> None:
        self.cache, self.shard_id, self.pending = cache, shard_id, pending
        self.stream, self.info, raw_path, self.stored_path = cache._paths(shard_id)
        assert raw_path is not None and self.info.zip_data is not None
        self.raw_path = raw_path
        self.validate = cache._validate(self.stream)
        self.order = next(cache._order)
        self.raw: GrowingRaw | None = None
        self.zipped: mmap.mmap | bytes = b""
        self.started: queue.Queue[FillStart] = queue.Queue()

    def start(self) -> FillStart:
        """Start the thread; return once readers may start (or the fill failed)."""
        _track_fill(threading.Thread(target=self._run, daemon=True, name="streaming-decompress"))
        return self.started.get()

    def urgency(self) -> Urgency:
        raw = self.raw
        if self.pending.waiting or (raw is not None and raw.waiting):
            return Urgency.READER_WAITING
        needed = self.cache._need.get(self.shard_id, 1.0)
        if raw is None or raw.filled < needed * raw.size:
            return Urgency.NEEDED_SOON
        return Urgency.NO_HURRY

    def _run(self) -> None:
        try:
            produce_once(self.raw_path, self._make)
            if self.stream.remote is not None and not self.cache._keep_zip(self.stream):
                with contextlib.suppress(FileNotFoundError):  # the raw copy replaces the download
                    os.unlink(self.stored_path)
            self.started.put(FillStart())  # unless _make ran: the copy another process made
            self.cache._evict(keep={self.raw_path})
            if self.raw is not None and self.pending.event.is_set():
                # this fill published the growing file: move the shard to the finished copy
                self.cache._open_file(self.shard_id, self.raw_path, None, verify=False)
        except BaseException as err:
            self.started.put(FillStart(error=err))
        finally:
            _untrack_fill()

    def _make(self, tmp: str) -> None:
        raw = self.raw = GrowingRaw(tmp, self.info.raw_data.bytes, new_kept_hasher())
        self.cache._gate.acquire(self.order, self.urgency)
        try:
            source = self._decompress(raw)
        except BaseException as err:
            raw.fail(err)
            raise
        finally:
            self.cache._gate.release()
        raw.sync()  # outside the gate: waiting on the disk must not hold up decompression
        save_kept_hash(self.raw_path, self.info, raw.hasher.hexdigest(), source)

    def _decompress(self, raw: GrowingRaw) -> dict[str, int] | None:
        """Check and decompress the stored file into `raw`; returns the local source's stamp."""
        info, where, validate = self.info, self.stored_path, self.validate
        assert info.zip_data is not None
        with open(where, "rb") as file:  # mapped: hashed and read without copies
            st = os.fstat(file.fileno())
            check_size(st.st_size, info.zip_data, where)
            self.zipped = (
                mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if st.st_size else b""
            )
        try:
            verify_hashes(self.zipped, info.zip_data, where=where, validate=validate)
            # Unless a digest vouched for the compressed bytes, readers wait for the whole shard:
            # the raw digests, the codec's checksum and the size are checked before any sample
            # is served (with validate_hash off, they start on the prefix regardless).
            late = bool(validate) and not selected_hashes(info.zip_data, validate)
            if not late:
                self.started.put(FillStart(raw=raw))  # checked: readers may start on the prefix
            decompress_checked(info, self.zipped, self._write, where=where, consumed=self._drop)
        finally:
            if isinstance(self.zipped, mmap.mmap):
                # A codec error's traceback may still hold a view of the map: then it is
                # unmapped once that error is gone.
                with contextlib.suppress(BufferError):
                    self.zipped.close()
        if late:
            if selected_hashes(info.raw_data, validate):
                verify_hashes(raw.whole(), info.raw_data, where=where, validate=validate)
            self.started.put(FillStart(raw=raw))
        return source_stamp(st) if self.stream.remote is None else None

    def _write(self, chunk: memoryview) -> None:
        assert self.raw is not None
        self.raw.append(chunk)
        self.cache._gate.pause(self.order, self.urgency)  # a more urgent shard may run now

    def _drop(self, upto: int) -> None:
        """Input already decompressed leaves this process's memory."""
        if isinstance(self.zipped, mmap.mmap) and upto >= _PAGE:
            self.zipped.madvise(mmap.MADV_DONTNEED, 0, upto - upto % _PAGE)


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
        self._raw_dirs = _raw_folders(self.shards)
        self._cached_files = self._files_the_cache_may_evict()
        self._cached = frozenset(path for paths in self._cached_files for path in paths)
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
        del state["_cached"]  # made again from _cached_files
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cached = frozenset(path for paths in self._cached_files for path in paths)
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
    def _validate(self, stream: Stream) -> bool | str:
        return self.validate_hash if stream.validate_hash is None else stream.validate_hash

    def _keep_zip(self, stream: Stream) -> bool:
        return self.keep_zip if stream.keep_zip is None else stream.keep_zip

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

    def _paths(self, shard_id: int) -> tuple[Stream, ShardInfo, str | None, str]:
        """(stream, info, raw copy path or None, stored file path) of a shard. The raw copy path
        is None for an uncompressed shard, and for a compressed one that has no folder to keep
        it in (decompressed in memory)."""
        stream, info = self.shards[shard_id]
        raw_dir = self._raw_dirs[shard_id]
        raw_path = None
        if info.zip_data is not None and raw_dir is not None:
            raw_path = os.path.join(raw_dir, info.raw_data.basename)
        return stream, info, raw_path, os.path.join(stream.local, info.basename)

    def _make_ready(self, shard_id: int, pending: _Pending, attempts: int = 8) -> None:
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
                        f"{err} (also after fetching it again from {stream.remote})"
                    ) from err
                if not self._discard_damaged_download(shard_id, pending, err):
                    raise
                refetched = True
        return self._make_ready_once(shard_id, pending)  # the fetch after the last try's damage

    def _retry_after_eviction(
        self, shard_id: int, pending: _Pending, err: FileNotFoundError, last: bool
    ) -> None:
        """Raise `err` unless the file may have been evicted by another process (then return)."""
        stream, info = self.shards[shard_id]
        gone_from_remote = isinstance(err, RemoteNotFoundError)
        if stream.remote is None or gone_from_remote or pending.event.is_set():
            raise err
        if last:
            raise FileNotFoundError(
                f"shard {info.basename} was evicted from {stream.local} several times before it "
                f"could be opened: the cache_limit of the processes sharing that folder "
                f"({self.cache_limit} bytes here) is too small for the shards the node's workers "
                "and ranks use at once; raise it"
            ) from err
        log.info("shard %s was evicted from %s before it was opened; fetching it again",
                 info.basename, stream.local)  # fmt: skip

    def _discard_damaged_download(
        self, shard_id: int, pending: _Pending, err: ShardCorruptError
    ) -> bool:
        """A remote stream's cached shard file is damaged: remove it so that it is fetched again.
        False (nothing done) for a local dataset, or once readers were served from the shard."""
        stream, info, _, stored_path = self._paths(shard_id)
        if stream.remote is None or pending.event.is_set():
            return False
        log.warning("shard %s in the cache %s is damaged (%s); fetching it again from %s",
                    info.basename, stream.local, err, stream.remote)  # fmt: skip
        discard(stored_path, file_identity(stored_path))
        return True

    def _make_ready_once(self, shard_id: int, pending: _Pending) -> None:
        stream, info, raw_path, stored_path = self._paths(shard_id)
        if raw_path is not None and self._open_raw_copy(shard_id, pending):
            return None
        if not os.path.exists(stored_path):
            if stream.remote is None:
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
        assert stream.remote is not None
        download(
            f"{stream.remote.rstrip('/')}/{info.basename}",
            stored_path,
            retries=stream.download_retry,
            timeout=stream.download_timeout,
            **stream.storage_options,
        )
        self._touch(stored_path)  # fresh to others' eviction (a copy may keep an old mtime)
        self._evict(keep={stored_path})

    def _open_raw_copy(self, shard_id: int, pending: _Pending) -> bool:
        """Open the raw copy made earlier (by any process), checked at this process's first open
        (`streaming.rawcopy`). False if there is none, or if it was set aside to be made again:
        it is damaged, or nothing vouches for it and the compressed file is at hand."""
        stream, info, raw_path, stored_path = self._paths(shard_id)
        assert raw_path is not None
        identity = file_identity(raw_path)
        if identity is None:
            return False
        validate = self._validate(stream)
        can_remake = stream.remote is not None or os.path.exists(stored_path)
        try:
            shard = Shard.open(raw_path, info, verify=False, allow_pickle=self.allow_pickle)
            trust = Trust.INDEX  # checked by this process already
            if shard_id not in self._verified:
                source = stored_path if stream.remote is None else None
                trust = check_raw_copy(raw_path, info, validate, source)
        except ShardCorruptError as err:
            if not can_remake:
                raise type(err)(f"{err}; no compressed file to make it again from") from err
            log.warning("%s; making it again", err)
            discard(raw_path, identity)
            return False
        if trust is Trust.NONE and validate and os.path.exists(stored_path):
            log.info("nothing vouches for %s (no digest kept or recorded); making it again from %s",
                     raw_path, stored_path)  # fmt: skip
            shard.close()
            discard(raw_path, identity)
            return False
        self._verified.add(shard_id)
        self._touch(raw_path)
        self._publish(shard_id, shard, pending)
        return True

    def _open_only_raw_copy(self, shard_id: int, pending: _Pending) -> None:
        """A local dataset without the stored file: a raw copy in the dataset folder (which
        mosaicml-streaming may leave there) is all there is; else the shard is missing."""
        stream, info, raw_path, stored_path = self._paths(shard_id)
        local_raw = os.path.join(stream.local, info.raw_data.basename)
        if info.zip_data is None or local_raw == raw_path or not os.path.exists(local_raw):
            raise FileNotFoundError(
                f"shard {info.basename} of {stream.local} is missing: {stored_path}"
            )
        shard = Shard.open(local_raw, info, verify=False, allow_pickle=self.allow_pickle)
        if shard_id not in self._verified:
            check_raw_copy(local_raw, info, self._validate(stream))
        self._verified.add(shard_id)
        self._publish(shard_id, shard, pending)

    def _decompress_once(self, shard_id: int, pending: _Pending) -> None:
        """Decompress a shard once per node into its raw copy, letting readers in as it grows
        (see `_RawFill`). A copy another process made meanwhile is checked like any other."""
        _, info, raw_path, stored_path = self._paths(shard_id)
        for _ in range(2):  # a copy that fails its check is set aside: make it once more
            started = _RawFill(self, shard_id, pending).start()
            if started.error is not None:
                raise started.error
            if started.raw is not None:
                shard = Shard.growing(started.raw, info, where=stored_path, allow_pickle=self.allow_pickle)  # fmt: skip
                return self._publish(shard_id, shard, pending)
            if self._open_raw_copy(shard_id, pending):
                return None
        raise ShardCorruptError(
            f"{raw_path}: the decompressed copies made by other processes failed their checks"
        )

    def _open_file(
        self, shard_id: int, path: str, pending: _Pending | None, *, verify: bool | str
    ) -> None:
        shard = Shard.open(
            path, self.shards[shard_id][1], verify=verify, allow_pickle=self.allow_pickle
        )
        self._verified.add(shard_id)
        self._touch(path)
        self._publish(shard_id, shard, pending)

    def _files_the_cache_may_evict(self) -> list[list[str]]:
        """Per cache folder, the files `cache_limit` holds: a remote stream's downloads and raw
        copies, and the raw copies of a local dataset kept outside it. Never a local dataset's
        own files."""
        by_folder: dict[str, set[str]] = {}
        for shard_id, (stream, _) in enumerate(self.shards):
            _, _, raw_path, stored_path = self._paths(shard_id)
            if stream.remote is not None:
                by_folder.setdefault(stream.local, set()).add(stored_path)
            if raw_path is not None and (
                stream.remote is not None or self._raw_dirs[shard_id] != stream.local
            ):
                by_folder.setdefault(os.path.dirname(raw_path), set()).add(raw_path)
        return [sorted(paths) for paths in by_folder.values()]

    def _touch(self, path: str) -> None:
        if path not in self._cached:
            return  # a local dataset's own file: never written to, not even its mtime
        touch(path)
        with contextlib.suppress(OSError):
            self._touched[path] = os.stat(path).st_mtime

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
        for shard_id in pending:
            keep |= {path for path in self._paths(shard_id)[2:] if path is not None}
        for paths in self._cached_files:  # others' fresh files: maybe fetched, not yet opened
            enforce_cache_limit(
                paths, self.cache_limit, keep, own=self._touched, grace_s=EVICT_GRACE_S
            )


def _raw_folders(shards: Sequence[tuple[Stream, ShardInfo]]) -> list[str | None]:
    """For each shard, the folder its raw copy goes to (`Stream.raw_folder`), made and marked
    as a cache when it is not the dataset's own; None where no folder can take it. Two datasets
    never share a folder (their shards have the same names)."""
    folders: dict[int, str | None] = {}
    sources: dict[str, str] = {}  # folder -> the dataset whose copies it holds
    out = []
    for stream, _ in shards:
        if id(stream) not in folders:
            folder = folders[id(stream)] = _raw_folder(stream)
            source = stream.remote or stream.local
            assert source is not None
            if folder is not None and sources.setdefault(folder, source) != source:
                raise ValueError(
                    f"the streams of {sources[folder]} and {source} would keep their shards in "
                    f"one folder, {folder}; give each its own local= (or cache_dir=)"
                )
        out.append(folders[id(stream)])
    return out


def _raw_folder(stream: Stream) -> str | None:
    folder = stream.raw_folder()
    if folder == stream.local:
        return folder
    try:
        os.makedirs(folder, exist_ok=True)
        writable = not is_read_only(folder)
    except OSError:
        writable = False
    if not writable:
        log.warning(
            "streaming: cannot keep decompressed shards of %s in %s; every process decompresses "
            "the shards it reads in memory (give a writable cache_dir)",
            stream.local,
            folder,
        )
        return None
    mark_cache_folder(folder, os.path.realpath(stream.local), "raw copies")
    return folder
