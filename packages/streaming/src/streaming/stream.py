"""`Stream`: one source of samples (a local folder, or a remote and its local cache) and its
weight in a mix: a relative `proportion` of the epoch, or an absolute `repeat` (a multiple of
its size) or `choose` (a number of samples); how weights become each epoch's samples is
`streaming.mixing`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Stream",
    "dataset_streams",
    "default_cache_dir",
    "is_read_only",
    "raw_cache_dir",
    "with_defaults",
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
    split:      a sub-folder of all three (e.g. "train"), kept as given ("" for none) as in
                mosaicml-streaming: `folder` and `source` are what is read.
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
    _folder: str = field(init=False, repr=False, compare=False, default="")
    _source: str | None = field(init=False, repr=False, compare=False, default=None)

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
        self.split = self.split or ""  # as mosaicml-streaming keeps it
        if self.local is None:
            assert self.remote is not None
            self.local = default_cache_dir(self.remote)
        # What is read: the split's folders. remote == local is a local dataset (as in
        # mosaicml-streaming), whose files are never deleted (keep_zip) nor evicted (cache_limit).
        self._folder = _join(self.local, self.split) if self.split else self.local
        source = _join(self.remote, self.split) if self.remote and self.split else self.remote
        self._source = None if source is None or _same_folder(source, self._folder) else source

    @property
    def folder(self) -> str:
        """The local folder read: `local`, or its `split` sub-folder."""
        return self._folder

    @property
    def source(self) -> str | None:
        """The remote read (`remote`, or its `split` sub-folder), None for a local dataset."""
        return self._source

    @property
    def safe_keep_zip(self) -> bool:
        """Whether compressed files stay: `keep_zip`, or a local dataset's own files."""
        return bool(self.keep_zip) or self.source is None

    def raw_folder(self) -> str:
        """Where the decompressed copies of this stream's compressed shards are kept: `folder`
        for a remote's cache, else `cache_dir` (its `split` sub-folder), else `folder` unless it
        is read-only (`is_read_only`), else `raw_cache_dir(folder)`."""
        if self.source is not None:
            return self.folder
        if self.cache_dir is not None:
            return _join(self.cache_dir, self.split) if self.split else self.cache_dir
        return raw_cache_dir(self.folder) if is_read_only(self.folder) else self.folder


def _same_folder(remote: str, local: str) -> bool:
    from streaming.storage.urls import is_remote, local_path_of

    if is_remote(remote):
        return False
    return os.path.realpath(local_path_of(remote)) == os.path.realpath(local)


def _join(base: str, part: str) -> str:
    return base.rstrip("/") + "/" + part.strip("/") if "://" in base else os.path.join(base, part)


def with_defaults(
    stream: Stream, *, split: str | None, validate_hash: bool | str, keep_zip: bool
) -> Stream:
    """A copy of `stream` whose unset split / validate_hash / keep_zip are the dataset's (as
    mosaicml-streaming applies them, to its Streams themselves)."""
    return dataclasses.replace(
        stream,
        split=stream.split or split,
        validate_hash=validate_hash if stream.validate_hash is None else stream.validate_hash,
        keep_zip=keep_zip if stream.keep_zip is None else stream.keep_zip,
    )


def dataset_streams(
    streams: Sequence[Stream] | None,
    *,
    remote: str | None,
    local: str | None,
    split: str | None,
    cache_dir: str | None,
    download_retry: int,
    download_timeout: float | None,
    storage_options: dict[str, Any] | None,
) -> list[Stream]:
    """A dataset's streams: `streams`, or the one stream `remote=`/`local=` describe (checked)."""
    if streams and (remote or local):
        raise ValueError("give either streams=[...] or remote=/local=, not both")
    if streams and cache_dir is not None:
        raise ValueError(
            "cache_dir= goes with a single local=; with streams=[...], give each Stream its own"
        )
    if streams:
        return list(streams)
    if remote is None and local is None:
        raise ValueError("StreamingDataset needs streams=[Stream(...)] or remote= and/or local=")
    stream = Stream(
        remote=remote,
        local=local,
        split=split,
        download_retry=download_retry,
        download_timeout=download_timeout,
        cache_dir=cache_dir,
        storage_options=dict(storage_options or {}),
    )
    return [stream]
