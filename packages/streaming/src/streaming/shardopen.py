"""How one shard of a `ShardCache` is made ready to read: from its raw copy, its stored file, a
fetch, or a decompression once per node; again after another process evicts it, or once after a
damaged download. `ShardOpening` is a base class of `ShardCache`, whose state it uses.

Getting shard s (in the reader's thread, or ahead of time in a pool thread):

    raw copy present (decompressed earlier, by any process)  -> check it at this process's first
                                 open (streaming.rawcopy); damaged: set it aside, go on below
    stored file missing                                      -> download it, once per node
    stored file uncompressed                                 -> open it (hashes checked once)
    stored file compressed                                   -> once per node, under a lock:
        check the compressed file, decompress it into the raw copy's temporary name while
        readers start on its prefix, keep the copy's digest beside it, rename it into place
        (streaming.rawfill), so that every later open on the node skips decompression

Raw copies go to `Stream.raw_folder()`: a remote's cache folder, or for a local dataset the
dataset folder itself unless it is read-only or `cache_dir` is given (then that cache folder,
which `cache_limit` holds like a remote's). A shard of a remote stream whose cached file turns
out damaged (truncated, a digest differs) is fetched again, once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

from streaming.cache import CacheFiles
from streaming.errors import RemoteNotFoundError, ShardCorruptError
from streaming.format import ShardInfo
from streaming.rawcopy import Trust, check_raw_copy
from streaming.rawfill import DecompressGate, FillJob, PendingShard, RawFill
from streaming.shard import Shard
from streaming.storage.download import discard, file_identity
from streaming.stream import Stream

__all__ = ["ShardOpening"]

# The records keep the name they had when this was part of streaming.shardcache.
log = logging.getLogger("streaming.shardcache")


class ShardOpening:
    """The steps that make one shard ready (see the module docstring). The state they use is
    `ShardCache`'s, declared here; so are the two steps that are its business: publishing an
    open shard to readers (`_publish`) and holding the cache to its limit (`_evict`)."""

    shards: list[tuple[Stream, ShardInfo]]
    validate_hash: bool | str
    allow_pickle: bool
    cache_limit: int | None
    keep_zip: bool
    _raw_dirs: list[str | None]
    _cache_files: CacheFiles
    _verified: set[int]
    _gate: DecompressGate
    _order: Iterator[int]

    def _publish(self, shard_id: int, shard: Shard, pending: PendingShard | None) -> None:
        raise NotImplementedError  # ShardCache's

    def _evict(self, keep: set[str]) -> None:
        raise NotImplementedError  # ShardCache's

    def _validate(self, stream: Stream) -> bool | str:
        return self.validate_hash if stream.validate_hash is None else stream.validate_hash

    def _keep_zip(self, stream: Stream) -> bool:
        return self.keep_zip if stream.keep_zip is None else stream.keep_zip

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
        # fresh to others' eviction (a copy may keep an old mtime)
        self._cache_files.touch(stored_path)
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

    def _open_file(
        self, shard_id: int, path: str, pending: PendingShard | None, *, verify: bool | str
    ) -> None:
        shard = Shard.open(
            path, self.shards[shard_id][1], verify=verify, allow_pickle=self.allow_pickle
        )
        self._verified.add(shard_id)
        self._cache_files.touch(path)
        self._publish(shard_id, shard, pending)
