"""Object stores: one small interface, a local-folder store and an S3 store, chosen by URL scheme.

    store = get_store("s3://bucket/prefix/index.json", endpoint_url="http://127.0.0.1:9000")
    store.get_file("s3://bucket/prefix/index.json", "/tmp/x")

`STORES` maps a scheme to its class (`""` and `file` are local paths). `get_store` keeps one
store per scheme, options and relevant environment in each process, so repeated calls reuse a
client; stores create their clients lazily and again after a fork. Stores make one attempt per
call and raise `TransientStorageError` or a permanent `StorageError` kind; the functions of
`streaming.storage` add the retries.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import threading
from collections.abc import Callable
from typing import Any, Protocol

from streaming.errors import CredentialsError, RemoteNotFoundError, StorageError
from streaming.storage.retry import TransientStorageError
from streaming.storage.s3 import S3_OPTIONS, S3Store
from streaming.storage.urls import local_path_of, scheme_of

__all__ = [
    "STORAGE_OPTIONS",
    "STORES",
    "LocalStore",
    "ObjectStore",
    "atomic_write",
    "get_store",
    "is_partial_name",
    "store_class",
    "write_bytes_atomic",
]


class ObjectStore(Protocol):
    """What every store does. URLs are full (`s3://bucket/key`, or a local path for LocalStore).

    Each method makes one attempt: it raises `TransientStorageError` when another attempt may
    succeed, `RemoteNotFoundError` / `BucketNotFoundError` / `CredentialsError` (never worth a
    retry), or `StorageError` for anything else; every message names the URL.
    """

    def get_file(self, url: str, local_path: str) -> None:
        """Write the object at `url` to `local_path` (overwritten; the caller makes it atomic)."""
        ...

    def get_bytes(self, url: str) -> bytes:
        """The object's bytes."""
        ...

    def put_file(self, local_path: str, url: str) -> None:
        """Store the file `local_path` as `url`; readers never see a partial object."""
        ...

    def put_bytes(self, data: bytes, url: str) -> None:
        """Store `data` as `url`; readers never see a partial object."""
        ...

    def exists(self, url: str) -> bool:
        """Whether the object exists (a missing bucket is an error, not False)."""
        ...

    def list(self, prefix: str) -> list[str]:
        """URLs of all objects whose URL starts with `prefix`, sorted."""
        ...

    def delete(self, url: str) -> None:
        """Remove the object; removing a missing object is not an error."""
        ...

    def check(self, url: str) -> None:
        """Raise now if `url`'s bucket is missing or the credentials are refused (a local folder
        is created instead)."""
        ...


# Errors of a local or network filesystem that may pass (NFS hiccups, interrupted calls).
_TRANSIENT_ERRNOS = {
    errno.EIO,
    errno.EAGAIN,
    errno.ETIMEDOUT,
    errno.ESTALE,
    errno.EINTR,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EBUSY,
}


def is_partial_name(name: str) -> bool:
    """Whether a file name is one of our in-progress temp or lock files (`.<name>.*.tmp|lock`)."""
    return name.startswith(".") and name.endswith((".tmp", ".lock"))


class LocalStore:
    """Files in a local (or network-mounted) folder, addressed by path or `file://` URL."""

    env_keys: tuple[str, ...] = ()

    def __init__(self, **options: Any) -> None:
        """Options meant for other stores (endpoint, credentials, timeout) are accepted, unused."""

    def get_file(self, url: str, local_path: str) -> None:
        source = local_path_of(url)
        try:
            shutil.copyfile(source, local_path)
        except OSError as err:
            raise _local_error(err, url, source, "read") from err

    def get_bytes(self, url: str) -> bytes:
        path = local_path_of(url)
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as err:
            raise _local_error(err, url, path, "read") from err

    def put_file(self, local_path: str, url: str) -> None:
        self._write(url, lambda tmp: shutil.copyfile(local_path, tmp))

    def put_bytes(self, data: bytes, url: str) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as file:
                file.write(data)

        self._write(url, write)

    def exists(self, url: str) -> bool:
        return os.path.isfile(local_path_of(url))

    def list(self, prefix: str) -> list[str]:
        path = local_path_of(prefix)
        # Prefix semantics as in S3: "dir/ds" also matches "dir/dsx/..."; "dir/ds/" only "ds".
        root = os.path.dirname(path) or "."
        as_url = scheme_of(prefix) == "file"
        found = []
        for folder, _, names in os.walk(root):
            for name in names:
                full = os.path.join(folder, name)
                if full.startswith(path) and not is_partial_name(name):
                    found.append("file://" + full if as_url else full)
        return sorted(found)

    def delete(self, url: str) -> None:
        path = local_path_of(url)
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise _local_error(err, url, path, "delete") from err

    def check(self, url: str) -> None:
        path = local_path_of(url)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as err:
            raise _local_error(err, url, path, "create folder") from err

    def _write(self, url: str, write: Any) -> None:
        path = local_path_of(url)
        try:
            atomic_write(path, write)
        except OSError as err:
            raise _local_error(err, url, path, "write") from err


def atomic_write(path: str, write: Callable[[str], Any]) -> None:
    """Create the local file `path` whole or not at all.

    `write(tmp)` fills a unique temp file beside it (its folder is created if missing); the temp
    file is fsynced and renamed into place, and removed if anything fails on the way.
    """
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        os.makedirs(folder, exist_ok=True)
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def write_bytes_atomic(path: str, data: bytes) -> None:
    """`atomic_write` of `data`."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as file:
            file.write(data)

    atomic_write(path, write)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _local_error(err: OSError, url: str, path: str, action: str) -> StorageError:
    if isinstance(err, FileNotFoundError) and err.filename == path:
        return RemoteNotFoundError(f"cannot {action} {url}: no such file {path!r}")
    if isinstance(err, PermissionError):
        return CredentialsError(f"cannot {action} {url}: permission denied on {err.filename!r}")
    if err.errno in _TRANSIENT_ERRNOS:
        return TransientStorageError(f"cannot {action} {url}: {err}")
    return StorageError(f"cannot {action} {url}: {err}")


STORES: dict[str, type[Any]] = {"": LocalStore, "file": LocalStore, "s3": S3Store}

# Every keyword a store accepts; other keys are an error naming them all (see get_store).
STORAGE_OPTIONS = frozenset({"timeout"} | S3_OPTIONS)

_cache: dict[tuple[Any, ...], ObjectStore] = {}
_cache_lock = threading.Lock()


def store_class(url: str) -> type[Any]:
    """The store class for `url`'s scheme; ValueError naming the supported schemes otherwise."""
    scheme = scheme_of(url)
    try:
        return STORES[scheme]
    except KeyError:
        supported = ", ".join(f"{name}://" for name in sorted(STORES) if name)
        raise ValueError(
            f"no object store for {url!r} (scheme {scheme!r}); supported: {supported} and local "
            "paths. GCS, R2, OCI and MinIO work through their S3 API: use s3://bucket/prefix with "
            "S3_ENDPOINT_URL (or endpoint_url=...) set to the provider's S3 endpoint"
        ) from None


def get_store(url: str, **options: Any) -> ObjectStore:
    """The store for `url` with these options, shared within the process (one client each)."""
    cls = store_class(url)
    unknown = sorted(set(options) - STORAGE_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown storage option(s) {', '.join(unknown)} for {url!r}; "
            f"expected some of: {', '.join(sorted(STORAGE_OPTIONS))}"
        )
    # The environment is part of the key: a changed S3_ENDPOINT_URL or key gets a new client.
    env = tuple(os.environ.get(name) for name in cls.env_keys)
    try:
        key = (cls, tuple(sorted(options.items())), env)
        hash(key)
    except TypeError:  # an unhashable option value: build a store just for this call
        return cls(**options)
    store = _cache.get(key)
    if store is None:
        with _cache_lock:
            store = _cache.setdefault(key, cls(**options))
    return store
