"""Who uses a remote stream's cache folder now, so that two datasets never cache two different
remotes in one `local` folder: their shards have the same names (`shard.00000.mds`), so one would
read the other's samples.

A dataset claims each remote stream's folder when it is made (`claim_cache_folder`), before it
fetches `index.json` there, and holds a shared `flock` on `.streaming-cache.use.lock` for as long as
it lives (its dataloader workers are its children and read under its claim). Any number of live
datasets of one remote share a folder, in any process of the node. A folder recorded as the cache
of another remote (`streaming.cache.mark_cache_folder`) is:

- refused with `CacheConflictError` (a ValueError, as mosaicml-streaming's "Reused local
  directory") while a dataset of that remote holds it, in this process or another;
- taken over when none does: the files the old `index.json` lists (and their decompressed
  copies and digests) are deleted first, so none of the old dataset's shards is served as the
  new one's, then the folder is recorded as the new remote's.

The check runs under an exclusive `flock` on `.streaming-cache.setup.lock`, so ranks of one job that
start together on a folder left by another remote agree: the first takes it over, the others
find it theirs. Locks are released by the kernel when a process ends, so a crash leaves nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import weakref

from streaming.cache import cache_marker, mark_cache_folder
from streaming.errors import CacheConflictError
from streaming.format import INDEX_NAME

__all__ = ["CacheClaim", "claim_cache_folder"]

SETUP_LOCK = ".streaming-cache.setup.lock"
USE_LOCK = ".streaming-cache.use.lock"


def _source(remote: str) -> str:
    return remote.rstrip("/")


class CacheClaim:
    """A shared lock on a cache folder held by one dataset; released when it is closed or
    garbage-collected, and never carried to a copy in another process (a dataloader worker
    reads under its parent's claim)."""

    def __init__(self, folder: str, fd: int | None) -> None:
        self.folder = folder
        self._fd = fd
        self._finalizer = weakref.finalize(self, _close, fd) if fd is not None else None

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def __getstate__(self) -> dict:
        return {"folder": self.folder}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], None)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _old_files(folder: str) -> list[str]:
    """The files the folder's index.json (of the remote it cached before) lists: each shard's
    stored and raw file and the digest kept beside a raw copy."""
    try:
        with open(os.path.join(folder, INDEX_NAME), "rb") as file:
            shards = json.loads(file.read()).get("shards", [])
    except (OSError, ValueError, AttributeError):
        return []
    names = []
    for shard in shards if isinstance(shards, list) else []:
        for key in ("raw_data", "zip_data"):
            info = shard.get(key) if isinstance(shard, dict) else None
            name = info.get("basename") if isinstance(info, dict) else None
            if isinstance(name, str) and name and os.path.basename(name) == name:
                names += [name, f".{name}.kept"]
    return names


def claim_cache_folder(folder: str, remote: str) -> CacheClaim:
    """Claim `folder` as the cache of `remote` for a dataset's lifetime (see the module
    docstring); raises `CacheConflictError` if a live dataset caches another remote there."""
    os.makedirs(folder, exist_ok=True)
    setup = os.open(os.path.join(folder, SETUP_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    use = os.open(os.path.join(folder, USE_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(setup, fcntl.LOCK_EX)
        record = cache_marker(folder)
        old = record["source"] if record and record.get("kind") == "remote" else None
        if old is not None and _source(old) != _source(remote):
            try:
                fcntl.flock(use, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CacheConflictError(
                    f"local folder {folder} is the cache of {old} for a dataset in use (in this "
                    f"or another process); a stream of {remote} cannot share it (their shards "
                    "have the same names): give it a local= of its own"
                ) from None
            for name in [*_old_files(folder), INDEX_NAME]:  # nobody uses them: take it over
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(folder, name))
        mark_cache_folder(folder, remote, "remote")
        fcntl.flock(use, fcntl.LOCK_SH)  # (from exclusive, after a take-over)
    except BaseException:
        os.close(use)
        raise
    finally:
        os.close(setup)  # releases the setup lock
    return CacheClaim(folder, use)
