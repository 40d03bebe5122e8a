"""Downloads: atomic (temp file, then rename), once per node across threads and processes (the
real S3 server counts the GETs), crash-safe (a SIGKILLed download blocks nothing), and two jobs
sharing a cache folder without clashing."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

import pytest

from streaming.errors import StorageError
from streaming.storage import (
    DEFAULT_TIMEOUT,
    LocalStore,
    S3Store,
    download,
    get_store,
    is_partial_name,
    upload_bytes,
)

# Child processes are forked, as a data loader forks its workers: they start in milliseconds
# and inherit the test's patches. Each makes its own boto3 client (clients are not fork-safe).
FORK = multiprocessing.get_context("fork")


def _slow_s3_fetches(monkeypatch, delay):
    """Each S3 fetch first sleeps, so every other asker arrives while the lock is held."""
    real_get_file = S3Store.get_file

    def slow_get_file(self, url, path):
        time.sleep(delay)
        real_get_file(self, url, path)

    monkeypatch.setattr(S3Store, "get_file", slow_get_file)


def _child(urls, folder, barrier, threads):
    """One "rank": after the barrier, `threads` "dataloader workers" download every URL."""
    barrier.wait(timeout=60)
    errors = []

    def work():
        try:
            for url in urls:
                download(url, os.path.join(folder, url.rsplit("/", 1)[1]))
        except BaseException as err:
            errors.append(repr(err))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        sys.exit("; ".join(errors))


def _run_children(jobs, *, threads):
    """Fork one child per (urls, folder) job, release them together, return their exit codes."""
    barrier = FORK.Barrier(len(jobs))
    children = [
        FORK.Process(target=_child, args=(urls, str(folder), barrier, threads))
        for urls, folder in jobs
    ]
    for child in children:
        child.start()
    try:
        for child in children:
            child.join(timeout=60)
        return [child.exitcode for child in children]
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()


def _wait_for(path, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"the child never wrote {path}"
        time.sleep(0.005)


def _only_complete_files(folder):
    """The folder holds only finished files: no temp file and no lock file."""
    names = sorted(os.listdir(folder))
    assert not [name for name in names if is_partial_name(name)], names
    return names


# -- atomic -------------------------------------------------------------------------------------


def test_no_partial_file_is_ever_visible_at_the_final_path(tmp_path, monkeypatch):
    payload = os.urandom(1 << 20)
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "shard.mds").write_bytes(payload)
    final = tmp_path / "cache" / "shard.mds"
    seen = []

    def get_file_in_halves(self, url, tmp):
        with open(tmp, "wb") as file:
            file.write(payload[: len(payload) // 2])
            file.flush()
            seen.append((final.exists(), os.path.basename(tmp), os.path.dirname(tmp)))
            file.write(payload[len(payload) // 2 :])

    monkeypatch.setattr(LocalStore, "get_file", get_file_in_halves)
    download(str(tmp_path / "remote" / "shard.mds"), final)
    [(final_existed, tmp_name, tmp_folder)] = seen
    assert not final_existed  # half-way, the final path did not exist yet
    assert tmp_folder == str(final.parent) and is_partial_name(tmp_name)  # same folder: rename
    assert final.read_bytes() == payload
    assert _only_complete_files(final.parent) == ["shard.mds"]


def test_a_failed_download_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "shard.mds").write_bytes(b"whole shard")
    final = tmp_path / "cache" / "shard.mds"

    def failing_get_file(self, url, tmp):
        with open(tmp, "wb") as file:
            file.write(b"who")
        raise StorageError(f"{url}: connection dropped for good")

    with monkeypatch.context() as patch:
        patch.setattr(LocalStore, "get_file", failing_get_file)
        with pytest.raises(StorageError, match="dropped"):
            download(str(tmp_path / "remote" / "shard.mds"), final)
    assert not final.exists()
    assert not [name for name in os.listdir(final.parent) if name.endswith(".tmp")]
    download(str(tmp_path / "remote" / "shard.mds"), final)  # the next try is not blocked
    assert final.read_bytes() == b"whole shard"


def test_existing_file_returns_at_once_without_a_request(s3_bucket, s3_server, tmp_path):
    (tmp_path / "shard.mds").write_bytes(b"local copy")
    assert download(f"{s3_bucket}/shard.mds", tmp_path / "shard.mds") == str(tmp_path / "shard.mds")
    assert s3_server.requests(bucket=s3_bucket, key="shard.mds") == []


# -- once per node --------------------------------------------------------------------------------


def test_threads_asking_for_one_shard_fetch_it_once(s3_bucket, s3_server, tmp_path, monkeypatch):
    payload = os.urandom(100_000)
    upload_bytes(payload, f"{s3_bucket}/ds/shard.00000.mds")
    real_get_file = S3Store.get_file

    def slow_get_file(self, url, path):
        time.sleep(0.2)  # hold the lock while every other thread arrives
        real_get_file(self, url, path)

    monkeypatch.setattr(S3Store, "get_file", slow_get_file)
    barrier = threading.Barrier(16)
    results, errors = [], []

    def work():
        barrier.wait()
        try:
            results.append(
                download(f"{s3_bucket}/ds/shard.00000.mds", tmp_path / "shard.00000.mds")
            )
        except BaseException as err:
            errors.append(err)

    workers = [threading.Thread(target=work) for _ in range(16)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not errors and len(results) == 16
    assert (tmp_path / "shard.00000.mds").read_bytes() == payload
    assert len(s3_server.requests(method="GET", bucket=s3_bucket, key="ds/shard.00000.mds")) == 1
    assert _only_complete_files(tmp_path) == ["shard.00000.mds"]


def test_processes_and_threads_asking_for_one_shard_fetch_it_once(
    s3_bucket, s3_server, tmp_path, monkeypatch
):
    payload = os.urandom(200_000)
    url = f"{s3_bucket}/ds/shard.00000.mds"
    upload_bytes(payload, url)
    cache = tmp_path / "cache"
    _slow_s3_fetches(monkeypatch, 0.3)
    # 8 "ranks" x 4 "dataloader workers", all released at the same moment.
    assert _run_children([([url], cache)] * 8, threads=4) == [0] * 8
    assert (cache / "shard.00000.mds").read_bytes() == payload
    assert len(s3_server.requests(method="GET", bucket=s3_bucket, key="ds/shard.00000.mds")) == 1
    assert _only_complete_files(cache) == ["shard.00000.mds"]


def test_two_jobs_share_a_cache_folder_without_clashing(
    s3_bucket, s3_server, tmp_path, monkeypatch
):
    names = [f"shard.{i:05}.mds" for i in range(6)]
    payloads = {name: os.urandom(50_000) for name in names}
    for name in names:
        upload_bytes(payloads[name], f"{s3_bucket}/ds/{name}")
    upload_bytes(b"other dataset", f"{s3_bucket}/other/shard.00000.mds")
    urls = [f"{s3_bucket}/ds/{name}" for name in names]
    cache = tmp_path / "cache"
    _slow_s3_fetches(monkeypatch, 0.02)
    # Two jobs (2 ranks each) read the same dataset into one cache, in opposite orders; a third
    # reads another dataset into a sibling folder of the same cache.
    jobs = [
        (urls, cache),
        (urls[::-1], cache),
        (urls, cache),
        (urls[::-1], cache),
        ([f"{s3_bucket}/other/shard.00000.mds"], cache / "other"),
    ]
    assert _run_children(jobs, threads=2) == [0] * 5
    for name in names:
        assert (cache / name).read_bytes() == payloads[name]
        assert len(s3_server.requests(method="GET", bucket=s3_bucket, key=f"ds/{name}")) == 1
    assert _only_complete_files(cache) == sorted([*names, "other"])
    assert (cache / "other" / "shard.00000.mds").read_bytes() == b"other dataset"


def test_forked_children_make_their_own_client(s3_bucket, tmp_path):
    upload_bytes(b"a", f"{s3_bucket}/a")
    upload_bytes(b"b", f"{s3_bucket}/b")
    download(f"{s3_bucket}/a", tmp_path / "a")  # the parent now holds a client
    parent_client = get_store(f"{s3_bucket}/a", timeout=DEFAULT_TIMEOUT).client()
    child = FORK.Process(
        target=_child, args=([f"{s3_bucket}/b"], str(tmp_path), FORK.Barrier(1), 1)
    )
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert (tmp_path / "b").read_bytes() == b"b"
    assert get_store(f"{s3_bucket}/a", timeout=DEFAULT_TIMEOUT).client() is parent_client


# -- crashes ----------------------------------------------------------------------------------


def _hang_mid_download(url, path, ready):
    """Write part of the temp file, say so, and hang until killed."""

    def hanging_get_file(self, url, tmp):
        with open(tmp, "wb") as file:
            file.write(b"partial")
        open(ready, "w").close()
        time.sleep(600)

    S3Store.get_file = hanging_get_file  # only in this child
    download(url, path)


def test_a_killed_download_does_not_block_the_next(s3_bucket, s3_server, tmp_path):
    payload = os.urandom(100_000)
    url = f"{s3_bucket}/ds/shard.00000.mds"
    upload_bytes(payload, url)
    final = tmp_path / "cache" / "shard.00000.mds"
    ready = tmp_path / "ready"
    child = FORK.Process(target=_hang_mid_download, args=(url, str(final), str(ready)))
    child.start()
    try:
        _wait_for(ready)
        left = sorted(os.listdir(final.parent))
        assert len(left) == 2 and all(is_partial_name(name) for name in left), left  # lock, temp
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert child.exitcode == -signal.SIGKILL
    assert not final.exists()  # the partial temp never became the shard

    done = []
    worker = threading.Thread(target=lambda: done.append(download(url, final)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert done == [str(final)], "the dead process's lock blocked the next download"
    assert final.read_bytes() == payload
    assert _only_complete_files(final.parent) == ["shard.00000.mds"]  # its temp was cleaned
