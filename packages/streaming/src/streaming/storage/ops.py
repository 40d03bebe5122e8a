"""One-call object operations with retries: upload, read, test, list and delete by URL.

Each takes a full URL (or local path), `retries`, `timeout`, `backoff` and the store's
`storage_options`, finds the store with `get_store` and retries transient failures; permanent
ones (`RemoteNotFoundError`, `BucketNotFoundError`, `CredentialsError`) raise at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from streaming.storage.download import DEFAULT_TIMEOUT
from streaming.storage.retry import DEFAULT_RETRIES, Backoff, call_with_retries
from streaming.storage.stores import ObjectStore, get_store

__all__ = [
    "delete_object",
    "list_objects",
    "object_exists",
    "read_bytes",
    "upload_bytes",
    "upload_file",
]

T = TypeVar("T")


def _run(
    url: str,
    action: str,
    op: Callable[[ObjectStore], T],
    retries: int,
    timeout: float | None,
    backoff: Backoff | None,
    options: dict[str, Any],
) -> T:
    store = get_store(url, timeout=timeout, **options)
    return call_with_retries(
        lambda: op(store), url=url, action=action, retries=retries, backoff=backoff
    )


def upload_file(
    local_path: str | os.PathLike[str],
    remote_url: str,
    *,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = DEFAULT_TIMEOUT,
    backoff: Backoff | None = None,
    **storage_options: Any,
) -> None:
    """Store the file `local_path` as `remote_url` (whole; readers never see part of it)."""
    path = os.fspath(local_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cannot upload {path!r} to {remote_url}: no such local file")
    _run(
        remote_url,
        "upload to",
        lambda store: store.put_file(path, remote_url),
        retries,
        timeout,
        backoff,
        storage_options,
    )


def upload_bytes(
    data: bytes,
    remote_url: str,
    *,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = DEFAULT_TIMEOUT,
    backoff: Backoff | None = None,
    **storage_options: Any,
) -> None:
    """Store `data` as `remote_url`."""
    _run(
        remote_url,
        "upload to",
        lambda store: store.put_bytes(bytes(data), remote_url),
        retries,
        timeout,
        backoff,
        storage_options,
    )


def read_bytes(
    remote_url: str,
    *,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = DEFAULT_TIMEOUT,
    backoff: Backoff | None = None,
    **storage_options: Any,
) -> bytes:
    """The bytes of the object at `remote_url` (no local copy is kept)."""
    return _run(
        remote_url,
        "read",
        lambda store: store.get_bytes(remote_url),
        retries,
        timeout,
        backoff,
        storage_options,
    )


def object_exists(
    remote_url: str,
    *,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = DEFAULT_TIMEOUT,
    backoff: Backoff | None = None,
    **storage_options: Any,
) -> bool:
    """Whether the object exists; a missing bucket raises `BucketNotFoundError`."""
    return _run(
        remote_url,
        "look up",
        lambda store: store.exists(remote_url),
        retries,
        timeout,
        backoff,
        storage_options,
    )


def list_objects(
    prefix: str,
    *,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = DEFAULT_TIMEOUT,
    backoff: Backoff | None = None,
    **storage_options: Any,
) -> list[str]:
    """Sorted URLs of every object whose URL starts with `prefix` (`s3://b/run1/` -> all in it)."""
    return _run(
        prefix, "list", lambda store: store.list(prefix), retries, timeout, backoff, storage_options
    )


def delete_object(
    remote_url: str,
    *,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = DEFAULT_TIMEOUT,
    backoff: Backoff | None = None,
    **storage_options: Any,
) -> None:
    """Remove the object; a missing object is not an error."""
    _run(
        remote_url,
        "delete",
        lambda store: store.delete(remote_url),
        retries,
        timeout,
        backoff,
        storage_options,
    )
