"""Reading one MDS shard: check it against its `index.json` entry, then decode samples.

This is a data loader's hot path, so the work is done once, when the shard is opened. A `Shard`
reads its raw (decompressed) bytes from one of three places:

- a raw file, with `os.pread`, through the page cache that every process on the node shares (no
  per-process copy, and no mapped pages inflating RSS): a stored uncompressed shard, or the raw
  copy the cache made of a compressed one (`Shard.open`);
- a raw file still being written by the thread decompressing into it (`GrowingRaw`,
  `Shard.growing`, see `streaming.rawfill`): each read waits for the bytes it needs;
- memory: a compressed stored file decompressed by `Shard.open` or `Shard.from_bytes`, when no
  folder can keep a raw copy (or for `python -m streaming verify`).

Opening checks the file size, every hash recorded in the index that `verify` selects (those of
`zip_data` over the stored compressed bytes, those of `raw_data` over the raw bytes), the sample
count, the offset table and the column layout embedded in the shard, and looks up each column's
decoder once. The checks and the one checked decompression (`decompress_checked`) are the cache's
too.

`shard[i]` then reads the sample's bytes; `ndarray` columns come back as writable copies of their
few bytes (torch refuses to share read-only arrays, and copies never pin the shard's memory).

    with Shard.open("ds/shard.00000.mds.zstd", info) as shard:
        first = shard[0]          # {"tokens": array([...], dtype=int32), ...}
"""

from __future__ import annotations

import os
import struct
import threading
from typing import Any

from streaming.compression import decompress_stream
from streaming.encodings import get_encoding
from streaming.errors import (
    HashMismatchError,
    ShardCorruptError,
    ShardTruncatedError,
    UnsafeEncodingError,
)
from streaming.format import FileInfo, ShardInfo, read_shard_table
from streaming.hashing import get_hash

__all__ = [
    "GrowingRaw",
    "Shard",
    "check_size",
    "decompress_checked",
    "selected_hashes",
    "verify_hashes",
]


def selected_hashes(info: FileInfo, validate: bool | str) -> dict[str, str]:
    """The digests of `info` that `validate` asks to check: every one (True), the one named
    (a hash algorithm, when recorded), or none (False)."""
    if validate is True:
        return dict(info.hashes)
    if validate and validate in info.hashes:
        return {validate: info.hashes[validate]}
    return {}


def verify_hashes(data: Any, info: FileInfo, *, where: str, validate: bool | str = True) -> None:
    """Check the digests of `info` that `validate` selects (default: all) against `data`; raise
    `HashMismatchError` if one differs."""
    for algo, expected in sorted(selected_hashes(info, validate).items()):
        actual = get_hash(algo, data)
        if actual != expected:
            raise HashMismatchError(
                f"{where}: {algo} of {info.basename} is {actual}, but index.json records {expected}"
            )


def check_size(actual: int, info: FileInfo, where: str) -> None:
    """A file of `actual` bytes must be as long as `info` says (truncated or corrupt otherwise)."""
    if actual < info.bytes:
        raise ShardTruncatedError(
            f"{where}: shard is truncated: {actual} bytes, index.json expects {info.bytes}"
        )
    if actual > info.bytes:
        raise ShardCorruptError(
            f"{where}: shard is {actual} bytes, index.json expects {info.bytes}"
        )


def decompress_checked(
    info: ShardInfo, data: Any, write: Any, *, where: str, consumed: Any = None
) -> None:
    """Decompress the stored bytes `data` of a compressed shard into `write(chunk)`, piece by
    piece (see `compression.decompress_stream`; `consumed(n)` hears how much input is done).

    Whatever the codec raises becomes a `ShardCorruptError` naming `where`, and so does output of
    another size than index.json's `raw_data.bytes`. The one decompression that both the cache
    (into a growing raw file, `streaming.rawfill`) and `Shard.open` (into memory) run.
    """
    try:
        size = decompress_stream(info.compression, data, write, consumed)
    except (ModuleNotFoundError, ShardCorruptError):
        raise
    except Exception as err:  # each codec raises its own error type
        raise ShardCorruptError(
            f"{where}: cannot decompress with {info.compression}: {err}"
        ) from err
    if size != info.raw_data.bytes:
        raise ShardCorruptError(
            f"{where}: decompresses to {size} bytes, index.json expects {info.raw_data.bytes}"
        )


class _Buffer:
    """The raw shard being decompressed into memory, exactly as large as index.json says."""

    def __init__(self, size: int, where: str) -> None:
        self.data, self.filled, self.where = bytearray(size), 0, where

    def write(self, chunk: memoryview) -> None:
        end = self.filled + len(chunk)
        if end > len(self.data):
            raise ShardCorruptError(
                f"{self.where}: decompresses to more than the expected {len(self.data)} bytes"
            )
        self.data[self.filled : end] = chunk
        self.filled = end


class _Memory:
    """A raw shard held in memory (a decompressed shard)."""

    def __init__(self, raw: Any) -> None:
        self.view = memoryview(raw)
        self.size = len(self.view)

    def read(self, begin: int, end: int) -> memoryview:
        return self.view[begin:end]

    def whole(self) -> memoryview:
        return self.view

    def close(self) -> None:
        self.view.release()


class _File:
    """A raw shard file read with `pread` (thread-safe; shared through the page cache)."""

    def __init__(self, path: str) -> None:
        self.path, self.fd = path, -1  # set first: __del__ runs even if the open fails
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size

    def read(self, begin: int, end: int) -> bytes:
        data = os.pread(self.fd, end - begin, begin)
        if len(data) != end - begin:
            raise ShardTruncatedError(f"{self.path}: shard file shrank while being read")
        return data

    def whole(self) -> bytes:
        return self.read(0, self.size)

    def header(self) -> bytes:
        """The bytes up to the first sample (count, offset table, embedded config)."""
        head = os.pread(self.fd, 8, 0)
        if len(head) < 8:
            return head
        count, first = struct.unpack("<II", head)
        # A corrupt count or first offset is caught by read_shard_table; read no more than the file.
        return os.pread(self.fd, min(max(first, 4 + 4 * (count + 1)), self.size), 0)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:  # a shard dropped (not closed) by a cache closes its file here
        self.close()


class GrowingRaw:
    """A raw shard file that another thread is still writing (decompressing into).

    The writer appends with `append(chunk)` and ends with `fail(err)` if it cannot finish; reads
    wait until the bytes they need are in the file (or raise the writer's error), then `pread`
    them like `_File`, so no copy of the shard is held in memory. The file may be renamed while
    being read: reads use the descriptor, not the name.
    """

    def __init__(self, path: str, size: int, hasher: Any = None) -> None:
        self.path, self.size, self.fd = path, size, -1  # set first: __del__ runs if open fails
        self.hasher = hasher  # updated with every byte appended (the cache's kept hash)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self.filled = 0
        self.waiting = 0  # readers blocked on this shard right now (decompression priority)
        self.error: BaseException | None = None
        self._cond = threading.Condition()

    def append(self, chunk: memoryview) -> None:
        if self.filled + len(chunk) > self.size:
            raise ShardCorruptError(
                f"{self.path}: decompresses to more than the expected {self.size} bytes"
            )
        written = 0
        while written < len(chunk):
            written += os.pwrite(self.fd, chunk[written:], self.filled + written)
        if self.hasher is not None:
            self.hasher.update(chunk)
        with self._cond:
            self.filled += len(chunk)
            self._cond.notify_all()

    def fail(self, err: BaseException) -> None:
        with self._cond:
            self.error = err
            self._cond.notify_all()

    def _wait(self, end: int) -> None:
        if self.filled >= end:
            return
        with self._cond:
            self.waiting += 1
            try:
                while self.filled < end and self.error is None:
                    self._cond.wait()
            finally:
                self.waiting -= 1
        if self.filled < end:
            raise self.error  # type: ignore[misc]

    def read(self, begin: int, end: int) -> bytes:
        self._wait(end)
        return os.pread(self.fd, end - begin, begin)

    def whole(self) -> bytes:
        return self.read(0, self.size)

    def header(self) -> bytes:
        """The bytes up to the first sample, as soon as they have arrived."""
        self._wait(min(8, self.size))
        if self.size < 8:
            return os.pread(self.fd, self.size, 0)
        count, first = struct.unpack("<II", os.pread(self.fd, 8, 0))
        return self.read(0, min(max(first, 4 + 4 * (count + 1)), self.size))

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


class Shard:
    """The samples of one MDS shard, checked and ready for random access.

    Build it with `Shard.open(path, info)` (a file) or `Shard.from_bytes(data, info)` (the stored
    file's bytes); `info` is the shard's entry of `index.json`. Close it (or use `with`) to drop
    the bytes; arrays already returned stay valid (they are copies).
    """

    def __init__(
        self, backing: _Memory | _File, info: ShardInfo, *, where: str, allow_pickle: bool
    ) -> None:
        """Use `open` or `from_bytes`; `backing` holds the checked raw shard."""
        self.info = info
        self.where = where
        self.allow_pickle = allow_pickle
        self._backing: _Memory | _File | GrowingRaw | None = backing
        head = backing.whole() if isinstance(backing, _Memory) else backing.header()
        self._offsets: list[int] = read_shard_table(
            head, info=info, where=where, size=backing.size
        ).tolist()
        self._columns = [
            (name, get_encoding(enc), size)
            for name, enc, size in zip(
                info.column_names, info.column_encodings, info.column_sizes, strict=True
            )
        ]
        num_var = sum(size is None for size in info.column_sizes)
        self._lengths = struct.Struct(f"<{num_var}I") if num_var else None
        self._fixed_bytes = sum(size or 0 for size in info.column_sizes) + 4 * num_var

    # ---- construction --------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str, info: ShardInfo, *, verify: bool | str = True, allow_pickle: bool = False
    ) -> Shard:
        """Open the shard file at `path`: the stored file (compressed or not), or, for a
        compressed shard, its already decompressed raw file (named as `raw_data` says).

        `verify`: True checks every digest index.json records, a hash algorithm's name only that
        one, False none. Raises FileNotFoundError if the file is missing,
        `ShardTruncatedError`/`ShardCorruptError` if its size or layout is wrong,
        `HashMismatchError` if a checked digest differs.
        """
        compressed = info.zip_data is not None and os.path.basename(path) != info.raw_data.basename
        if compressed:
            with open(path, "rb") as file:
                check_size(os.fstat(file.fileno()).st_size, info.stored, path)
                data = file.read()
            return cls._from_stored(
                data, info, where=path, verify=verify, allow_pickle=allow_pickle
            )
        backing = _File(path)
        try:
            check_size(backing.size, info.raw_data, path)
            if selected_hashes(info.raw_data, verify):
                verify_hashes(backing.whole(), info.raw_data, where=path, validate=verify)
            return cls(backing, info, where=path, allow_pickle=allow_pickle)
        except BaseException:
            backing.close()
            raise

    @classmethod
    def growing(
        cls, raw: GrowingRaw, info: ShardInfo, *, where: str, allow_pickle: bool = False
    ) -> Shard:
        """A shard over a raw shard file still being written (waits for its header only).

        The compressed bytes' hashes must have been checked already; each read then waits for
        the bytes it needs.
        """
        return cls(raw, info, where=where, allow_pickle=allow_pickle)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        info: ShardInfo,
        *,
        where: str = "<memory>",
        verify: bool | str = True,
        allow_pickle: bool = False,
    ) -> Shard:
        """A shard from the bytes of its stored file (compressed when `info.compression` is set)."""
        check_size(len(data), info.stored, where)
        return cls._from_stored(data, info, where=where, verify=verify, allow_pickle=allow_pickle)

    @classmethod
    def _from_stored(
        cls, data: Any, info: ShardInfo, *, where: str, verify: bool | str, allow_pickle: bool
    ) -> Shard:
        vouched = False  # decompression is deterministic: checked compressed bytes vouch for raw
        if info.zip_data is not None:
            vouched = bool(selected_hashes(info.zip_data, verify))
            verify_hashes(data, info.zip_data, where=where, validate=verify)
            buffer = _Buffer(info.raw_data.bytes, where)
            decompress_checked(info, data, buffer.write, where=where)
            data = buffer.data
        if not vouched:
            verify_hashes(data, info.raw_data, where=where, validate=verify)
        return cls(_Memory(data), info, where=where, allow_pickle=allow_pickle)

    # ---- access --------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.info.samples

    @property
    def is_growing(self) -> bool:
        """Whether the shard reads a raw file that was still being written when it was made
        (`Shard.growing`): its reads wait on the writing thread, which a forked child lacks."""
        return isinstance(self._backing, GrowingRaw)

    @property
    def nbytes(self) -> int:
        """Size of the raw (decompressed) shard in bytes."""
        return self.info.raw_data.bytes

    def _span(self, index: int) -> tuple[int, int]:
        count = self.info.samples
        if not -count <= index < count:
            raise IndexError(f"{self.where}: sample {index} out of range for {count} samples")
        if index < 0:
            index += count
        return self._offsets[index], self._offsets[index + 1]

    def _backing_or_raise(self) -> _Memory | _File | GrowingRaw:
        if self._backing is None:
            raise ValueError(f"{self.where}: shard is closed")
        return self._backing

    def get_raw(self, index: int) -> memoryview | bytes:
        """The encoded bytes of sample `index` (a view when in memory, a read when on disk)."""
        backing = self._backing_or_raise()
        return backing.read(*self._span(index))

    def get_raw_shard(self) -> memoryview | bytes:
        """The whole raw (decompressed) shard, checked (e.g. to cache it as a raw file)."""
        return self._backing_or_raise().whole()

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample `index`, decoded: {column name: value}."""
        backing = self._backing_or_raise()
        begin, end = self._span(index)
        data = backing.read(begin, end)
        lengths: Any = ()
        pos = 0
        if self._lengths is not None:
            if end - begin < self._lengths.size:
                raise ShardCorruptError(f"{self.where}: sample {index} is too short")
            lengths = self._lengths.unpack_from(data, 0)
            pos = self._lengths.size
        if self._fixed_bytes + sum(lengths) != end - begin:
            raise ShardCorruptError(
                f"{self.where}: sample {index} is {end - begin} bytes, but its columns need "
                f"{self._fixed_bytes + sum(lengths)}"
            )
        view = memoryview(data)
        sample = {}
        var = 0
        for name, encoding, size in self._columns:
            if size is None:
                size = lengths[var]
                var += 1
            if not encoding.safe and not self.allow_pickle:
                raise UnsafeEncodingError(
                    f"{self.where}: column {name!r} is encoded as {encoding.name!r}, whose "
                    "decoding runs code from the data; pass allow_pickle=True only for data "
                    "you trust"
                )
            try:
                sample[name] = encoding.decode(view[pos : pos + size])
            except ModuleNotFoundError:
                raise
            except Exception as err:  # any decoder failure means the bytes are bad
                raise ShardCorruptError(
                    f"{self.where}: sample {index} column {name!r} ({encoding.name}) does not "
                    f"decode: {err}"
                ) from err
            pos += size
        return sample

    # ---- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Drop the shard's bytes (or close its file). Arrays returned earlier stay valid."""
        backing, self._backing = self._backing, None
        if backing is not None:
            backing.close()

    def __enter__(self) -> Shard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (e.g. into spawned data loader workers): a file-backed shard opens its file
        again there; the raw bytes of a decompressed shard travel along. Already checked: no
        re-verification."""
        backing = self._backing_or_raise()
        data = None if isinstance(backing, _File) else bytes(backing.whole())  # growing: waits
        return (_rebuild, (data, self.info, self.where, self.allow_pickle))

    def __repr__(self) -> str:
        return f"Shard({self.where!r}, samples={self.info.samples})"


def _rebuild(data: bytes | None, info: ShardInfo, where: str, allow_pickle: bool) -> Shard:
    backing = _File(where) if data is None else _Memory(data)  # None: a raw file at `where`
    return Shard(backing, info, where=where, allow_pickle=allow_pickle)
