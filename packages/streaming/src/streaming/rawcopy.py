"""The decompressed (raw) copy of a compressed shard that the cache keeps, and how it is trusted.

A compressed shard is decompressed once per node into a raw copy (named as `raw_data` says) that
every later process opens instead of decompressing again. The copy outlives the process that
made it, so each process checks it the first time it opens it, against, in this order:

1. the raw file's digests in index.json (those `validate_hash` selects): `Trust.INDEX`;
2. else the digest the cache kept of what it decompressed into the copy (xxh3_64, in a small
   hidden file beside it, `.<raw name>.kept`, which also names the compressed file it came
   from, and for a local dataset that file's size and mtime, so that a copy left from another
   version of the dataset does not pass): `Trust.KEPT`;
3. else nothing vouches for it (a copy made by mosaicml-streaming or by streaming before 0.1.2,
   of a dataset without raw hashes): `Trust.NONE`, and only its size and layout are checked.

With `validate_hash` off, no digest is computed: only the size, the origin (when kept) and the
layout (see `Shard.open`) are checked. A copy that fails its check raises `HashMismatchError` or
`ShardTruncatedError`/`ShardCorruptError` naming the file; the cache then makes it again from the
compressed file (`streaming.rawfill`), or fetches the shard again (`streaming.shardopen`).
"""

from __future__ import annotations

import contextlib
import json
import os
from enum import IntEnum
from typing import Any

import xxhash

from streaming.errors import HashMismatchError, ShardCorruptError
from streaming.format import ShardInfo
from streaming.hashing import hash_file
from streaming.shard import check_size, selected_hashes
from streaming.storage.stores import write_bytes_atomic

__all__ = [
    "KEPT_ALGO",
    "Trust",
    "check_raw_copy",
    "kept_hash_path",
    "load_kept_hash",
    "new_kept_hasher",
    "remove_kept_hash",
    "save_kept_hash",
    "source_stamp",
]

KEPT_ALGO = "xxh3_64"  # fast (tens of GB/s): checking a copy costs little more than reading it


class Trust(IntEnum):
    """What vouched for a raw copy when it was checked."""

    NONE = 0  # nothing recorded to check it against: size and layout only
    KEPT = 1  # the digest the cache kept when it decompressed the copy
    INDEX = 2  # the raw file's digests in index.json


def kept_hash_path(raw_path: str) -> str:
    """The hidden file beside a raw copy that holds the digest kept of it."""
    folder, name = os.path.split(raw_path)
    return os.path.join(folder, f".{name}.kept")


def new_kept_hasher() -> Any:
    """A hasher to feed the decompressed bytes as they are written (see `save_kept_hash`)."""
    return xxhash.xxh3_64()


def source_stamp(st: os.stat_result) -> dict[str, int]:
    """What identifies the compressed file of a local dataset a copy was made from (a rewritten
    dataset has new files); not used for a remote's cache, whose files readers touch."""
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _record(info: ShardInfo, digest: str, source: dict[str, int] | None) -> dict[str, Any]:
    assert info.zip_data is not None
    record = {
        "algo": KEPT_ALGO,
        "digest": digest,
        "raw": {"basename": info.raw_data.basename, "bytes": info.raw_data.bytes},
        "from": info.zip_data.to_json(),  # the compressed file (its size and digests) it came from
    }
    if source is not None:
        record["source"] = source
    return record


def save_kept_hash(
    raw_path: str, info: ShardInfo, digest: str, source: dict[str, int] | None = None
) -> None:
    """Keep `digest` (a `new_kept_hasher` hex digest) of the raw copy about to land at
    `raw_path`; `source` is the `source_stamp` of a local dataset's compressed file."""
    data = json.dumps(_record(info, digest, source), sort_keys=True).encode()
    write_bytes_atomic(kept_hash_path(raw_path), data)


def _load(raw_path: str) -> dict[str, Any] | None:
    try:
        with open(kept_hash_path(raw_path), "rb") as file:
            record = json.loads(file.read())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("digest"), str):
        return None
    return record


def _same_origin(record: dict[str, Any], info: ShardInfo, stored_path: str | None) -> bool:
    """Whether the copy was made from the compressed file `info` (and `stored_path`) describe."""
    source = record.get("source")
    if record != _record(info, record["digest"], source):
        return False
    if source is None or stored_path is None:
        return True
    try:
        return source == source_stamp(os.stat(stored_path))
    except FileNotFoundError:
        return True  # nothing left to compare with


def load_kept_hash(raw_path: str, info: ShardInfo, stored_path: str | None = None) -> str | None:
    """The digest kept of the raw copy at `raw_path`, or None if there is none, it is unreadable,
    or it was kept for another compressed file than `info` (and `stored_path`) describe."""
    record = _load(raw_path)
    if record is None or not _same_origin(record, info, stored_path):
        return None
    return record["digest"]


def remove_kept_hash(raw_path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(kept_hash_path(raw_path))


def check_raw_copy(
    path: str, info: ShardInfo, validate: bool | str, stored_path: str | None = None
) -> Trust:
    """Check the raw copy at `path` of the compressed shard `info` (see the module docstring);
    `stored_path` is the compressed file, if a local dataset's.

    Raises `ShardTruncatedError`/`ShardCorruptError` if its size is wrong or it was made from
    another compressed file (the dataset changed since), `HashMismatchError` if a digest differs;
    returns what vouched for it.
    """
    check_size(os.stat(path).st_size, info.raw_data, path)
    record = _load(path)
    if record is not None and not _same_origin(record, info, stored_path):
        raise ShardCorruptError(
            f"{path}: the decompressed copy was made from another {info.basename} than the one "
            "index.json describes now (the dataset changed since)"
        )
    if not validate:
        return Trust.NONE
    wanted = selected_hashes(info.raw_data, validate)
    if wanted:
        got = hash_file(sorted(wanted), path)
        for algo in sorted(wanted):
            if got[algo] != wanted[algo]:
                raise HashMismatchError(
                    f"{path}: {algo} of the decompressed copy {info.raw_data.basename} is "
                    f"{got[algo]}, but index.json records {wanted[algo]}"
                )
        return Trust.INDEX
    if record is None:
        return Trust.NONE
    got_kept = hash_file([KEPT_ALGO], path)[KEPT_ALGO]
    if got_kept != record["digest"]:
        raise HashMismatchError(
            f"{path}: the decompressed copy {info.raw_data.basename} differs from what was "
            f"decompressed into it ({KEPT_ALGO} {got_kept}, kept {record['digest']})"
        )
    return Trust.KEPT
