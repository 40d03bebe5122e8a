"""Fixtures of the evalkit suite: the offline data folder, a local S3 server, synthetic tasks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evalkit.testing import WordTokenizer, write_tasks
from streaming.testing.fixtures import s3_bucket, s3_server  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[3]
SHARED = ROOT.parent / "shared" / "data"

# lm-eval and the datasets library it drives must never reach the network in this suite
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a skip that says it is absent."""
    if not (SHARED / "eval" / "icl").is_dir():
        pytest.skip(f"needs the offline data folder {SHARED} (../shared/data beside the checkout)")
    return SHARED


@pytest.fixture
def tasks_yaml(tmp_path) -> Path:
    """Four small synthetic tasks (one per type) and their YAML, made in the test."""
    return write_tasks(tmp_path / "tasks")


@pytest.fixture
def tokenizer() -> WordTokenizer:
    return WordTokenizer()
