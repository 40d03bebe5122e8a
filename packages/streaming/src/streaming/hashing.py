"""Hash algorithms that `index.json` may record for a shard file, named as mosaicml-streaming names them.

An MDS index stores, for every shard file, a hex digest per algorithm listed in the dataset's
`hashes` (for example `{"sha1": "…", "xxh64": "…"}`). The names are hashlib's constructor names
(without the variable-length `shake_*`) and xxhash's algorithm names.

    >>> get_hash("xxh64", b"abc")
    '44bc2cf5ad770999'
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import xxhash

__all__ = ["HASHES", "check_hash_names", "get_hash", "get_hashes", "hash_file", "is_hash"]

# name -> constructor called as `constructor(data)`, whose result has `.hexdigest()`.
HASHES: dict[str, Callable[[Any], Any]] = {
    "blake2b": hashlib.blake2b,
    "blake2s": hashlib.blake2s,
    "md5": hashlib.md5,
    "sha1": hashlib.sha1,
    "sha224": hashlib.sha224,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
    "sha3_224": hashlib.sha3_224,
    "sha3_256": hashlib.sha3_256,
    "sha3_384": hashlib.sha3_384,
    "sha3_512": hashlib.sha3_512,
    "xxh32": xxhash.xxh32,
    "xxh64": xxhash.xxh64,
    "xxh128": xxhash.xxh128,
    "xxh3_64": xxhash.xxh3_64,
    "xxh3_128": xxhash.xxh3_128,
}


def _unknown(algo: object) -> ValueError:
    return ValueError(
        f"unknown hash algorithm {algo!r}; expected one of {', '.join(sorted(HASHES))}"
    )


def get_hashes() -> set[str]:
    """The names of every hash algorithm an index may record."""
    return set(HASHES)


def is_hash(algo: str) -> bool:
    """Whether `algo` names a hash algorithm an index may record."""
    return algo in HASHES


def get_hash(algo: str, data: Any) -> str:
    """Return the hex digest of `data` (any bytes-like object) under the algorithm `algo`."""
    func = HASHES.get(algo)
    if func is None:
        raise _unknown(algo)
    return func(data).hexdigest()


def check_hash_names(algos: Iterable[str] | None) -> list[str]:
    """Validate a writer's `hashes` argument and return it as a list.

    As mosaicml-streaming requires, the names must be known and listed in sorted order (the index
    records the list as given); we also reject repeats.
    """
    if algos is None:
        return []
    if isinstance(algos, str):
        raise TypeError(f"hashes must be a list of algorithm names, got the string {algos!r}")
    names = list(algos)
    for algo in names:
        if algo not in HASHES:
            raise _unknown(algo)
    if names != sorted(set(names)):
        raise ValueError(f"hashes must be unique and in sorted order, got {names}")
    return names


def hash_file(algos: Iterable[str], path: str, chunk: int = 1 << 22) -> dict[str, str]:
    """Hex digests of the file at `path` under each algorithm, reading it once in chunks."""
    hashers = {}
    for algo in algos:
        func = HASHES.get(algo)
        if func is None:
            raise _unknown(algo)
        hashers[algo] = func()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            for hasher in hashers.values():
                hasher.update(block)
    return {algo: hasher.hexdigest() for algo, hasher in hashers.items()}
