"""The S3 store: AWS S3 and every S3-compatible service (R2, MinIO, GCS, OCI) through boto3.

Endpoint and credentials come from keyword arguments first, then the environment:
`S3_ENDPOINT_URL` (mosaicml-streaming's variable), `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, and
whatever boto3 itself reads (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
`AWS_PROFILE`, `AWS_DEFAULT_REGION`, config files, instance roles). Without any credentials,
requests go unsigned, which is how public buckets are read.

boto3 is the optional extra `streaming[s3]`; it is imported when the first client is made, never
when this module is imported. Clients are not shared across a fork: each process makes its own
(a boto3 client is safe to share between threads). botocore's own retries are off; the callers
in `streaming.storage` retry transient failures with backoff, so there is one retry policy.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from streaming.errors import (
    BucketNotFoundError,
    RemoteNotFoundError,
)
from streaming.storage.retry import TransientStorageError
from streaming.storage.s3_errors import bucket_message, translate_s3_error
from streaming.storage.urls import split_bucket

__all__ = ["S3_OPTIONS", "S3Store"]

S3_OPTIONS = frozenset(
    {
        "endpoint_url",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "region_name",
        "profile_name",
        "addressing_style",
        "unsigned",
        "max_pool_connections",
        "verify",
    }
)

_ENDPOINT_VARIABLES = ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

_SINGLE_PUT_LIMIT = 64 << 20  # bytes; larger files are uploaded in parts
_PART_SIZE = 64 << 20


def _endpoint_from_env() -> str | None:
    for name in _ENDPOINT_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _import_boto3() -> Any:
    try:
        import boto3
    except ImportError as err:
        raise ImportError(
            f"s3:// URLs need boto3, which could not be imported ({err}): "
            "pip install 'streaming[s3]'"
        ) from err
    return boto3


class S3Store:
    """Objects in S3 or an S3-compatible service, addressed as `s3://bucket/key`."""

    env_keys: tuple[str, ...] = (
        *_ENDPOINT_VARIABLES,
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CA_BUNDLE",
    )

    def __init__(
        self,
        *,
        timeout: float | None = None,
        endpoint_url: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        region_name: str | None = None,
        profile_name: str | None = None,
        addressing_style: str | None = None,
        unsigned: bool = False,
        max_pool_connections: int = 32,
        verify: bool | str | None = None,
    ) -> None:
        """`timeout`: seconds a connect or a read may stall (None: botocore's 60).

        `addressing_style`: "path" or "virtual" (None: botocore decides; path for IP endpoints).
        `unsigned`: never sign requests (public buckets); also chosen when no credentials exist.
        `verify`: False to skip TLS verification, or a CA bundle path.
        """
        if addressing_style not in (None, "auto", "path", "virtual"):
            raise ValueError(
                f"addressing_style must be 'path', 'virtual' or 'auto'; got {addressing_style!r}"
            )
        self.timeout = timeout
        self.endpoint_url = endpoint_url or _endpoint_from_env()
        self._session_options = {
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
            "region_name": region_name or os.environ.get("AWS_REGION") or None,
            "profile_name": profile_name,
        }
        self._addressing_style = addressing_style
        self._unsigned = unsigned
        self._max_pool_connections = max_pool_connections
        self._verify = verify
        self._client_obj: Any = None
        self._pid = -1
        self._signs = True  # False once a client was made without credentials
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_client_obj=None, _pid=-1, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def client(self) -> Any:
        """This process's boto3 client, made on first use (and again in a forked child)."""
        client = self._client_obj
        if client is not None and self._pid == os.getpid():
            return client
        if self._pid != os.getpid():  # new process: the lock may have been copied while held
            self._lock = threading.Lock()
        with self._lock:
            if self._client_obj is None or self._pid != os.getpid():
                self._client_obj = self._make_client()
                self._pid = os.getpid()
            return self._client_obj

    def _make_client(self) -> Any:
        boto3 = _import_boto3()
        from botocore import UNSIGNED
        from botocore.config import Config

        session = boto3.session.Session(**self._session_options)
        unsigned = self._unsigned or session.get_credentials() is None
        config: dict[str, Any] = {
            "retries": {"total_max_attempts": 1, "mode": "standard"},  # we retry, with backoff
            "max_pool_connections": self._max_pool_connections,
        }
        if self.timeout is not None:
            config.update(connect_timeout=self.timeout, read_timeout=self.timeout)
        if self._addressing_style is not None:
            config["s3"] = {"addressing_style": self._addressing_style}
        if unsigned:
            config["signature_version"] = UNSIGNED
        self._signs = not unsigned
        return session.client(
            "s3", endpoint_url=self.endpoint_url, config=Config(**config), verify=self._verify
        )

    def _endpoint_text(self) -> str:
        return self.endpoint_url or "AWS S3 (no endpoint_url or S3_ENDPOINT_URL set)"

    def _call(self, url: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` with boto3's errors (making the client too) turned into ours."""
        try:
            return fn(*args, **kwargs)
        except ImportError:
            raise
        except Exception as err:
            mapped = translate_s3_error(
                err, url, endpoint=self._endpoint_text(), signed=self._signs
            )
            if mapped is None:
                raise
            raise mapped from err

    def _request(self, url: str, operation: str, **kwargs: Any) -> Any:
        return self._call(url, lambda: getattr(self.client(), operation)(**kwargs))

    def get_file(self, url: str, local_path: str) -> None:
        bucket, key = _object(url)
        response = self._request(url, "get_object", Bucket=bucket, Key=key)
        expected = response.get("ContentLength")

        def copy() -> int:
            written = 0
            try:
                with open(local_path, "wb") as file:
                    for chunk in response["Body"].iter_chunks(1 << 20):
                        file.write(chunk)
                        written += len(chunk)
            finally:
                response["Body"].close()
            return written

        written = self._call(url, copy)
        if expected is not None and written != expected:
            raise TransientStorageError(f"{url}: got {written} bytes, expected {expected}")

    def get_bytes(self, url: str) -> bytes:
        bucket, key = _object(url)
        response = self._request(url, "get_object", Bucket=bucket, Key=key)
        return self._call(url, response["Body"].read)

    def put_file(self, local_path: str, url: str) -> None:
        bucket, key = _object(url)
        if os.path.getsize(local_path) <= _SINGLE_PUT_LIMIT:
            with open(local_path, "rb") as file:
                self._request(url, "put_object", Bucket=bucket, Key=key, Body=file)
            return
        # Large files (checkpoints) go up in parts, several at once; S3 caps one PUT at 5 GB.
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=_SINGLE_PUT_LIMIT, multipart_chunksize=_PART_SIZE, max_concurrency=8
        )
        self._request(
            url, "upload_file", Filename=local_path, Bucket=bucket, Key=key, Config=config
        )

    def put_bytes(self, data: bytes, url: str) -> None:
        bucket, key = _object(url)
        self._request(url, "put_object", Bucket=bucket, Key=key, Body=data)

    def exists(self, url: str) -> bool:
        bucket, key = _object(url)
        try:
            self._request(url, "head_object", Bucket=bucket, Key=key)
        except RemoteNotFoundError:
            self.check(url)  # a HEAD says only "404": tell a missing bucket apart
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        bucket, key = split_bucket(prefix)

        def collect() -> list[str]:
            found = []
            pages = (
                self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            )
            for page in pages:
                found.extend(f"s3://{bucket}/{item['Key']}" for item in page.get("Contents", ()))
            return sorted(found)

        return self._call(prefix, collect)

    def delete(self, url: str) -> None:
        bucket, key = _object(url)
        self._request(url, "delete_object", Bucket=bucket, Key=key)

    def check(self, url: str) -> None:
        bucket, _ = split_bucket(url)
        try:
            self._request(url, "head_bucket", Bucket=bucket)
        except RemoteNotFoundError as err:
            raise BucketNotFoundError(bucket_message(url, self._endpoint_text())) from err


def _object(url: str) -> tuple[str, str]:
    bucket, key = split_bucket(url)
    if not key:
        raise ValueError(f"URL {url!r} names a bucket but no object; expected s3://bucket/key")
    return bucket, key
