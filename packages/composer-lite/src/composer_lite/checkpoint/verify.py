"""Content hashes of checkpoint files: written once at save, checked as a load reads the files.

A save hashes each file after writing it, on the rank that wrote it (`owner_of`), and rank 0
records the hashes in the manifest. A load checks them without a second pass over the data:

- the small files a rank reads whole are hashed in memory: `objects.pt` and `state/.metadata` on
  every rank, `rank_objects/rank<r>.pt` on rank r (`read_checked`, `CheckedReader.read_metadata`);
- DCP data files `state/__<k>_<i>.distcp`: DCP's `FileSystemReader` reads, per rank, only the
  stored chunks that rank needs, each as one byte range. `CheckedReader` sorts a rank's chunks by
  file and offset and reads them through `HashingStream`, which also hashes the bytes between
  them, so one sequential pass gives the data and the file's hash. File k is checked by rank
  k mod world size (its writer when the world size is unchanged, which then needs all of it), and
  by any other rank whose chunks cover the whole file anyway (plain data parallel: every rank
  reads every file). Extra reads happen only for the parts of its file a rank does not need
  (after a change of world size or sharding), or for a file it needs nothing from.

Mismatches are collected while DCP loads and raised afterwards (`CheckedReader.verify`, called on
every rank together) as `CorruptCheckpointError`, naming the checkpoint, the file, and the
recorded and the computed hash.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import xxhash
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.filesystem import FileSystem

from composer_lite.checkpoint.format import (
    HASH_ALGORITHM,
    OBJECTS_NAME,
    RANK_OBJECTS_DIR,
    STATE_DIR,
    CorruptCheckpointError,
    rank_objects_name,
)

__all__ = ["CheckedReader", "HashingStream", "hash_file", "own_files", "owner_of", "read_checked"]

_CHUNK = 8 << 20  # bytes per read while hashing
_METADATA = ".metadata"  # DCP's index of the data files, in state/
_OWNED = re.compile(rf"^(?:{STATE_DIR}/__(\d+)_\d+\.distcp|{RANK_OBJECTS_DIR}/rank(\d+)\.pt)$")


def hash_file(path: str) -> str:
    """The hex xxh3-64 of a local file."""
    hasher = xxhash.xxh3_64()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def owner_of(relative: str) -> int:
    """The rank that writes a checkpoint file (path relative to the checkpoint): k for
    `state/__k_i.distcp` and `rank_objects/rank<k>.pt`, 0 for the rest."""
    match = _OWNED.match(relative)
    return int(match.group(1) or match.group(2)) if match else 0


def own_files(root: str, rank: int, wrote_rank_objects: bool) -> list[str]:
    """The files of a local checkpoint being written that this rank wrote (see `owner_of`)."""
    state = [f"{STATE_DIR}/{name}" for name in os.listdir(os.path.join(root, STATE_DIR))]
    own = [rel for rel in state if owner_of(rel) == rank]
    if rank == 0:
        own.append(OBJECTS_NAME)
    if wrote_rank_objects:
        own.append(rank_objects_name(rank))
    return own


def mismatch(relative: str, expected: str, got: str) -> str:
    return f"{relative}: expected {HASH_ALGORITHM} {expected} (recorded at save), got {got}"


def corrupt(where: str, problems: list[str]) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"checkpoint {where} is corrupt, its bytes changed after the save (disk or transfer "
        f"damage): {'; '.join(problems)}; load an earlier checkpoint"
    )


def read_checked(path: str, relative: str, expected: str | None, where: str) -> bytes:
    """The bytes of a checkpoint file read whole, checked against its recorded hash (if any)."""
    with open(path, "rb") as file:
        data = file.read()
    if expected is not None and (got := xxhash.xxh3_64_hexdigest(data)) != expected:
        raise corrupt(where, [mismatch(relative, expected, got)])
    return data


class HashingStream(io.RawIOBase):
    """A read-only view of a file that hashes every byte once, in order, however it is read:
    a read past what is hashed so far first hashes the bytes before it, and `finish` the rest."""

    def __init__(self, raw: io.BufferedIOBase) -> None:
        super().__init__()
        self._raw = raw
        self._hasher = xxhash.xxh3_64()
        self._hashed = 0  # bytes [0, _hashed) are in the hash
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos}.get(whence)
        self._pos = (self._raw.seek(0, io.SEEK_END) if base is None else base) + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        data = self.read_range(self._pos, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read_range(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of the file (fewer at its end)."""
        if offset > self._hashed:
            self._hash_until(offset)
        self._raw.seek(offset)
        data = self._raw.read(length)
        end = offset + len(data)
        if offset <= self._hashed < end:
            self._hasher.update(memoryview(data)[self._hashed - offset :])
            self._hashed = end
        self._pos = end
        return data

    def finish(self) -> str:
        """Hash what is left of the file; the hex hash of the whole file."""
        self._hash_until(None)
        return self._hasher.hexdigest()

    def _hash_until(self, end: int | None) -> None:
        self._raw.seek(self._hashed)
        while end is None or self._hashed < end:
            chunk = self._raw.read(_CHUNK if end is None else min(_CHUNK, end - self._hashed))
            if not chunk:
                return
            self._hasher.update(chunk)
            self._hashed += len(chunk)


class CheckedReader(FileSystemReader):
    """DCP's reader of a local checkpoint's `state/` folder that checks the files it reads (see
    the module docstring for which rank checks what). `hashes` and `sizes` are the manifest's,
    keyed by paths relative to the checkpoint; with no hashes (format version 1) nothing is
    checked."""

    def __init__(
        self,
        state_dir: str,
        *,
        hashes: dict[str, str],
        sizes: dict[str, int],
        where: str,
        rank: int,
        world: int,
    ) -> None:
        super().__init__(state_dir)
        self.fs = _CheckingFileSystem(self)
        prefix = STATE_DIR + "/"
        self.where = where
        self.hashes = {k[len(prefix) :]: v for k, v in hashes.items() if k.startswith(prefix)}
        self.sizes = {k[len(prefix) :]: v for k, v in sizes.items() if k.startswith(prefix)}
        self.to_check = {  # .metadata: checked whole by `read_metadata`
            name
            for name in self.hashes
            if name != _METADATA and owner_of(prefix + name) % world == rank
        }
        self.checked: set[str] = set()
        self.problems: dict[str, str] = {}  # file name: what is wrong

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        """DCP's metadata (every rank reads it), checked before it is unpickled."""
        if _METADATA in self.hashes:
            path = os.path.join(self.path, _METADATA)
            read_checked(path, f"{STATE_DIR}/{_METADATA}", self.hashes[_METADATA], self.where)
        return super().read_metadata(*args, **kwargs)

    def read_data(self, plan: Any, planner: Any) -> Future[None]:
        """DCP's read, each file's chunks in file order (one pass); files this rank reads whole
        anyway are checked too. An error caused by a corrupt file waits for `verify`."""
        info = self.storage_data
        items = sorted(
            plan.items,
            key=lambda i: (info[i.storage_index].relative_path, info[i.storage_index].offset),
        )
        needed: dict[str, dict[int, int]] = {}
        for item in items:
            stored = info[item.storage_index]
            needed.setdefault(stored.relative_path, {})[stored.offset] = stored.length
        for name, chunks in needed.items():
            if name in self.hashes and sum(chunks.values()) >= self.sizes.get(name, 1 << 62):
                self.to_check.add(name)
        try:
            return super().read_data(dataclasses.replace(plan, items=items), planner)
        except Exception:
            if not self.problems:
                raise
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def _slice_file(self, file: Any, sinfo: Any) -> Any:
        if isinstance(file, HashingStream):  # one read of the chunk, hashed in passing
            return io.BytesIO(file.read_range(sinfo.offset, sinfo.length))
        return super()._slice_file(file, sinfo)

    def record(self, name: str, got: str) -> None:
        self.checked.add(name)
        if got != self.hashes[name]:
            self.problems[name] = mismatch(f"{STATE_DIR}/{name}", self.hashes[name], got)

    def verify(self) -> None:
        """Check the files this rank must check but has not read (a full read of each), then
        raise `CorruptCheckpointError` if any file of this rank's share did not match."""
        for name in sorted(self.to_check - self.checked):
            self.record(name, hash_file(os.path.join(self.path, name)))
        if self.problems:
            raise corrupt(self.where, list(self.problems.values()))


class _CheckingFileSystem(FileSystem):
    """DCP's local file system, opening the files its reader must check as `HashingStream`s."""

    def __init__(self, reader: CheckedReader) -> None:
        super().__init__()
        self._reader = reader

    @contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[Any]:
        name = os.path.relpath(path, self._reader.path).replace(os.sep, "/")
        if mode != "rb" or name not in self._reader.to_check:
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        with open(path, "rb") as raw:
            stream = HashingStream(raw)
            try:
                yield stream
            finally:
                self._reader.record(name, stream.finish())
