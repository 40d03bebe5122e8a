"""The local shard cache: size limits and least-recently-used eviction.

Only files the cache can make again are ever evicted: the shards of streams with a remote, and the
decompressed copies of a local dataset kept outside it (`Stream.cache_dir`, or a read-only
dataset folder); a local dataset's own files are never touched.
Several processes may share a cache folder: a shard is deleted only by unlinking a complete file,
which leaves any process that already opened or mapped it unaffected; a file another process used
or made in the last seconds is spared (it may be about to open it), and a reader that still finds
its file gone downloads it again. Recency is the file's mtime, which readers touch when they open a shard.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from typing import Any

__all__ = [
    "CACHE_MARKER",
    "cache_marker",
    "enforce_cache_limit",
    "mark_cache_folder",
    "touch",
]

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
