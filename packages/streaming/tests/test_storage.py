"""Storage: URLs, local and S3 round trips on a real S3 server (moto on 127.0.0.1), the clear
errors for a missing bucket, refused credentials and a missing index.json, and the Uploader."""

from __future__ import annotations

import os
import subprocess
import sys
import time

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
    S3Store,
    Uploader,
    delete_object,
    download,
    get_store,
    is_remote,
    list_objects,
    object_exists,
    open_dataset_index,
    parse_out,
    read_bytes,
    upload_bytes,
    upload_file,
)

NO_SLEEP = Backoff(sleep=lambda seconds: None)


def _no_retry_sleep(seconds: float) -> None:
    raise AssertionError(f"a permanent error was retried (asked to sleep {seconds} s)")


NEVER_RETRY = Backoff(sleep=_no_retry_sleep)


# -- URLs and out= ----------------------------------------------------------------------------


def test_is_remote():
    assert is_remote("s3://bucket/prefix")
    assert is_remote("S3://bucket")
    assert not is_remote("/data/mds")
    assert not is_remote("relative/dir")
    assert not is_remote("file:///data/mds")
    assert not is_remote("C:/odd/path")


def test_parse_out(tmp_path):
    assert parse_out(str(tmp_path)) == (str(tmp_path), None)
    assert parse_out(f"file://{tmp_path}") == (str(tmp_path), None)
    assert parse_out((str(tmp_path), "s3://b/p")) == (str(tmp_path), "s3://b/p")
    assert parse_out((str(tmp_path), None)) == (str(tmp_path), None)
    first, remote = parse_out("s3://b/p")
    second, _ = parse_out("s3://b/p")
    try:
        assert remote == "s3://b/p"
        assert first != second  # a fresh staging folder each time: two writers never share one
        assert os.path.isdir(first) and os.listdir(first) == []
    finally:
        os.rmdir(first)
        os.rmdir(second)


def test_parse_out_rejects_bad_input():
    with pytest.raises(ValueError, match=r"gs://b/p.*supported: .*s3://"):
        parse_out("gs://b/p")
    with pytest.raises(ValueError, match="hdfs"):
        parse_out(("/tmp/x", "hdfs://nn/p"))
    with pytest.raises(TypeError, match="out must be"):
        parse_out(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pair"):
        parse_out(("/a", "s3://b", "extra"))  # type: ignore[arg-type]


def test_unknown_storage_options_are_listed_at_once():
    with pytest.raises(ValueError, match="endpoint, secret_key") as info:
        get_store("s3://b/k", endpoint="x", secret_key="y", region_name="us-east-1")
    assert "endpoint_url" in str(info.value)  # says what was expected


# -- boto3 is optional --------------------------------------------------------------------------


def test_importing_storage_does_not_import_boto3():
    code = (
        "import sys, streaming.storage, streaming.testing.s3\n"
        "bad = [m for m in ('boto3', 'botocore', 'moto') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_s3_without_boto3_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'streaming\[s3\]'"):
        S3Store(endpoint_url="http://127.0.0.1:9").client()
    with pytest.raises(ImportError, match=r"streaming\[s3\]"):
        download("s3://b/k", str(tmp_path / "k"), endpoint_url="http://127.0.0.1:9/x")


# -- round trips --------------------------------------------------------------------------------


def _round_trip(remote: str, tmp_path) -> None:
    source = tmp_path / "source.bin"
    payload = os.urandom(3 << 20) + b"end"  # several read chunks
    source.write_bytes(payload)
    upload_file(source, f"{remote}/ds/shard.00000.mds")
    upload_bytes(b'{"shards": []}', f"{remote}/ds/index.json")
    upload_bytes(b"other", f"{remote}/dsx/index.json")

    local = tmp_path / "cache" / "shard.00000.mds"
    assert download(f"{remote}/ds/shard.00000.mds", local) == str(local)
    assert local.read_bytes() == payload
    assert open_dataset_index(f"{remote}/ds", tmp_path / "cache") == b'{"shards": []}'
    assert read_bytes(f"{remote}/ds/index.json") == b'{"shards": []}'
    assert sorted(os.listdir(tmp_path / "cache")) == ["index.json", "shard.00000.mds"]

    assert object_exists(f"{remote}/ds/index.json")
    assert not object_exists(f"{remote}/ds/missing.json")
    assert list_objects(f"{remote}/ds/") == [
        f"{remote}/ds/index.json",
        f"{remote}/ds/shard.00000.mds",
    ]
    assert list_objects(f"{remote}/ds") == [
        f"{remote}/ds/index.json",
        f"{remote}/ds/shard.00000.mds",
        f"{remote}/dsx/index.json",
    ]
    delete_object(f"{remote}/ds/index.json")
    delete_object(f"{remote}/ds/index.json")  # deleting twice is fine
    assert not object_exists(f"{remote}/ds/index.json")


def test_local_round_trip(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    _round_trip(str(remote), tmp_path)
    _round_trip_names = sorted(os.listdir(remote / "ds"))
    assert _round_trip_names == ["shard.00000.mds"]  # no temp files left by the writes


def test_file_url_round_trip(tmp_path):
    (tmp_path / "remote").mkdir()
    _round_trip(f"file://{tmp_path}/remote", tmp_path)


def test_s3_round_trip(s3_bucket, s3_server, tmp_path):
    _round_trip(s3_bucket, tmp_path)
    # Plain boto3 sees the same objects under the same environment.
    import boto3

    listed = boto3.client("s3").list_objects_v2(Bucket=s3_bucket[5:])["Contents"]
    assert sorted(item["Key"] for item in listed) == ["ds/shard.00000.mds", "dsx/index.json"]


def test_arguments_win_over_the_environment(s3_bucket, s3_server, tmp_path, monkeypatch):
    upload_bytes(b"x", f"{s3_bucket}/k")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    got = read_bytes(
        f"{s3_bucket}/k",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    assert got == b"x"


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
def test_aws_endpoint_variables_are_honored(s3_bucket, s3_server, monkeypatch, variable):
    upload_bytes(b"y", f"{s3_bucket}/k")
    for name in ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    monkeypatch.setenv(variable, s3_server.endpoint_url)
    assert get_store(s3_bucket).endpoint_url == s3_server.endpoint_url
    assert read_bytes(f"{s3_bucket}/k") == b"y"


# -- one clear error at start -----------------------------------------------------------------


def test_missing_bucket_is_one_clear_error(s3_bucket, s3_server, tmp_path):
    url = "s3://streaming-test-no-such-bucket/datasets/wiki"
    with pytest.raises(BucketNotFoundError) as info:
        open_dataset_index(url, tmp_path, backoff=NEVER_RETRY)
    message = str(info.value)
    assert "s3://streaming-test-no-such-bucket/datasets/wiki/index.json" in message
    assert "streaming-test-no-such-bucket" in message and s3_server.endpoint_url in message
    assert os.listdir(tmp_path) == []  # nothing half-written, no lock left behind
    with pytest.raises(BucketNotFoundError, match="streaming-test-no-such-bucket"):
        object_exists(f"{url}/index.json", backoff=NEVER_RETRY)
    with pytest.raises(BucketNotFoundError, match=url):
        Uploader(url, backoff=NEVER_RETRY)


def test_missing_index_is_one_clear_error(s3_bucket, s3_server, tmp_path):
    remote = f"{s3_bucket}/datasets/wiki"
    with pytest.raises(RemoteNotFoundError) as info:
        open_dataset_index(remote, tmp_path, backoff=NEVER_RETRY)
    assert f"no index.json at {remote}/index.json" in str(info.value)
    gets = s3_server.requests(method="GET", bucket=s3_bucket, key="datasets/wiki/index.json")
    assert len(gets) == 1  # a missing object is not retried
    assert os.listdir(tmp_path) == []


def test_missing_local_index_names_the_folder(tmp_path):
    with pytest.raises(
        RemoteNotFoundError, match=f"no index.json in the local folder '{tmp_path}'"
    ):
        open_dataset_index(None, tmp_path)
    with pytest.raises(RemoteNotFoundError, match="no index.json at"):
        open_dataset_index(str(tmp_path / "remote"), tmp_path / "cache")


def test_refused_credentials_are_one_clear_error(s3_bucket, s3_server, tmp_path):
    upload_bytes(b'{"version": 2}', f"{s3_bucket}/ds/index.json")
    remote = f"{s3_bucket}/ds"
    with s3_server.enforce_credentials() as good:
        # The test key of the environment does not exist for the IAM simulation.
        with pytest.raises(CredentialsError) as info:
            open_dataset_index(remote, tmp_path / "a", backoff=NEVER_RETRY)
        assert f"{remote}/index.json" in str(info.value)
        assert "InvalidAccessKeyId" in str(info.value) and "AWS_ACCESS_KEY_ID" in str(info.value)
        # A real key with the wrong secret.
        with pytest.raises(CredentialsError, match="SignatureDoesNotMatch"):
            open_dataset_index(
                remote,
                tmp_path / "b",
                backoff=NEVER_RETRY,
                aws_access_key_id=good["aws_access_key_id"],
                aws_secret_access_key="not-the-secret",
            )
        with pytest.raises(CredentialsError, match=remote):
            Uploader(remote, backoff=NEVER_RETRY)
        # The right key pair works.
        data = open_dataset_index(remote, tmp_path / "c", **good)
    assert data == b'{"version": 2}'
    refused = [r for r in s3_server.requests(method="GET", bucket=s3_bucket) if r.status == 403]
    assert len(refused) == 2  # one request each: refused credentials are not retried


# -- Uploader -----------------------------------------------------------------------------------


def test_uploader_to_s3(s3_bucket, tmp_path):
    remote = f"{s3_bucket}/out"
    staging = tmp_path / "staging"
    staging.mkdir()
    with Uploader(remote, max_workers=3) as uploader:
        for i in range(6):
            (staging / f"shard.{i:05}.mds").write_bytes(bytes([i]) * 1000)
            uploader.upload(
                str(staging / f"shard.{i:05}.mds"), f"shard.{i:05}.mds", keep_local=i % 2 == 0
            )
        uploader.wait()
        (staging / "index.json").write_bytes(b"{}")
        uploader.upload(str(staging / "index.json"), "index.json")
    names = [url.rsplit("/", 1)[1] for url in list_objects(f"{remote}/")]
    assert names == ["index.json"] + [f"shard.{i:05}.mds" for i in range(6)]
    assert read_bytes(f"{remote}/shard.00003.mds") == b"\x03" * 1000
    assert sorted(os.listdir(staging)) == ["index.json"] + [f"shard.{i:05}.mds" for i in (0, 2, 4)]


def test_uploader_to_local_folder(tmp_path):
    (tmp_path / "a").write_bytes(b"aa")
    uploader = Uploader(str(tmp_path / "remote" / "nested"))  # the folder is created at once
    assert os.path.isdir(tmp_path / "remote" / "nested")
    uploader.upload(str(tmp_path / "a"), "a.bin")
    uploader.close()
    assert (tmp_path / "remote" / "nested" / "a.bin").read_bytes() == b"aa"


def test_uploader_raises_the_first_failure_naming_the_url(s3_bucket, tmp_path):
    uploader = Uploader(f"{s3_bucket}/out")
    uploader.upload(str(tmp_path / "missing.mds"), "shard.00000.mds")
    with pytest.raises(StorageError, match=f"{s3_bucket}/out/shard.00000.mds"):
        uploader.wait()
    with pytest.raises(StorageError, match="shard.00000.mds"):  # and keeps raising it
        uploader.upload(str(tmp_path / "missing.mds"), "shard.00001.mds")
    with pytest.raises(StorageError):
        uploader.close()


class _SlowMemoryStore(LocalStore):
    """Records the order in which puts of each URL finish; the first put of a name is slow."""

    puts: list[tuple[str, bytes]] = []
    slow_once: set[str] = set()

    def put_file(self, local_path: str, url: str) -> None:
        with open(local_path, "rb") as file:
            data = file.read()
        if url not in self.slow_once:
            self.slow_once.add(url)
            time.sleep(0.2)
        self.puts.append((url, data))

    def check(self, url: str) -> None:
        pass


def test_uploader_keeps_the_order_of_uploads_of_one_name(monkeypatch, tmp_path):
    store = type("Store", (_SlowMemoryStore,), {"puts": [], "slow_once": set()})
    monkeypatch.setitem(STORES, "mem", store)
    for version in (1, 2, 3):
        (tmp_path / f"index{version}").write_bytes(b"v%d" % version)
    with Uploader("mem://b/ds", max_workers=4) as uploader:
        for version in (1, 2, 3):
            uploader.upload(str(tmp_path / f"index{version}"), "index.json")
    assert [data for _, data in store.puts] == [b"v1", b"v2", b"v3"]


# -- large files, anonymous access ------------------------------------------------------------


def test_large_files_are_uploaded_in_parts(s3_bucket, s3_server, tmp_path, monkeypatch):
    import streaming.storage.s3 as s3_module

    monkeypatch.setattr(s3_module, "_SINGLE_PUT_LIMIT", 5 << 20)  # S3's smallest part size
    monkeypatch.setattr(s3_module, "_PART_SIZE", 5 << 20)
    payload = os.urandom(12 << 20)
    (tmp_path / "big.pt").write_bytes(payload)
    upload_file(tmp_path / "big.pt", f"{s3_bucket}/ckpt/big.pt")
    assert read_bytes(f"{s3_bucket}/ckpt/big.pt") == payload
    parts = s3_server.requests(method="PUT", bucket=s3_bucket, key="ckpt/big.pt")
    assert len(parts) == 3  # 5 + 5 + 2 MiB
    with pytest.raises(BucketNotFoundError, match="s3://streaming-test-no-such-bucket/big.pt"):
        upload_file(tmp_path / "big.pt", "s3://streaming-test-no-such-bucket/big.pt")


def test_without_credentials_requests_go_unsigned(s3_bucket, s3_server, tmp_path, monkeypatch):
    bucket = s3_bucket.removeprefix("s3://")
    s3_server.client().put_object(
        Bucket=bucket, Key="open/index.json", Body=b"public", ACL="public-read"
    )
    upload_bytes(b"private", f"{s3_bucket}/closed/index.json")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert read_bytes(f"{s3_bucket}/open/index.json") == b"public"  # a public object: no keys
    with pytest.raises(CredentialsError, match=r"unsigned \(no credentials were found\)"):
        open_dataset_index(f"{s3_bucket}/closed", tmp_path, backoff=NEVER_RETRY)
