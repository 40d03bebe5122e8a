"""Fixtures of the composer-lite suite: a local S3 server (moto on 127.0.0.1) and fresh buckets."""

from __future__ import annotations

from streaming.testing.fixtures import s3_bucket, s3_server  # noqa: F401 (fixtures)
