"""Every error the streaming package raises on bad input, so callers can catch them by kind.

Each message names the thing that is wrong (the shard, the URL, the column, the key) and what was
expected; the classes only make them catchable. All derive from `StreamingError`.
"""

from __future__ import annotations

__all__ = [
    "BucketNotFoundError",
    "CredentialsError",
    "HashMismatchError",
    "IndexFormatError",
    "RemoteNotFoundError",
    "SampleError",
    "ShardCorruptError",
    "ShardTruncatedError",
    "StorageError",
    "StreamingError",
    "UnsafeEncodingError",
    "UnsafePathError",
]


class StreamingError(Exception):
    """Base class of every error raised by `streaming` for bad data, configuration or storage."""


class IndexFormatError(StreamingError, ValueError):
    """`index.json` is unreadable, of an unknown format version, or describes shards wrongly."""


class UnsafePathError(IndexFormatError):
    """A shard basename in `index.json` is absolute or climbs out of the dataset folder (`..`)."""


class ShardCorruptError(StreamingError, ValueError):
    """A shard's bytes do not decode as the index describes them."""


class ShardTruncatedError(ShardCorruptError):
    """A shard file is shorter than the index says."""


class HashMismatchError(ShardCorruptError):
    """A shard's bytes do not match the hash recorded in `index.json`."""


class UnsafeEncodingError(StreamingError, ValueError):
    """A column's encoding (`pkl`) would run code from the data, and the reader did not opt in."""


class SampleError(StreamingError, ValueError):
    """A sample written to `MDSWriter` lacks a column, has an extra one, or a value of the wrong type."""


class StorageError(StreamingError, OSError):
    """An object store or filesystem operation failed after its retries."""


class RemoteNotFoundError(StorageError, FileNotFoundError):
    """A remote object (a shard, `index.json`) does not exist."""


class BucketNotFoundError(StorageError):
    """The bucket named in an `s3://` URL does not exist."""


class CredentialsError(StorageError, PermissionError):
    """The object store rejected the credentials (missing, wrong key or signature, no access)."""
