"""The MDS on-disk format (version 2, as mosaicml-streaming 0.13 writes it), defined in one place.

A dataset folder holds shard files and `index.json`, written last:

    index.json   {"shards": [<shard>, ...], "version": 2}   (json.dumps, sort_keys=True)
    <shard>      {"column_encodings": [...], "column_names": [...], "column_sizes": [...],
                  "compression": null | "zstd" | "zstd:7" | ..., "format": "mds",
                  "hashes": ["sha1", ...], "raw_data": <file>, "samples": N,
                  "size_limit": int | null, "version": 2, "zip_data": null | <file>}
    <file>       {"basename": "shard.00000.mds", "bytes": n, "hashes": {"sha1": "<hex>", ...}}

Shard `i` is stored as `shard.{i:05}.mds`, or `shard.{i:05}.mds.{family}` when compressed (then
`zip_data` describes the stored file and `raw_data` the decompressed one). A raw shard is, with
every integer a little-endian uint32:

    [N] [offset_0 .. offset_N] [config JSON] [sample_0] .. [sample_N-1]

where offsets are absolute positions in the file (offset_N is the file size) and the config JSON is
the shard entry's common fields (no `raw_data`, `samples`, `zip_data`), sort_keys=True. A sample is
the byte lengths of its variable-size columns, then every column's bytes, columns in name order.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.compression import compression_extension, parse_compression
from streaming.encodings import get_encoding
from streaming.errors import IndexFormatError, IndexJSONError, ShardCorruptError, UnsafePathError
from streaming.hashing import HASHES
from streaming.sizes import parse_bytes

__all__ = [
    "FORMAT_VERSION",
    "INDEX_BASENAME",
    "INDEX_NAME",
    "MAX_OFFSET",
    "SHARD_FORMAT",
    "FileInfo",
    "ShardInfo",
    "check_basename",
    "dump_index",
    "encode_sample",
    "encode_shard",
    "encode_shard_config",
    "parse_index",
    "parse_size",
    "read_shard_table",
    "shard_basenames",
]

FORMAT_VERSION = 2
INDEX_NAME = "index.json"
INDEX_BASENAME = INDEX_NAME  # mosaicml-streaming's word for it
SHARD_FORMAT = "mds"
# The largest position in a raw shard: offsets are uint32, so no shard may be larger.
MAX_OFFSET = (1 << 32) - 1


def shard_basenames(index: int, compression: str | None) -> tuple[str, str | None]:
    """(raw basename, stored compressed basename or None) of shard number `index`."""
    raw = f"shard.{index:05}.{SHARD_FORMAT}"
    if compression is None:
        return raw, None
    return raw, f"{raw}.{compression_extension(compression)}"


def parse_size(size: int | float | str | None) -> int | None:
    """A shard size limit in bytes, read by `streaming.sizes.parse_bytes` ("64mb" is 64 MiB), or
    None. As in mosaicml-streaming, a falsy limit (None, 0, "") means no limit: one shard for
    everything; a limit must be below 2**32 bytes (offsets are uint32).
    """
    if not size and not isinstance(size, bool):
        return None
    value = parse_bytes(size, setting="size_limit")
    if value > MAX_OFFSET:
        raise ValueError(
            f"size_limit must be in [0, 2**32) bytes (offsets are uint32), got {value}"
        )
    return value or None


def check_basename(basename: Any, where: str) -> str:
    """Reject a shard basename that could point outside the dataset folder."""
    if not isinstance(basename, str) or not basename:
        raise IndexFormatError(f"{where}: basename must be a non-empty string, got {basename!r}")
    parts = re.split(r"[/\\]", basename)
    if basename.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", basename) or ".." in parts:
        raise UnsafePathError(
            f"{where}: basename {basename!r} must be a relative path inside the dataset folder "
            "(no leading '/', drive or '..' part)"
        )
    return basename


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True, kw_only=True)
class FileInfo:
    """One file of a shard: its basename in the dataset folder, size and hex digests."""

    basename: str
    bytes: int
    hashes: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"basename": self.basename, "bytes": self.bytes, "hashes": dict(self.hashes)}

    @classmethod
    def from_json(cls, obj: Any, *, where: str) -> FileInfo:
        if not isinstance(obj, dict) or set(obj) != {"basename", "bytes", "hashes"}:
            raise IndexFormatError(
                f"{where}: expected an object with keys basename, bytes, hashes, got {obj!r}"
            )
        basename = check_basename(obj["basename"], where)
        if not _is_count(obj["bytes"]):
            raise IndexFormatError(f"{where}: bytes must be an integer >= 0, got {obj['bytes']!r}")
        hashes = obj["hashes"]
        if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
            raise IndexFormatError(
                f"{where}: hashes must map algorithm to hex digest, got {hashes!r}"
            )
        unknown = sorted(set(hashes) - set(HASHES))
        if unknown:
            raise IndexFormatError(f"{where}: unknown hash algorithms {unknown}")
        return cls(basename=basename, bytes=obj["bytes"], hashes=dict(hashes))


_SHARD_KEYS = {
    "column_encodings",
    "column_names",
    "column_sizes",
    "compression",
    "format",
    "hashes",
    "raw_data",
    "samples",
    "size_limit",
    "version",
    "zip_data",
}


def encode_shard_config(
    *,
    column_encodings: Sequence[str],
    column_names: Sequence[str],
    column_sizes: Sequence[int | None],
    compression: str | None,
    hashes: Sequence[str],
    size_limit: int | None,
) -> bytes:
    """The config JSON that every shard of a dataset embeds after its offset table."""
    obj = {
        "column_encodings": list(column_encodings),
        "column_names": list(column_names),
        "column_sizes": list(column_sizes),
        "compression": compression,
        "format": SHARD_FORMAT,
        "hashes": list(hashes),
        "size_limit": size_limit,
        "version": FORMAT_VERSION,
    }
    return json.dumps(obj, sort_keys=True).encode("utf-8")


@dataclass(frozen=True, kw_only=True)
class ShardInfo:
    """One shard's entry in `index.json`."""

    column_encodings: tuple[str, ...]
    column_names: tuple[str, ...]
    column_sizes: tuple[int | None, ...]
    compression: str | None
    hashes: tuple[str, ...]
    raw_data: FileInfo
    zip_data: FileInfo | None
    samples: int
    size_limit: int | None
    format: str = SHARD_FORMAT
    version: int = FORMAT_VERSION

    @property
    def basename(self) -> str:
        """The file that is stored: the compressed one if any, else the raw one."""
        return (self.zip_data or self.raw_data).basename

    @property
    def stored(self) -> FileInfo:
        """FileInfo of the stored file (`zip_data` when compressed, else `raw_data`)."""
        return self.zip_data or self.raw_data

    def config_bytes(self) -> bytes:
        """The config JSON that this shard's file embeds."""
        return encode_shard_config(
            column_encodings=self.column_encodings,
            column_names=self.column_names,
            column_sizes=self.column_sizes,
            compression=self.compression,
            hashes=self.hashes,
            size_limit=self.size_limit,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "column_encodings": list(self.column_encodings),
            "column_names": list(self.column_names),
            "column_sizes": list(self.column_sizes),
            "compression": self.compression,
            "format": self.format,
            "hashes": list(self.hashes),
            "raw_data": self.raw_data.to_json(),
            "samples": self.samples,
            "size_limit": self.size_limit,
            "version": self.version,
            "zip_data": None if self.zip_data is None else self.zip_data.to_json(),
        }

    @classmethod
    def from_json(cls, obj: Any, *, where: str) -> ShardInfo:
        """Validate one shard entry; `where` names it in errors (e.g. "…/index.json shard 3")."""
        if not isinstance(obj, dict):
            raise IndexFormatError(f"{where}: expected a shard object, got {obj!r}")
        version = obj.get("version")
        if version != FORMAT_VERSION:
            raise IndexFormatError(
                f"{where}: shard format version {version!r} is not supported; expected {FORMAT_VERSION}"
            )
        if obj.get("format") != SHARD_FORMAT:
            raise IndexFormatError(
                f"{where}: shard format {obj.get('format')!r} is not supported; expected 'mds'"
            )
        missing, extra = sorted(_SHARD_KEYS - set(obj)), sorted(set(obj) - _SHARD_KEYS)
        if missing or extra:
            raise IndexFormatError(f"{where}: missing keys {missing}, unknown keys {extra}")
        names, encodings, sizes = obj["column_names"], obj["column_encodings"], obj["column_sizes"]
        if not (
            isinstance(names, list) and isinstance(encodings, list) and isinstance(sizes, list)
        ):
            raise IndexFormatError(f"{where}: column_names/encodings/sizes must be lists")
        if not len(names) == len(encodings) == len(sizes) or len(set(names)) != len(names):
            raise IndexFormatError(
                f"{where}: expected as many unique column names as encodings and sizes, got "
                f"{names}, {encodings}, {sizes}"
            )
        if not all(isinstance(name, str) for name in names):
            raise IndexFormatError(f"{where}: column names must be strings, got {names}")
        for name, encoding, size in zip(names, encodings, sizes, strict=True):
            try:
                expected = get_encoding(encoding).size
            except (TypeError, ValueError) as err:
                raise IndexFormatError(f"{where}: column {name!r}: {err}") from None
            if size != expected:
                raise IndexFormatError(
                    f"{where}: column {name!r} ({encoding}) has size {size!r}, expected {expected!r}"
                )
        compression = obj["compression"]
        if compression is not None:
            try:
                parse_compression(compression)
            except (TypeError, ValueError) as err:
                raise IndexFormatError(f"{where}: {err}") from None
        hashes = obj["hashes"]
        if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
            raise IndexFormatError(f"{where}: hashes must be a list of names, got {hashes!r}")
        if not _is_count(obj["samples"]):
            raise IndexFormatError(
                f"{where}: samples must be an integer >= 0, got {obj['samples']!r}"
            )
        try:
            size_limit = parse_size(obj["size_limit"])
        except (TypeError, ValueError) as err:
            raise IndexFormatError(f"{where}: {err}") from None
        raw_data = FileInfo.from_json(obj["raw_data"], where=f"{where} raw_data")
        zip_data = None
        if obj["zip_data"] is not None:
            zip_data = FileInfo.from_json(obj["zip_data"], where=f"{where} zip_data")
        if (zip_data is None) != (compression is None):
            raise IndexFormatError(
                f"{where}: zip_data must be present exactly when compression is set "
                f"(compression={compression!r}, zip_data={obj['zip_data']!r})"
            )
        return cls(
            column_encodings=tuple(encodings),
            column_names=tuple(names),
            column_sizes=tuple(sizes),
            compression=compression,
            hashes=tuple(hashes),
            raw_data=raw_data,
            zip_data=zip_data,
            samples=obj["samples"],
            size_limit=size_limit,
        )


def parse_index(data: bytes | str, where: str) -> list[ShardInfo]:
    """Parse and validate the text of an `index.json`; `where` names it in every error."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise IndexJSONError(f"{where}: not valid JSON ({err.msg})", err.doc, err.pos) from None
    except UnicodeDecodeError as err:
        raise IndexJSONError(f"{where}: not valid JSON ({err})", "", err.start) from None
    if not isinstance(obj, dict):
        raise IndexFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    version = obj.get("version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{where}: index format version {version!r} is not supported; expected {FORMAT_VERSION}"
        )
    shards = obj.get("shards")
    if not isinstance(shards, list):
        raise IndexFormatError(f"{where}: expected a list under 'shards', got {shards!r}")
    return [ShardInfo.from_json(s, where=f"{where} shard {i}") for i, s in enumerate(shards)]


def dump_index(shards: Sequence[ShardInfo]) -> bytes:
    """The bytes of `index.json` for these shards, exactly as mosaicml-streaming writes them."""
    obj = {"shards": [shard.to_json() for shard in shards], "version": FORMAT_VERSION}
    return json.dumps(obj, sort_keys=True).encode("utf-8")


def encode_sample(parts: Sequence[bytes], sizes: Sequence[int | None]) -> bytes:
    """One sample: the lengths of the columns whose `sizes` entry is None, then every part."""
    lengths = [len(part) for part, size in zip(parts, sizes, strict=True) if size is None]
    return struct.pack(f"<{len(lengths)}I", *lengths) + b"".join(parts)


def encode_shard(samples: Sequence[bytes], config: bytes) -> bytes:
    """A raw shard: sample count, offset table, config JSON, then the encoded samples."""
    count = len(samples)
    start = 4 + 4 * (count + 1) + len(config)
    offsets = np.cumsum([start] + [len(s) for s in samples], dtype=np.uint64)
    if int(offsets[-1]) > MAX_OFFSET:
        raise ValueError(
            f"a shard of {int(offsets[-1])} bytes does not fit uint32 offsets; set a size_limit"
        )
    head = struct.pack("<I", count) + offsets.astype("<u4").tobytes()
    return b"".join([head, config, *samples])


def read_shard_table(
    data: Any, *, info: ShardInfo, where: str, size: int | None = None
) -> np.ndarray:
    """Check a raw shard's header against its index entry; return its N+1 offsets (uint32).

    `data` is the raw shard, or a prefix of it that holds the whole header (count, offset table
    and embedded config) when `size` gives the full size. Raises `ShardCorruptError` naming
    `where` when the count, offsets or embedded config are wrong.
    """
    size = len(data) if size is None else size
    if size < 8:
        raise ShardCorruptError(f"{where}: {size} bytes is too short for an MDS shard")
    (count,) = struct.unpack_from("<I", data)
    if count != info.samples:
        raise ShardCorruptError(
            f"{where}: holds {count} samples, but index.json says {info.samples}"
        )
    table_end = 4 + 4 * (count + 1)
    if min(size, len(data)) < table_end:
        raise ShardCorruptError(
            f"{where}: {size} bytes cannot hold an offset table of {count} samples"
        )
    offsets = np.frombuffer(data, "<u4", count + 1, 4)
    if int(offsets[0]) < table_end or int(offsets[-1]) != size:
        raise ShardCorruptError(
            f"{where}: offset table is inconsistent (first {int(offsets[0])}, last "
            f"{int(offsets[-1])}, file {size} bytes)"
        )
    if count and np.any(offsets[1:] < offsets[:-1]):
        raise ShardCorruptError(f"{where}: sample offsets are not in increasing order")
    try:
        config = json.loads(bytes(data[table_end : int(offsets[0])]))
    except ValueError:
        raise ShardCorruptError(f"{where}: embedded shard config is not valid JSON") from None
    for key in ("column_names", "column_encodings", "column_sizes"):
        if not isinstance(config, dict) or config.get(key) != list(getattr(info, key)):
            found = config.get(key) if isinstance(config, dict) else config
            raise ShardCorruptError(
                f"{where}: embedded {key} {found!r} differs from index.json's {list(getattr(info, key))}"
            )
    return offsets
