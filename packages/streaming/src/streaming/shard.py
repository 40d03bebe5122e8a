"""Reading one local MDS shard: check it against its `index.json` entry, then decode samples.

This is a data loader's hot path, so the work is done once, at `Shard.open`:

- a compressed shard is read and decompressed once and its raw bytes are kept in memory; an
  uncompressed one is memory-mapped (read-only, shared through the page cache);
- every hash recorded in the index is checked (those of `zip_data` over the stored compressed
  bytes, those of `raw_data` over the raw bytes), and so are the file size, the sample count, the
  offset table and the column layout embedded in the shard;
- each column's decoder is looked up once.

`shard[i]` then slices the raw bytes; `ndarray` columns come back as writable copies of their
few bytes (torch refuses to share read-only arrays, and copies never pin the shard's memory).

    with Shard.open("ds/shard.00000.mds.zstd", info) as shard:
        first = shard[0]          # {"tokens": array([...], dtype=int32), ...}
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any

from streaming.compression import decompress
from streaming.encodings import get_encoding
from streaming.errors import (
    HashMismatchError,
    ShardCorruptError,
    ShardTruncatedError,
    UnsafeEncodingError,
)
from streaming.format import FileInfo, ShardInfo, read_shard_table
from streaming.hashing import get_hash

__all__ = ["Shard", "verify_hashes"]


def verify_hashes(data: Any, info: FileInfo, *, where: str) -> None:
    """Check every digest recorded in `info` against `data`; raise `HashMismatchError` if one differs."""
    for algo, expected in sorted(info.hashes.items()):
        actual = get_hash(algo, data)
        if actual != expected:
            raise HashMismatchError(
                f"{where}: {algo} of {info.basename} is {actual}, but index.json records {expected}"
            )


def _check_size(actual: int, info: FileInfo, where: str) -> None:
    if actual < info.bytes:
        raise ShardTruncatedError(
            f"{where}: shard is truncated: {actual} bytes, index.json expects {info.bytes}"
        )
    if actual > info.bytes:
        raise ShardCorruptError(
            f"{where}: shard is {actual} bytes, index.json expects {info.bytes}"
        )


class Shard:
    """The samples of one MDS shard, checked and ready for random access.

    Build it with `Shard.open(path, info)` (a file) or `Shard.from_bytes(data, info)` (the stored
    file's bytes); `info` is the shard's entry of `index.json`. Close it (or use `with`) to drop
    the bytes; arrays already returned stay valid.
    """

    def __init__(self, raw: Any, info: ShardInfo, *, where: str, allow_pickle: bool) -> None:
        """Use `open` or `from_bytes`; `raw` is the checked raw shard (bytes or an mmap)."""
        self.info = info
        self.where = where
        self.allow_pickle = allow_pickle
        self._raw = raw
        self._view: memoryview | None = memoryview(raw)
        self._offsets: list[int] = read_shard_table(raw, info=info, where=where).tolist()
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
        cls, path: str, info: ShardInfo, *, verify: bool = True, allow_pickle: bool = False
    ) -> Shard:
        """Open the shard file at `path`: the stored file (compressed or not), or, for a
        compressed shard, its already decompressed raw file (named as `raw_data` says).

        Raises FileNotFoundError if it is missing, `ShardTruncatedError`/`ShardCorruptError` if its
        size or layout is wrong, `HashMismatchError` (when `verify`) if a digest differs.
        """
        compressed = info.zip_data is not None and os.path.basename(path) != info.raw_data.basename
        stored = info.zip_data if compressed and info.zip_data is not None else info.raw_data
        with open(path, "rb") as file:
            _check_size(os.fstat(file.fileno()).st_size, stored, path)
            if compressed:
                data: Any = file.read()
            elif stored.bytes:
                data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            else:  # an empty file cannot be mapped; the layout check rejects it below
                data = b""
        if compressed:
            return cls._from_stored(
                data, info, where=path, verify=verify, allow_pickle=allow_pickle
            )
        if verify:
            verify_hashes(data, info.raw_data, where=path)
        return cls(data, info, where=path, allow_pickle=allow_pickle)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        info: ShardInfo,
        *,
        where: str = "<memory>",
        verify: bool = True,
        allow_pickle: bool = False,
    ) -> Shard:
        """A shard from the bytes of its stored file (compressed when `info.compression` is set)."""
        _check_size(len(data), info.stored, where)
        return cls._from_stored(data, info, where=where, verify=verify, allow_pickle=allow_pickle)

    @classmethod
    def _from_stored(
        cls, data: Any, info: ShardInfo, *, where: str, verify: bool, allow_pickle: bool
    ) -> Shard:
        if info.zip_data is not None:
            if verify:
                verify_hashes(data, info.zip_data, where=where)
            try:
                data = decompress(info.compression, data, size=info.raw_data.bytes)
            except ModuleNotFoundError:
                raise
            except Exception as err:  # each codec raises its own error type
                raise ShardCorruptError(
                    f"{where}: cannot decompress with {info.compression}: {err}"
                ) from err
            if len(data) != info.raw_data.bytes:
                raise ShardCorruptError(
                    f"{where}: decompresses to {len(data)} bytes, index.json expects "
                    f"{info.raw_data.bytes}"
                )
        if verify:
            verify_hashes(data, info.raw_data, where=where)
        return cls(data, info, where=where, allow_pickle=allow_pickle)

    # ---- access --------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.info.samples

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

    def get_raw(self, index: int) -> memoryview:
        """The encoded bytes of sample `index` (a view into the shard, not a copy)."""
        view = self._view
        if view is None:
            raise ValueError(f"{self.where}: shard is closed")
        begin, end = self._span(index)
        return view[begin:end]

    def get_raw_shard(self) -> memoryview:
        """The whole raw (decompressed) shard, checked (e.g. to cache it as a raw file)."""
        if self._view is None:
            raise ValueError(f"{self.where}: shard is closed")
        return self._view

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample `index`, decoded: {column name: value}."""
        view = self._view
        if view is None:
            raise ValueError(f"{self.where}: shard is closed")
        begin, end = self._span(index)
        lengths: Any = ()
        pos = begin
        if self._lengths is not None:
            if end - begin < self._lengths.size:
                raise ShardCorruptError(f"{self.where}: sample {index} is too short")
            lengths = self._lengths.unpack_from(view, begin)
            pos += self._lengths.size
        if begin + self._fixed_bytes + sum(lengths) != end:
            raise ShardCorruptError(
                f"{self.where}: sample {index} is {end - begin} bytes, but its columns need "
                f"{self._fixed_bytes + sum(lengths)}"
            )
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
        """Drop the shard's bytes. Arrays returned earlier keep what they point to alive."""
        view, self._view = self._view, None
        raw, self._raw = self._raw, None
        if view is not None:
            view.release()
        if isinstance(raw, mmap.mmap):
            try:
                raw.close()
            except BufferError:  # decoded arrays still view the map: it closes when they go
                pass

    def __enter__(self) -> Shard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (e.g. into spawned data loader workers): a mapped file is mapped again there;
        the raw bytes of a decompressed shard travel along. Already checked: no re-verification."""
        if self._view is None:
            raise ValueError(f"{self.where}: shard is closed")
        mapped = isinstance(self._raw, mmap.mmap)
        data = None if mapped else bytes(self._raw)
        return (_rebuild, (data, self.info, self.where, self.allow_pickle))

    def __repr__(self) -> str:
        return f"Shard({self.where!r}, samples={self.info.samples})"


def _rebuild(data: bytes | None, info: ShardInfo, where: str, allow_pickle: bool) -> Shard:
    if data is None:  # a memory-mapped raw file: `where` is its path
        with open(where, "rb") as file:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)  # type: ignore[assignment]
    return Shard(data, info, where=where, allow_pickle=allow_pickle)
