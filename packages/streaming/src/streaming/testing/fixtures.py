"""pytest fixtures for suites that need object storage: a local S3 server and fresh buckets.

Import them into a conftest (`from streaming.testing.fixtures import s3_bucket, s3_server`);
this module needs pytest and moto, so nothing outside test suites imports it.
"""

from __future__ import annotations

import pytest

__all__ = ["s3_bucket", "s3_server"]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto) on 127.0.0.1 and a free port, for the whole session."""
    from streaming.testing.s3 import local_s3_server

    with local_s3_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh, empty bucket on the local server; the environment points boto3 at the server.

    Returns the URL `s3://<bucket>`.
    """
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    for key in s3_server.unset_env():  # a developer's AWS_PROFILE or token must not leak in
        monkeypatch.delenv(key, raising=False)
    return s3_server.new_bucket()
