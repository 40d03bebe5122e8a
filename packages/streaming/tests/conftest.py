"""Fixtures of the streaming suite: a local S3 server and an isolated mosaicml-streaming."""

from __future__ import annotations

import pytest

from streaming.testing.fixtures import s3_bucket, s3_server  # noqa: F401 (fixtures)


@pytest.fixture(scope="session")
def mosaic():
    """mosaicml-streaming 0.13 installed with `pip --target` in an ignored folder, run in one
    subprocess for the whole session (its interpreter starts once: see `MosaicStreaming.session`).

    Skips (with the reason) only if it cannot be installed from the package registry.
    """
    from streaming.testing.mosaic import MosaicStreaming, MosaicUnavailable

    try:
        installed = MosaicStreaming.ensure()
    except MosaicUnavailable as err:
        pytest.skip(str(err))
    with installed.session() as session:
        yield session
