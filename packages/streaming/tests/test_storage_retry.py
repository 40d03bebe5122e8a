"""Retries: exponential backoff with full jitter on transient failures only, with the delays
recorded by an injected sleep (the tests never wait)."""

from __future__ import annotations

import random
import socket

import pytest

from streaming.errors import (
    BucketNotFoundError,
    CredentialsError,
    RemoteNotFoundError,
    StorageError,
)
from streaming.storage import (
    STORES,
    Backoff,
    LocalStore,
    TransientStorageError,
    Uploader,
    call_with_retries,
    download,
    read_bytes,
)
from streaming.storage.s3_errors import translate_s3_error


class Sleeps(list):
    """An injectable sleep that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_backoff_grows_exponentially_up_to_the_cap():
    top = Backoff(base=0.5, cap=4.0, random=lambda: 1.0)
    assert [top.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    half = Backoff(base=0.5, cap=4.0, random=lambda: 0.5)
    assert [half.delay(n) for n in range(4)] == [0.25, 0.5, 1.0, 2.0]


def test_backoff_is_fully_jittered():
    jittered = Backoff(base=1.0, cap=100.0, random=random.Random(0).random)
    delays = [[jittered.delay(n) for n in range(6)] for _ in range(200)]
    for n in range(6):
        column = [row[n] for row in delays]
        assert all(0.0 <= delay <= 2.0**n for delay in column)  # U(0, base * 2**n)
        assert len(set(column)) == 200  # no two waits alike: ranks do not retry in lockstep
        assert 0.3 * 2.0**n < sum(column) / 200 < 0.7 * 2.0**n  # mean near half the ceiling
    with pytest.raises(ValueError, match="base and cap"):
        Backoff(base=-1.0)


def test_transient_failures_are_retried_with_growing_delays():
    sleeps = Sleeps()
    failures = iter([TransientStorageError("503 SlowDown")] * 3)

    def flaky():
        for failure in failures:
            raise failure
        return "ok"

    backoff = Backoff(base=0.5, cap=30.0, sleep=sleeps, random=lambda: 1.0)
    assert (
        call_with_retries(flaky, url="s3://b/k", action="download", retries=5, backoff=backoff)
        == "ok"
    )
    assert sleeps == [0.5, 1.0, 2.0]


def test_giving_up_names_the_url_and_the_attempts():
    sleeps = Sleeps()
    calls = []

    def always_down():
        calls.append(1)
        raise TransientStorageError("connection refused")

    with pytest.raises(StorageError, match=r"download s3://b/k: gave up after 4 attempts") as info:
        call_with_retries(
            always_down, url="s3://b/k", action="download", retries=3, backoff=Backoff(sleep=sleeps)
        )
    assert not isinstance(info.value, TransientStorageError)  # callers do not retry it again
    assert isinstance(info.value.__cause__, TransientStorageError)
    assert len(calls) == 4 and len(sleeps) == 3


@pytest.mark.parametrize(
    "error", [RemoteNotFoundError, BucketNotFoundError, CredentialsError, StorageError]
)
def test_permanent_failures_are_not_retried(error):
    sleeps = Sleeps()
    calls = []

    def broken():
        calls.append(1)
        raise error("s3://b/k: permanent")

    with pytest.raises(error):
        call_with_retries(
            broken, url="s3://b/k", action="download", retries=5, backoff=Backoff(sleep=sleeps)
        )
    assert len(calls) == 1 and sleeps == []


class _FlakyStore(LocalStore):
    """A local store whose first `failures` calls of each kind fail transiently."""

    failures = 2
    calls: list[str] = []

    def get_file(self, url: str, local_path: str) -> None:
        self.calls.append("get")
        with open(local_path, "wb") as file:
            file.write(b"half")  # a failed attempt leaves a partial temp file behind
        if self.calls.count("get") <= self.failures:
            raise TransientStorageError(f"{url}: connection reset")
        super().get_file(url.removeprefix("flaky://"), local_path)

    def put_file(self, local_path: str, url: str) -> None:
        self.calls.append("put")
        if self.calls.count("put") <= self.failures:
            raise TransientStorageError(f"{url}: 503 SlowDown")
        super().put_file(local_path, url.removeprefix("flaky://"))

    def check(self, url: str) -> None:
        pass


@pytest.fixture
def flaky_store(monkeypatch):
    store = type("Flaky", (_FlakyStore,), {"calls": []})  # fresh class: fresh cached instance
    monkeypatch.setitem(STORES, "flaky", store)
    return store


def test_download_retries_and_lands_whole(flaky_store, tmp_path):
    (tmp_path / "remote.bin").write_bytes(b"complete shard")
    sleeps = Sleeps()
    path = download(
        f"flaky://{tmp_path}/remote.bin",
        tmp_path / "cache" / "shard.mds",
        backoff=Backoff(sleep=sleeps, random=lambda: 1.0),
    )
    assert open(path, "rb").read() == b"complete shard"
    assert flaky_store.calls == ["get"] * 3 and sleeps == [0.5, 1.0]
    assert sorted((tmp_path / "cache").iterdir()) == [tmp_path / "cache" / "shard.mds"]


def test_uploader_retries_transient_failures(flaky_store, tmp_path):
    (tmp_path / "a").write_bytes(b"aa")
    sleeps = Sleeps()
    with Uploader(f"flaky://{tmp_path}/remote", backoff=Backoff(sleep=sleeps)) as uploader:
        uploader.upload(str(tmp_path / "a"), "a.bin")
    assert (tmp_path / "remote" / "a.bin").read_bytes() == b"aa"
    assert flaky_store.calls == ["put"] * 3 and len(sleeps) == 2


def test_unreachable_endpoint_is_retried_then_named(s3_bucket, monkeypatch):
    with socket.socket() as probe:  # a port on 127.0.0.1 where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = Sleeps()
    with pytest.raises(
        StorageError, match=rf"read {s3_bucket}/k: gave up after 3 attempts"
    ) as info:
        read_bytes(
            f"{s3_bucket}/k",
            retries=2,
            backoff=Backoff(sleep=sleeps),
            endpoint_url=f"http://127.0.0.1:{port}",
        )
    assert f"127.0.0.1:{port}" in str(info.value)
    assert len(sleeps) == 2


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("NoSuchKey", 404, RemoteNotFoundError),
        ("404", 404, RemoteNotFoundError),
        ("NoSuchBucket", 404, BucketNotFoundError),
        ("InvalidAccessKeyId", 403, CredentialsError),
        ("SignatureDoesNotMatch", 403, CredentialsError),
        ("AccessDenied", 403, CredentialsError),
        ("ExpiredToken", 400, CredentialsError),
        ("SlowDown", 503, TransientStorageError),
        ("InternalError", 500, TransientStorageError),
        ("ServiceUnavailable", 503, TransientStorageError),
        ("Throttling", 400, TransientStorageError),
        ("RequestTimeout", 400, TransientStorageError),
        ("", 502, TransientStorageError),
        ("", 429, TransientStorageError),
        ("InvalidArgument", 400, StorageError),
    ],
)
def test_s3_errors_are_sorted_into_transient_and_permanent(code, status, kind):
    mapped = translate_s3_error(_client_error(code, status), "s3://bucket/key", endpoint="E")
    assert type(mapped) is kind
    assert "s3://bucket/key" in str(mapped) or "bucket 'bucket'" in str(mapped)


def test_botocore_network_errors_are_transient():
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    for err in (
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:9"),
        ResponseStreamingError(error="reset"),
        ConnectionResetError(),
    ):
        assert type(translate_s3_error(err, "s3://b/k", endpoint="E")) is TransientStorageError
    assert (
        type(translate_s3_error(NoCredentialsError(), "s3://b/k", endpoint="E")) is CredentialsError
    )
    assert translate_s3_error(ValueError("ours"), "s3://b/k", endpoint="E") is None
