"""Making the raw copy of a compressed shard: once per node, in a thread, readers starting on it.

`streaming.shardopen` makes a shard ready; when only the compressed file is there, a `RawFill`
makes the decompressed copy that every later open on the node reads (`streaming.rawcopy` says
how such a copy is trusted later). In the fill's own thread:

    take the node lock for the copy (storage.produce_once); if no process made it meanwhile:
        check the compressed file's size and the digests validate_hash selects
        decompress it piece by piece into the copy's temporary name (a GrowingRaw) and
            hand that file to the cache at once (FillStart.raw): readers start on its prefix;
            without a digest of the compressed file, only once it is whole and checked
        keep the digest of what was written beside the copy, rename the copy into place
    drop a remote's download (unless keep_zip), tell the cache (FillHost.copy_made)

Decompressions share the CPU through a `DecompressGate`: a piece at a time, a shard a reader is
waiting for first (`Urgency`). A process's exit waits for the fills it started (`finish_fills`),
so that the node's cache holds their copies whole and no temporary file is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import multiprocessing.util
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from streaming.format import ShardInfo
from streaming.rawcopy import new_kept_hasher, save_kept_hash, source_stamp
from streaming.shard import (
    GrowingRaw,
    Shard,
    check_size,
    decompress_checked,
    selected_hashes,
    verify_hashes,
)
from streaming.storage.download import produce_once

__all__ = [
    "EXIT_WAIT_S",
    "DecompressGate",
    "FillHost",
    "FillJob",
    "FillStart",
    "PendingShard",
    "RawFill",
    "Urgency",
    "finish_fills",
]

log = logging.getLogger(__name__)
_PAGE = mmap.PAGESIZE

# Raw files still being written when the process exits (the reader had what it needed from the
# shard in memory): exit waits for them, so the node's cache ends up holding them whole and no
# temp file is left behind. One that outlasts the wait dies with the process; the next process
# that makes that file removes its temp file (storage.produce_once).
EXIT_WAIT_S = 60.0
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


def _after_fork_in_child() -> None:
    """A forked child has only the thread that forked: a fill thread may have held the lock."""
    global _filling_lock
    _filling_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Urgency(IntEnum):
    """How soon a shard being decompressed is needed; the gate runs the lowest first."""

    READER_WAITING = 0  # a reader is blocked on it
    NEEDED_SOON = 1  # upcoming reads need more of it than has been decompressed
    NO_HURRY = 2


@dataclass(frozen=True)
class FillStart:
    """How a raw-copy fill began, as the thread preparing the shard learns it (`RawFill.start`).

    raw:   this process is decompressing into this growing file: readers may start on it;
    error: the fill failed before readers could start;
    neither: the raw copy exists (another process made it meanwhile): open it.
    """

    raw: GrowingRaw | None = None
    error: BaseException | None = None


class PendingShard:
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


class DecompressGate:
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


@dataclass(frozen=True)
class FillJob:
    """One raw copy to make: of compressed shard `shard_id`, from its stored file."""

    shard_id: int
    info: ShardInfo
    raw_path: str  # where the copy lands (written under a temporary name first)
    stored_path: str  # the compressed file
    validate: bool | str  # the digests of the compressed file to check (`validate_hash`)
    local: bool  # a local dataset's file: the copy records its size and mtime (`source_stamp`)
    drop_stored: bool  # a remote's download, not kept (keep_zip off): removed once the copy is in
    order: int  # when the shard was asked for: ranks it in the gate after its urgency


class FillHost(Protocol):
    """What a fill asks of the cache it works for (`streaming.shardcache.ShardCache`)."""

    def needed(self, shard_id: int) -> float:
        """The fraction of the shard (from its start) that upcoming reads use."""
        ...

    def copy_made(self, job: FillJob, pending: PendingShard, *, grew: bool) -> None:
        """The raw copy is in place: hold the cache to its limit. `grew`: this fill wrote it,
        so a shard published over the growing file (`pending` is set) moves to the copy."""
        ...


class RawFill:
    """Makes one compressed shard's raw copy, once per node, in a thread of its own (see the
    module docstring). `pending` is the shard the cache is preparing, which readers wait on."""

    def __init__(
        self, job: FillJob, pending: PendingShard, gate: DecompressGate, host: FillHost
    ) -> None:
        assert job.info.zip_data is not None
        self.job, self.pending, self.gate, self.host = job, pending, gate, host
        self.raw: GrowingRaw | None = None
        self.zipped: mmap.mmap | bytes = b""
        self.started: queue.Queue[FillStart] = queue.Queue()

    def start(self) -> FillStart:
        """Start the thread; return once readers may start (or the fill failed)."""
        thread = threading.Thread(target=self._run, daemon=True, name="streaming-decompress")
        _track_fill(thread)
        return self.started.get()

    def urgency(self) -> Urgency:
        raw = self.raw
        if self.pending.waiting or (raw is not None and raw.waiting):
            return Urgency.READER_WAITING
        needed = self.host.needed(self.job.shard_id)
        if raw is None or raw.filled < needed * raw.size:
            return Urgency.NEEDED_SOON
        return Urgency.NO_HURRY

    def _run(self) -> None:
        job = self.job
        try:
            produce_once(job.raw_path, self._make)
            if job.drop_stored:
                with contextlib.suppress(FileNotFoundError):  # the raw copy replaces the download
                    os.unlink(job.stored_path)
            self.started.put(FillStart())  # unless _make ran: the copy another process made
            self.host.copy_made(job, self.pending, grew=self.raw is not None)
        except BaseException as err:
            self.started.put(FillStart(error=err))
        finally:
            _untrack_fill()

    def _make(self, tmp: str) -> None:
        info = self.job.info
        raw = self.raw = GrowingRaw(tmp, info.raw_data.bytes, new_kept_hasher())
        self.gate.acquire(self.job.order, self.urgency)
        try:
            source = self._decompress(raw)
        except BaseException as err:
            raw.fail(err)
            raise
        finally:
            self.gate.release()
        raw.sync()  # outside the gate: waiting on the disk must not hold up decompression
        save_kept_hash(self.job.raw_path, info, raw.hasher.hexdigest(), source)

    def _decompress(self, raw: GrowingRaw) -> dict[str, int] | None:
        """Check and decompress the stored file into `raw`; returns the local source's stamp."""
        info, where, validate = self.job.info, self.job.stored_path, self.job.validate
        assert info.zip_data is not None
        with open(where, "rb") as file:  # mapped: hashed and read without copies
            st = os.fstat(file.fileno())
            check_size(st.st_size, info.zip_data, where)
            if st.st_size:
                self.zipped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
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
        return source_stamp(st) if self.job.local else None

    def _write(self, chunk: memoryview) -> None:
        assert self.raw is not None
        self.raw.append(chunk)
        self.gate.pause(self.job.order, self.urgency)  # a more urgent shard may run now

    def _drop(self, upto: int) -> None:
        """Input already decompressed leaves this process's memory."""
        if isinstance(self.zipped, mmap.mmap) and upto >= _PAGE:
            self.zipped.madvise(mmap.MADV_DONTNEED, 0, upto - upto % _PAGE)
