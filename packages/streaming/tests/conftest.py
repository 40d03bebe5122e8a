"""Fixtures of the streaming suite: a local S3 server and an isolated mosaicml-streaming."""

from __future__ import annotations

import pytest

from streaming.testing.fixtures import s3_bucket, s3_server  # noqa: F401 (fixtures)


@pytest.fixture(scope="session")
def mosaic():
    """mosaicml-streaming 0.13 installed with `pip --target` in an ignored folder, run in subprocesses.

    Skips (with the reason) only if it cannot be installed from the package registry.
    """
    from streaming.testing.mosaic import MosaicStreaming, MosaicUnavailable

    try:
        return MosaicStreaming.ensure()
    except MosaicUnavailable as err:
        pytest.skip(str(err))
