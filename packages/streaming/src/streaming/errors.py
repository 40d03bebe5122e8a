"""Every error the streaming package raises on bad input, so callers can catch them by kind.

Each message names the thing that is wrong (the shard, the URL, the column, the key) and what was
expected; the classes only make them catchable. All derive from `StreamingError`, and each also
derives from what mosaicml-streaming raises in the same case, so that code written against it
catches ours (`IndexJSONError` is a `json.JSONDecodeError`, `DatasetNotFoundError` a
`RuntimeError` as well as a `FileNotFoundError`, `SampleError` a `KeyError` and an
`AttributeError`, ...).
"""

from __future__ import annotations

import json

__all__ = [
    "BucketNotFoundError",
    "CacheConflictError",
    "CredentialsError",
    "DatasetNotFoundError",
    "EmptyDatasetError",
    "HashMismatchError",
    "IndexFormatError",
    "IndexJSONError",
    "RemoteNotFoundError",
    "SampleError",
    "ShardCorruptError",
    "ShardTruncatedError",
    "StorageError",
    "StreamingError",
    "UnsafeEncodingError",
    "UnsafePathError",
    "UnsupportedEncodingError",
]


class StreamingError(Exception):
    """Base class of every error raised by `streaming` for bad data, configuration or storage."""


class IndexFormatError(StreamingError, ValueError):
    """`index.json` is unreadable, of an unknown format version, or describes shards wrongly."""


class IndexJSONError(IndexFormatError, json.JSONDecodeError):
    """`index.json` is not JSON (a `json.JSONDecodeError`, as mosaicml-streaming raises)."""


class DatasetNotFoundError(StreamingError, FileNotFoundError, RuntimeError):
    """A local dataset folder without `index.json` (mosaicml-streaming: a RuntimeError)."""


class EmptyDatasetError(StreamingError, ValueError, RuntimeError):
    """The streams' indexes list no samples (mosaicml-streaming: a RuntimeError)."""


class CacheConflictError(StreamingError, ValueError):
    """A local folder is already the cache of another remote for a live dataset, or two streams
    of one dataset would share a folder (mosaicml-streaming: "Reused local directory")."""


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


class SampleError(StreamingError, ValueError, KeyError, AttributeError):
    """A sample written to `MDSWriter` lacks a column, has an extra one, or a value of the wrong
    type (mosaicml-streaming: KeyError for a missing column, AttributeError for a wrong type)."""

    __str__ = Exception.__str__  # the message, not KeyError's quoted repr of it


class UnsupportedEncodingError(StreamingError, ValueError, TypeError):
    """A column encoding that does not exist (mosaicml-streaming's MDSWriter: a TypeError)."""


class StorageError(StreamingError, OSError):
    """An object store or filesystem operation failed after its retries."""


class RemoteNotFoundError(StorageError, FileNotFoundError):
    """A remote object (a shard, `index.json`) does not exist."""


class BucketNotFoundError(StorageError):
    """The bucket named in an `s3://` URL does not exist."""


class CredentialsError(StorageError, PermissionError):
    """The object store rejected the credentials (missing, wrong key or signature, no access)."""
