"""The local shard cache folders: where raw copies go, size limits, least-recently-used eviction.

Only files the cache can make again are ever evicted: the shards of streams with a remote, and the
decompressed copies of a local dataset kept outside it (`Stream.cache_dir`, or a read-only
dataset folder, see `raw_copy_folders`); a local dataset's own files are never touched.
Several processes may share a cache folder: a shard is deleted only by unlinking a complete file,
which leaves any process that already opened or mapped it unaffected; a file another process used
or made in the last seconds is spared (it may be about to open it), and a reader that still finds
its file gone downloads it again. Recency is the file's mtime, which readers touch when they open
a shard (`CacheFiles` keeps one process's files and touches).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from streaming.errors import CacheConflictError
from streaming.stream import Stream, is_read_only

__all__ = [
    "CACHE_MARKER",
    "EVICT_GRACE_S",
    "CacheFiles",
    "cache_marker",
    "enforce_cache_limit",
    "mark_cache_folder",
    "raw_copy_folders",
    "touch",
]

log = logging.getLogger(__name__)

# A small file a reader leaves in each cache folder it uses, saying what the folder caches, so
# that `python -m streaming verify` on that folder knows absent shards are just not cached.
CACHE_MARKER = ".streaming-cache"


def mark_cache_folder(folder: str, source: str, kind: str) -> None:
    """Record in `folder` that it caches `source`: kind "remote" (the remote's index.json and
    shards) or "raw copies" (the decompressed copies of the local dataset `source`).
    Best effort: a folder that cannot be marked is still a working cache."""
    record = {"kind": kind, "source": source}
    if cache_marker(folder) == record:
        return
    from streaming.storage.stores import write_bytes_atomic

    with contextlib.suppress(OSError):
        write_bytes_atomic(os.path.join(folder, CACHE_MARKER), json.dumps(record).encode())


def cache_marker(folder: str) -> dict[str, Any] | None:
    """What `mark_cache_folder` recorded in `folder`, or None (not known to be a cache)."""
    try:
        with open(os.path.join(folder, CACHE_MARKER), "rb") as file:
            record = json.loads(file.read())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"kind", "source"} <= set(record) else None


def touch(path: str) -> None:
    """Mark a cached file as just used (for LRU eviction); missing files are ignored."""
    try:
        os.utime(path)
    except OSError:
        pass


def enforce_cache_limit(
    paths: Iterable[str],
    limit: int,
    keep: set[str],
    *,
    own: dict[str, float] | None = None,
    grace_s: float = 0.0,
) -> list[str]:
    """Delete the least recently used of `paths` until their total size is at most `limit`.

    `keep` (paths in use now) are never deleted. With `own` ({path: the mtime this process left
    it with}), a path that another process used or made within the last `grace_s` seconds (its
    mtime is newer than ours, or it is not ours) is spared too: that process may have just fetched
    it and not opened it yet. Returns the deleted paths.
    """
    fresh_after = time.time() - grace_s
    present = []
    for path in paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        present.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in present)
    deleted = []
    for mtime, size, path in sorted(present):
        if total <= limit:
            break
        others = own is not None and mtime > own.get(path, float("-inf"))
        if path in keep or (others and mtime > fresh_after):
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        total -= size
        deleted.append(path)
    return deleted


# A file another process on the node fetched or used this recently is not evicted: it may be
# between its fetch and its open (a reader that still finds it gone fetches it again).
EVICT_GRACE_S = 5.0


class CacheFiles:
    """The files of cache folders that one process's `cache_limit` holds, by folder, and the
    mtime this process left each with (its touch on open, or its own download): a later mtime
    means another process used or made the file since, so it is spared for `EVICT_GRACE_S`.
    """

    def __init__(self, folders: Iterable[Iterable[str]]) -> None:
        self.folders = [sorted(paths) for paths in folders]
        self.paths = frozenset(path for paths in self.folders for path in paths)
        self.touched: dict[str, float] = {}

    def touch(self, path: str) -> None:
        """Mark a cached file as just used; any other file (a local dataset's own) is never
        written to, not even its mtime."""
        if path not in self.paths:
            return
        touch(path)
        with contextlib.suppress(OSError):
            self.touched[path] = os.stat(path).st_mtime

    def evict(self, limit: int, keep: set[str]) -> None:
        """Hold each folder to `limit` bytes (`enforce_cache_limit`), sparing `keep` and the
        files other processes used or made in the last `EVICT_GRACE_S` seconds."""
        for paths in self.folders:
            enforce_cache_limit(paths, limit, keep, own=self.touched, grace_s=EVICT_GRACE_S)

    def __getstate__(self) -> dict[str, Any]:
        return {"folders": self.folders}  # what this process touched means nothing elsewhere

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folders"])


def raw_copy_folders(streams: Sequence[Stream]) -> list[str | None]:
    """For each stream (of each shard), the folder its raw copies go to (`Stream.raw_folder`),
    made and marked as a cache when it is not the dataset's own; None where no folder can take
    them. Two datasets never share a folder (their shards have the same names)."""
    folders: dict[int, str | None] = {}
    sources: dict[str, str] = {}  # folder -> the dataset whose copies it holds
    out = []
    for stream in streams:
        if id(stream) not in folders:
            folder = folders[id(stream)] = _raw_copy_folder(stream)
            source = stream.source or stream.folder
            assert source is not None
            if folder is not None and sources.setdefault(folder, source) != source:
                raise CacheConflictError(
                    f"the streams of {sources[folder]} and {source} would keep their shards in "
                    f"one folder, {folder}; give each its own local= (or cache_dir=)"
                )
        out.append(folders[id(stream)])
    return out


def _raw_copy_folder(stream: Stream) -> str | None:
    folder = stream.raw_folder()
    if folder == stream.folder:
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
            stream.folder,
            folder,
        )
        return None
    mark_cache_folder(folder, os.path.realpath(stream.folder), "raw copies")
    return folder
