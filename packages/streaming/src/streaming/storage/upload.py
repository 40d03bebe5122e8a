"""`Uploader`: a writer's background uploads of shards and the index to one remote folder.

    uploader = Uploader("s3://bucket/dataset")     # checks the bucket and credentials now
    uploader.upload("/tmp/x/shard.00000.mds", "shard.00000.mds")   # returns at once
    ...
    uploader.wait()                                # all shards are up (or the first error)
    uploader.upload("/tmp/x/index.json", "index.json")
    uploader.close()

Uploads run in a few threads and are retried with backoff; two uploads of the same name run in
the order they were queued, so a rewritten `index.json` never loses to its older self. The first
failure is raised by the next `upload`, `wait` or `close` and every call after that.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from types import TracebackType
from typing import Any

from streaming.errors import StorageError
from streaming.storage.download import DEFAULT_TIMEOUT
from streaming.storage.retry import DEFAULT_RETRIES, Backoff, call_with_retries
from streaming.storage.stores import get_store
from streaming.storage.urls import join_url

__all__ = ["Uploader"]


class Uploader:
    """Uploads local files into the folder `remote` (a URL or local path) in background threads."""

    def __init__(
        self,
        remote: str,
        *,
        max_workers: int = 4,
        retries: int = DEFAULT_RETRIES,
        timeout: float | None = DEFAULT_TIMEOUT,
        backoff: Backoff | None = None,
        check: bool = True,
        **storage_options: Any,
    ) -> None:
        """`check`: ask the store now whether the bucket exists and the credentials work (a
        local remote folder is created), so a bad `out=` fails before any shard is written."""
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1; got {max_workers}")
        self.remote = os.fspath(remote)
        self._store = get_store(self.remote, timeout=timeout, **storage_options)
        self._retries = retries
        self._backoff = backoff
        if check:
            call_with_retries(
                lambda: self._store.check(self.remote),
                url=self.remote,
                action="check",
                retries=retries,
                backoff=backoff,
            )
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers, thread_name_prefix="streaming-upload"
        )
        self._pending: list[concurrent.futures.Future[None]] = []
        self._latest: dict[str, concurrent.futures.Future[None]] = {}
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._closed = False

    def exists(self, basename: str) -> bool:
        """Whether `remote/basename` exists (asked now, with retries)."""
        url = join_url(self.remote, basename)
        return call_with_retries(
            lambda: self._store.exists(url),
            url=url,
            action="look up",
            retries=self._retries,
            backoff=self._backoff,
        )

    def delete(self, basename: str) -> None:
        """Delete `remote/basename` now (with retries); a missing object is fine."""
        url = join_url(self.remote, basename)
        call_with_retries(
            lambda: self._store.delete(url),
            url=url,
            action="delete",
            retries=self._retries,
            backoff=self._backoff,
        )

    def upload(
        self, local_path: str | os.PathLike[str], basename: str, *, keep_local: bool = True
    ) -> None:
        """Queue an upload of `local_path` to `remote/basename`; delete the local file after it
        succeeds unless `keep_local`. Raises the first failure of an earlier upload, if any."""
        self._raise_failure()
        if self._closed:
            raise RuntimeError(f"Uploader for {self.remote} is closed; cannot upload {basename!r}")
        url = join_url(self.remote, basename)
        with self._lock:
            previous = self._latest.get(basename)
            future = self._pool.submit(
                self._upload_one, os.fspath(local_path), url, previous, keep_local
            )
            self._latest[basename] = future
            self._pending.append(future)
        future.add_done_callback(self._note_failure)

    def wait(self) -> None:
        """Block until every queued upload finished; raise the first failure (names the URL)."""
        with self._lock:
            pending, self._pending = self._pending, []
        concurrent.futures.wait(pending)
        self._raise_failure()

    def close(self) -> None:
        """Wait for the queued uploads, stop the threads and raise the first failure, if any."""
        if self._closed:
            self._raise_failure()
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> Uploader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:  # leave the original error alone; drop uploads not yet started
            self._closed = True
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _upload_one(
        self,
        local_path: str,
        url: str,
        previous: concurrent.futures.Future[None] | None,
        keep_local: bool,
    ) -> None:
        if previous is not None:
            concurrent.futures.wait([previous])  # same name: keep the queued order
        try:
            call_with_retries(
                lambda: self._store.put_file(local_path, url),
                url=url,
                action="upload to",
                retries=self._retries,
                backoff=self._backoff,
            )
            if not keep_local:
                os.remove(local_path)
        except StorageError:
            raise
        except Exception as err:
            raise StorageError(f"could not upload {local_path!r} to {url}: {err}") from err

    def _note_failure(self, future: concurrent.futures.Future[None]) -> None:
        if future.cancelled():
            return
        err = future.exception()
        if err is not None:
            with self._lock:
                if self._error is None:
                    self._error = err

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error
