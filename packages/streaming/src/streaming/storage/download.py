"""Downloads that land atomically and happen once per node, and the dataset index fetch.

`download(url, local_path)` returns at once if `local_path` exists. Otherwise it takes an
exclusive `flock` on a hidden lock file beside `local_path` (`.<name>.lock`); every thread and
process of the node asking for the same file waits on it, and the first to hold it fetches the
object into a unique temp file (`.<name>.<pid>-<random>.tmp`), fsyncs it and renames it into
place; the others then find the file and return. A reader therefore sees the whole file or none.

Crash safety: the OS drops a dead process's flock, and the holder writes the name of its temp
file into the lock file, so the next holder deletes a temp file left by a crash before it starts.
The holder removes the lock file before it unlocks; a waiter that then gets the lock sees that
the file it locked is gone and locks the current one, so there is one holder at a time and no
lock file outlives a run that did not crash. Nothing lives outside the destination folder: two
jobs or two datasets on one machine share nothing but the files they both want. POSIX only
(fcntl); the folder must be on a filesystem where flock works (local disks, most NFS mounts).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
from collections.abc import Callable
from types import TracebackType
from typing import Any

from streaming.errors import RemoteNotFoundError
from streaming.storage.retry import DEFAULT_RETRIES, Backoff, call_with_retries
from streaming.storage.stores import ObjectStore, get_store
from streaming.storage.urls import join_url

__all__ = [
    "DEFAULT_TIMEOUT",
    "INDEX_NAME",
    "discard",
    "download",
    "file_identity",
    "open_dataset_index",
    "produce_once",
]

DEFAULT_TIMEOUT = 60.0  # seconds a single connect or read may stall before it counts as failed
INDEX_NAME = "index.json"


def download(
    remote_url: str,
    local_path: str | os.PathLike[str],
    *,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = DEFAULT_TIMEOUT,
    backoff: Backoff | None = None,
    **storage_options: Any,
) -> str:
    """Fetch `remote_url` to `local_path` once per node, atomically; return `local_path`.

    Transient failures are retried `retries` times with `backoff` (exponential, full jitter);
    a missing object or bucket or refused credentials raise at once (`RemoteNotFoundError`,
    `BucketNotFoundError`, `CredentialsError`), naming the URL. `storage_options` go to the
    store (endpoint_url, aws_access_key_id, ...; see `streaming.storage.S3Store`).
    """
    local_path = os.fspath(local_path)
    if os.path.exists(local_path):
        return local_path
    store = get_store(remote_url, timeout=timeout, **storage_options)

    def fetch(tmp: str) -> None:
        call_with_retries(
            lambda: _fetch(store, remote_url, tmp),
            url=remote_url,
            action="download",
            retries=retries,
            backoff=backoff,
        )

    return produce_once(local_path, fetch)


def produce_once(local_path: str | os.PathLike[str], make: Callable[[str], None]) -> str:
    """Create `local_path` once per node, atomically: `make(tmp)` writes a temp file beside it.

    Returns at once if the file exists. Otherwise the first caller (thread or process) to take
    the lock runs `make` and renames its output into place; the others wait and then see the
    file. If `make` raises, nothing appears at `local_path` and the error propagates.
    """
    local_path = os.fspath(local_path)
    if os.path.exists(local_path):
        return local_path
    with _NodeLock(local_path) as lock:
        if os.path.exists(local_path):  # another thread or process made it while we waited
            return local_path
        lock.remove_stale_temp()
        tmp = lock.new_temp()
        try:
            make(tmp)
            os.replace(tmp, local_path)
        except BaseException:
            _remove_quietly(tmp)
            lock.forget_temp()
            raise
    return local_path


def file_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, or None if there is none: which file a name meant."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def discard(path: str | os.PathLike[str], identity: tuple[int, int] | None = None) -> bool:
    """Remove a damaged local copy so that `produce_once`/`download` make it again.

    Takes the node lock, so it never removes a file while another process makes it; with
    `identity` (from `file_identity`), only that very file goes: if another process already
    replaced it, the replacement stays. Returns whether a file was removed.
    """
    path = os.fspath(path)
    with _NodeLock(path):
        current = file_identity(path)
        if current is None or (identity is not None and current != identity):
            return False
        _remove_quietly(path)
        return True


def _fetch(store: ObjectStore, url: str, tmp: str) -> None:
    store.get_file(url, tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_dataset_index(
    remote: str | None,
    local: str | os.PathLike[str],
    *,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = DEFAULT_TIMEOUT,
    backoff: Backoff | None = None,
    **storage_options: Any,
) -> bytes:
    """The bytes of the dataset's `index.json`, downloaded into `local` first if `remote` is set.

    A dataset's first contact with its store, so its errors are the ones users meet first: a
    missing bucket (`BucketNotFoundError`), refused credentials (`CredentialsError`) or no
    `index.json` (`RemoteNotFoundError`), each naming the URL and what to check. An `index.json`
    already in `local` is used as it is (like mosaicml-streaming).
    """
    local = os.fspath(local)
    path = os.path.join(local, INDEX_NAME)
    if remote is not None:
        url = join_url(remote, INDEX_NAME)
        try:
            download(
                url, path, retries=retries, timeout=timeout, backoff=backoff, **storage_options
            )
        except RemoteNotFoundError as err:
            raise RemoteNotFoundError(
                f"no {INDEX_NAME} at {url}: check that {remote} is the folder MDSWriter wrote "
                f"(it holds {INDEX_NAME} and the shards) [{err}]"
            ) from err
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise RemoteNotFoundError(
            f"no {INDEX_NAME} in the local folder {local!r}: expected a dataset written by "
            "MDSWriter there, or a remote to download it from"
        ) from None


def _hidden(name: str, suffix: str) -> str:
    """`.<name>.<suffix>`, with an over-long name replaced by its hash (names stay < 255 bytes)."""
    if len(name.encode()) > 200:
        name = hashlib.sha1(name.encode()).hexdigest()
    return f".{name}.{suffix}"


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class _NodeLock:
    """An exclusive flock on `.<name>.lock` beside a file; it records the holder's temp file."""

    def __init__(self, local_path: str) -> None:
        self.folder, self.name = os.path.split(os.path.abspath(local_path))
        self.path = os.path.join(self.folder, _hidden(self.name, "lock"))
        self.fd = -1

    def __enter__(self) -> _NodeLock:
        os.makedirs(self.folder, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # waits; a dead holder's lock is gone already
                held = os.fstat(fd)
                current = os.stat(self.path)
            except FileNotFoundError:  # removed by the holder we waited for: lock the new one
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                self.fd = fd
                return self
            os.close(fd)  # we waited on a lock file that was since replaced: start over

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Remove the lock file while still holding it (waiters on it notice and lock the next
        # one), then unlock explicitly: a child forked meanwhile shares the open file and would
        # keep it locked until it exits if we only closed our descriptor.
        try:
            _remove_quietly(self.path)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)

    def remove_stale_temp(self) -> None:
        """Delete the temp file a crashed holder left (its name is in the lock file)."""
        recorded = os.pread(self.fd, 4096, 0).decode("utf-8", "replace").strip()
        name = os.path.basename(recorded)
        prefix = _hidden(self.name, "")
        if name.startswith(prefix) and name.endswith(".tmp"):
            _remove_quietly(os.path.join(self.folder, name))
        self.forget_temp()

    def new_temp(self) -> str:
        """A unique temp path beside the file, recorded in the lock file before it is created."""
        name = _hidden(self.name, f"{os.getpid()}-{secrets.token_hex(6)}.tmp")
        data = name.encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        return os.path.join(self.folder, name)

    def forget_temp(self) -> None:
        os.ftruncate(self.fd, 0)
