"""`Stream`: one source of samples, and how many of its samples each epoch draws.

Several streams mix into one dataset as the MPT data table does: either every stream gives a
relative `proportion` of the epoch, or each gives an absolute amount (`repeat`, a multiple of its
size, or `choose`, a number of samples), or none gives anything (each contributes its size).
A stream drawn `k` times its size `n` takes `k // n` full passes plus `k % n` samples chosen
without replacement, anew each epoch from the seed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Stream",
    "default_cache_dir",
    "epoch_counts",
    "epoch_entries",
    "is_read_only",
    "raw_cache_dir",
]


def default_cache_dir(remote: str) -> str:
    """A per-remote cache folder under the user's cache, shared safely by concurrent jobs."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(remote.encode()).hexdigest()[:16]
    return str(base / "streaming" / digest)


def raw_cache_dir(local: str) -> str:
    """The default folder for the decompressed copies of a read-only local dataset's shards."""
    return default_cache_dir("raw-copies:" + os.path.realpath(local))


def is_read_only(folder: str) -> bool:
    """Whether the reader must not write into `folder`: this process may not write it, or its
    permission bits let nobody write it (a folder made read-only on purpose stays untouched even
    by root, whom the permission bits do not stop)."""
    try:
        mode = os.stat(folder).st_mode
    except OSError:
        return False  # it does not exist (yet): a folder the reader makes is its own
    return not os.access(folder, os.W_OK) or not mode & 0o222


@dataclass(kw_only=True)
class Stream:
    """One dataset folder (local, or remote with a local cache) and its weight in the mix.

    remote:     where the shards live (`s3://bucket/prefix`, a path), or None if `local` is the source.
    local:      the local folder: the dataset itself, or the cache for `remote` (default: a folder
                under ~/.cache/streaming named by a hash of `remote`).
    split:      a sub-folder of all three (e.g. "train").
    cache_dir:  without `remote`, where the decompressed copies of `local`'s compressed shards go
                (`raw_folder()`): default `local` itself, as mosaicml-streaming does, unless `local`
                is read-only (then a folder under ~/.cache/streaming named by `local`'s path).
                Give it for a dataset folder that others share. With `remote`, `local` is the cache.
    proportion: relative weight; all streams of a dataset use it, or none does.
    repeat:     absolute weight as a multiple of the stream's size (0.5 = half of it each epoch).
    choose:     absolute weight as a number of samples per epoch.
    validate_hash, keep_zip: this stream's own (see `StreamingDataset`); None: the dataset's.
    download_retry, download_timeout: as mosaicml-streaming's.
    storage_options: endpoint and credentials for the object store (see `streaming.storage`).
    """

    remote: str | None = None
    local: str | None = None
    split: str | None = None
    proportion: float | None = None
    repeat: float | None = None
    choose: int | None = None
    download_retry: int = 2
    download_timeout: float | None = 60.0
    validate_hash: bool | str | None = None  # None: the dataset's (see StreamingDataset)
    keep_zip: bool | None = None  # None: the dataset's
    cache_dir: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = [k for k in ("proportion", "repeat", "choose") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"a Stream takes at most one of proportion, repeat, choose; got {given}"
            )
        for key in given:
            if getattr(self, key) < 0:
                raise ValueError(f"Stream {key} must be non-negative, got {getattr(self, key)}")
        if self.download_retry < 0:
            raise ValueError(f"Stream download_retry={self.download_retry} must be >= 0")
        if self.download_timeout is not None and self.download_timeout <= 0:
            raise ValueError(
                f"Stream download_timeout={self.download_timeout} must be positive seconds "
                "(or None: no limit)"
            )
        if self.remote is None and self.local is None:
            raise ValueError("a Stream needs remote=, local=, or both")
        if self.validate_hash is not None:
            from streaming.options import parse_validate_hash

            self.validate_hash = parse_validate_hash(self.validate_hash)
        if self.cache_dir is not None and self.remote is not None:
            raise ValueError(
                f"cache_dir={self.cache_dir!r} is for a local dataset read without writing into "
                f"it; with remote={self.remote!r}, local= is the cache folder"
            )
        if self.split:
            self.remote = _join(self.remote, self.split) if self.remote else None
            self.local = _join(self.local, self.split) if self.local else None
            self.cache_dir = _join(self.cache_dir, self.split) if self.cache_dir else None
            self.split = None
        if self.local is None:
            self.local = default_cache_dir(self.remote)
        if self.remote is not None and _same_folder(self.remote, self.local):
            self.remote = None  # as mosaicml-streaming: remote == local is a local dataset, and
            # its files are never deleted (keep_zip) nor evicted (cache_limit)

    def raw_folder(self) -> str:
        """Where the decompressed copies of this stream's compressed shards are kept: `local`
        for a remote's cache, else `cache_dir`, else `local` unless it is read-only
        (`is_read_only`), else `raw_cache_dir(local)`."""
        assert self.local is not None
        if self.remote is not None:
            return self.local
        if self.cache_dir is not None:
            return self.cache_dir
        return raw_cache_dir(self.local) if is_read_only(self.local) else self.local

    @property
    def weighting(self) -> str:
        """'proportion', 'absolute' (repeat/choose) or 'none'."""
        if self.proportion is not None:
            return "proportion"
        return "absolute" if (self.repeat is not None or self.choose is not None) else "none"


def _same_folder(remote: str, local: str) -> bool:
    from streaming.storage.urls import is_remote, local_path_of

    if is_remote(remote):
        return False
    return os.path.realpath(local_path_of(remote)) == os.path.realpath(local)


def _join(base: str, part: str) -> str:
    return base.rstrip("/") + "/" + part.strip("/") if "://" in base else os.path.join(base, part)


def _round_to_total(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts proportional to `weights` that add up to `total` (largest remainder)."""
    if weights.sum() <= 0:
        raise ValueError("stream weights add up to zero: nothing to draw")
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    if short:
        counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


def epoch_counts(streams: list[Stream], sizes: list[int], epoch_size: int | None) -> np.ndarray:
    """How many samples each stream contributes to one epoch."""
    kinds = {s.weighting for s in streams}
    if "proportion" in kinds and kinds != {"proportion"}:
        raise ValueError(
            "streams mix relative and absolute weights: either every stream sets proportion, "
            "or none does (use repeat/choose, or nothing)"
        )
    sizes_arr = np.asarray(sizes, np.int64)
    if kinds == {"proportion"}:
        total = int(sizes_arr.sum()) if epoch_size is None else epoch_size
        return _round_to_total(np.array([s.proportion for s in streams], np.float64), total)
    counts = np.empty(len(streams), np.int64)
    for i, (stream, size) in enumerate(zip(streams, sizes, strict=True)):
        if stream.choose is not None:
            counts[i] = stream.choose
        elif stream.repeat is not None:
            counts[i] = round(stream.repeat * size)
        else:
            counts[i] = size
    if epoch_size is not None:
        counts = _round_to_total(counts.astype(np.float64), epoch_size)
    for i, (count, size) in enumerate(zip(counts, sizes, strict=True)):
        if count and not size:
            raise ValueError(
                f"stream {i} ({streams[i].remote or streams[i].local}) is empty but must give {count} samples"
            )
    return counts


def epoch_entries(counts: np.ndarray, sizes: list[int], seed: int, epoch: int) -> list[np.ndarray]:
    """For each stream, the sample indices (within the stream) that one epoch draws, in order."""
    out = []
    for i, (count, size) in enumerate(zip(counts, sizes, strict=True)):
        count = int(count)
        passes, extra = divmod(count, size) if size else (0, 0)
        parts = [np.tile(np.arange(size, dtype=np.int64), passes)] if passes else []
        if extra:
            rng = np.random.default_rng([seed, epoch, 7, i])
            parts.append(np.sort(rng.choice(size, extra, replace=False)).astype(np.int64))
        out.append(np.concatenate(parts) if parts else np.zeros(0, np.int64))
    return out
