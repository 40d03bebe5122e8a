"""Repository-wide pytest hooks: GPU-only tests skip on CPU, shared data skips when absent.

Loaded for `pytest packages/<name>` too, because the repository root is pytest's rootdir.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU; run it on a lent H100 (tools/gpu-setup)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline data folder `../shared/data`; skips the test when it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"needs the offline data folder {SHARED_DATA} (absent on this clone)")
    return SHARED_DATA
