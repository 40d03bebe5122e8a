"""`MDSWriter`: write samples into MDS shards and `index.json`, as mosaicml-streaming 0.13 does.

    with MDSWriter(out="ds", columns={"tokens": "ndarray:int32", "id": "str"},
                   compression="zstd", hashes=["sha1", "xxh64"]) as writer:
        for sample in samples:
            writer.write(sample)

The pass, and the rules it keeps from mosaicml-streaming (same shards, same index bytes):

    write(sample):  check the columns, encode each value (SampleError before anything is stored)
                    if the shard would exceed size_limit with this sample: flush the shard
                    cache the encoded sample
    flush():        raw shard -> hashes of raw -> compress -> hashes of compressed
                    -> write to a temporary name, fsync, rename -> start the upload (remote)
    finish():       flush the last shard -> write index.json (atomically, last)
                    -> wait for every shard upload -> upload index.json

`size_limit` (bytes, or a string such as "64mb"; None or 0: a single shard) bounds the raw shard
size. A shard holds at least one sample, so a sample larger than the limit gets a shard of its own.
`index.json` is never written when the `with` block raised: a folder without one is not a dataset.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from typing import Any

from streaming.compression import check_compression, compress
from streaming.encodings import encode_value, get_encoding
from streaming.errors import SampleError, UnsupportedEncodingError
from streaming.format import (
    INDEX_NAME,
    MAX_OFFSET,
    FileInfo,
    ShardInfo,
    dump_index,
    encode_sample,
    encode_shard,
    encode_shard_config,
    parse_size,
    shard_basenames,
)
from streaming.hashing import check_hash_names, get_hash
from streaming.storage.stores import write_bytes_atomic

__all__ = ["MDSWriter"]

_MOSAIC_ONLY_OPTIONS = {"max_workers", "retries"}  # upload options, moot when local


def _is_remote(out: Any) -> bool:
    return isinstance(out, (tuple, list)) or (isinstance(out, str) and "://" in out)


class MDSWriter:
    """Writes an MDS dataset (format version 2) to a local folder and/or an object store.

    out:          a local folder; `"s3://bucket/prefix"` (shards are staged in a temporary folder
                  and uploaded as each is finished); or `(local, remote)` (kept in both).
    columns:      {name: encoding}, encodings as in `streaming.encodings` ("str", "ndarray:int32").
    compression:  None, "zstd", "zstd:7", "gz", "bz2", "br", "snappy" (see `streaming.compression`).
    hashes:       algorithms recorded for each shard file, sorted, e.g. ["sha1", "xxh64"].
    size_limit:   raw shard size limit in bytes or "64mb"; None or 0: one shard (default 64 MiB).
    exist_ok:     a non-empty local folder, or a remote that holds an index.json, is an error
                  unless True; then the local contents are removed and the remote index.json is
                  deleted, index.json first, so the old dataset never looks complete beside new
                  shards (a crashed rewrite leaves no index).
    keep_local:   for "s3://..." output, keep the staged local copies (a tuple always keeps them).
    progress:     print one line per finished shard to stderr (`progress_bar` is accepted too).
    **storage_options: passed to `streaming.storage.Uploader` (endpoint_url, ...) for remote output.
    """

    def __init__(
        self,
        *,
        out: str | os.PathLike[str] | tuple[str, str],
        columns: Mapping[str, str],
        compression: str | None = None,
        hashes: list[str] | None = None,
        size_limit: int | str | None = 1 << 26,
        exist_ok: bool = False,
        keep_local: bool = False,
        progress: bool = False,
        **storage_options: Any,
    ) -> None:
        if not isinstance(columns, Mapping) or not columns:
            raise ValueError(
                f"columns must be a non-empty {{name: encoding}} dict, got {columns!r}"
            )
        bad_names = [name for name in columns if not isinstance(name, str) or not name]
        if bad_names:
            raise ValueError(f"column names must be non-empty strings, got {bad_names}")
        self.columns = dict(columns)
        self.format = "mds"
        self.keep_local = keep_local
        self.column_names = sorted(columns)  # shards store columns in name order
        self.column_encodings = [columns[name] for name in self.column_names]
        bad = {}
        for name, enc in zip(self.column_names, self.column_encodings, strict=True):
            try:
                get_encoding(enc)
            except (TypeError, ValueError) as err:
                bad[name] = str(err)
        if bad:
            raise UnsupportedEncodingError(f"unsupported column encodings: {bad}")
        self._encodings = [get_encoding(enc) for enc in self.column_encodings]
        self.column_sizes = [enc.size for enc in self._encodings]
        self.compression = check_compression(compression)
        self.hashes = check_hash_names(hashes)
        self.size_limit = parse_size(size_limit)
        self.progress = bool(progress or storage_options.pop("progress_bar", False))

        self.remote: str | None = None
        self._uploader: Any = None
        if _is_remote(out):
            from streaming.storage import Uploader, parse_out  # only remote output needs it

            self.local, self.remote = parse_out(out)  # type: ignore[arg-type]
        else:
            self.local = os.fspath(out)  # type: ignore[arg-type]
        self.local = os.path.expanduser(self.local)
        # A pair's local folder is the user's copy: always kept. A bare URL stages in a temp dir.
        is_pair = isinstance(out, (tuple, list))
        self._delete_local = self.remote is not None and not is_pair and not keep_local
        if "retry" in storage_options:  # mosaicml's name for it
            storage_options["retries"] = storage_options.pop("retry")
        if self.remote is None:
            unknown = sorted(set(storage_options) - _MOSAIC_ONLY_OPTIONS)
            if unknown:
                raise ValueError(f"options {unknown} apply only to remote output, and out={out!r}")
        try:
            self._prepare_local(exist_ok)
            if self.remote is not None:  # checks the bucket and credentials now
                self._uploader = Uploader(self.remote, **storage_options)
                self._prepare_remote(exist_ok)
        except BaseException:
            self._cleanup()
            raise

        self._config = encode_shard_config(
            column_encodings=self.column_encodings,
            column_names=self.column_names,
            column_sizes=self.column_sizes,
            compression=self.compression,
            hashes=self.hashes,
            size_limit=self.size_limit,
        )
        self._shard_overhead = 4 + 4 + len(self._config)  # count, final offset, config
        self._samples: list[bytes] = []
        self._shard_size = self._shard_overhead
        self._shards: list[ShardInfo] = []
        self._state = "open"

    # ---- set-up --------------------------------------------------------------------------

    def _prepare_local(self, exist_ok: bool) -> None:
        if os.path.exists(self.local) and not os.path.isdir(self.local):
            raise FileExistsError(f"output {self.local} exists and is not a folder")
        if os.path.isdir(self.local) and os.listdir(self.local):
            if not exist_ok:
                raise FileExistsError(
                    f"output folder {self.local} is not empty; expected an empty or new folder "
                    "(pass exist_ok=True to replace its contents)"
                )
            with contextlib.suppress(FileNotFoundError):  # first: the old dataset stops existing
                os.remove(os.path.join(self.local, INDEX_NAME))
            for entry in os.scandir(self.local):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.remove(entry.path)
        os.makedirs(self.local, exist_ok=True)

    def _prepare_remote(self, exist_ok: bool) -> None:
        if not self._uploader.exists(INDEX_NAME):
            return
        if not exist_ok:
            raise FileExistsError(
                f"{self.remote}/{INDEX_NAME} exists: the remote holds a dataset (pass"
                " exist_ok=True to replace it)"
            )
        self._uploader.delete(INDEX_NAME)  # the old dataset stops looking complete, at once

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        """The index entries of the shards flushed so far."""
        return tuple(self._shards)

    def get_config(self) -> dict[str, Any]:
        """The shard config every shard embeds (and index.json repeats for each), as a dict:
        mosaicml-streaming's `get_config()`."""
        return json.loads(self._config)

    # ---- writing -------------------------------------------------------------------------

    def flush_shard(self) -> None:
        """Finish the current shard now, even a short or empty one (mosaicml-streaming's)."""
        if self._state != "open":
            raise RuntimeError(f"MDSWriter for {self.local} is {self._state}; cannot flush")
        self._flush()

    def encode_sample(self, sample: Mapping[str, Any]) -> bytes:
        """Check and encode one sample (raises `SampleError` naming the column on bad input)."""
        if not isinstance(sample, Mapping):
            raise SampleError(
                f"expected a sample dict {{column: value}}, got {type(sample).__name__}"
            )
        if len(sample) != len(self.column_names) or any(k not in sample for k in self.column_names):
            missing = sorted(set(self.column_names) - set(sample))
            extra = sorted(set(sample) - set(self.column_names), key=repr)
            raise SampleError(
                f"sample columns differ from the writer's {self.column_names}: "
                f"missing {missing}, unexpected {extra}"
            )
        parts = [
            encode_value(name, enc, sample[name])
            for name, enc in zip(self.column_names, self._encodings, strict=True)
        ]
        return encode_sample(parts, self.column_sizes)

    def write(self, sample: Mapping[str, Any]) -> None:
        """Add one sample; may first flush the current shard if this one would overflow it."""
        if self._state != "open":
            raise RuntimeError(f"MDSWriter for {self.local} is {self._state}; cannot write more")
        data = self.encode_sample(sample)
        need = len(data) + 4  # its bytes and its offset
        if self._shard_overhead + need > MAX_OFFSET:
            raise SampleError(f"a sample of {len(data)} bytes cannot fit an MDS shard (< 4 GiB)")
        over_limit = self.size_limit is not None and self._shard_size + need > self.size_limit
        if self._samples and (over_limit or self._shard_size + need > MAX_OFFSET):
            self._flush()
        self._samples.append(data)
        self._shard_size += need

    def _write_file(self, basename: str, data: bytes) -> str:
        """Write `data` as local `basename` via a temporary name, so it appears whole or not at all."""
        path = os.path.join(self.local, basename)
        write_bytes_atomic(path, data)
        return path

    def _file_info(self, basename: str, data: bytes) -> FileInfo:
        hashes = {algo: get_hash(algo, data) for algo in self.hashes}
        return FileInfo(basename=basename, bytes=len(data), hashes=hashes)

    def _flush(self) -> None:
        raw_name, zip_name = shard_basenames(len(self._shards), self.compression)
        raw = encode_shard(self._samples, self._config)
        raw_info = self._file_info(raw_name, raw)
        zip_info = None
        stored, stored_name = raw, raw_name
        if zip_name is not None:
            stored, stored_name = compress(self.compression, raw), zip_name
            zip_info = self._file_info(zip_name, stored)
        path = self._write_file(stored_name, stored)
        self._shards.append(
            ShardInfo(
                column_encodings=tuple(self.column_encodings),
                column_names=tuple(self.column_names),
                column_sizes=tuple(self.column_sizes),
                compression=self.compression,
                hashes=tuple(self.hashes),
                raw_data=raw_info,
                zip_data=zip_info,
                samples=len(self._samples),
                size_limit=self.size_limit,
            )
        )
        if self.progress:
            print(
                f"MDSWriter: {stored_name}: {len(self._samples)} samples, {len(raw)} bytes raw, "
                f"{len(stored)} stored",
                file=sys.stderr,
            )
        self._samples = []
        self._shard_size = self._shard_overhead
        if self._uploader is not None:  # in the background; the staged copy goes once it is up
            self._uploader.upload(path, stored_name, keep_local=not self._delete_local)

    def finish(self) -> None:
        """Flush the last shard, write `index.json` last, and finish uploading (if remote)."""
        if self._state == "finished":
            return
        if self._state != "open":
            raise RuntimeError(f"MDSWriter for {self.local} was aborted; it has no index")
        self._state = "finishing"
        try:
            if self._samples:
                self._flush()
            index_path = self._write_file(INDEX_NAME, dump_index(self._shards))
            if self._uploader is not None:
                self._uploader.wait()  # every shard is up before the index that names them
                self._uploader.upload(index_path, INDEX_NAME, keep_local=not self._delete_local)
                uploader, self._uploader = self._uploader, None
                uploader.close()  # waits; raises the first failed upload
        except BaseException:
            self.abort()
            raise
        self._state = "finished"
        self._cleanup()

    def abort(self) -> None:
        """Stop without writing `index.json` (what a raising `with` block does)."""
        if self._state in ("finished", "aborted"):
            return
        self._state = "aborted"
        self._samples = []
        uploader, self._uploader = self._uploader, None
        try:
            if uploader is not None:  # shards already queued may still go up: no index names them
                with contextlib.suppress(Exception):
                    uploader.close()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        """Remove the staging folder of a bare remote `out` (unless keep_local)."""
        if self._delete_local:
            shutil.rmtree(self.local, ignore_errors=True)

    def __enter__(self) -> MDSWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()
