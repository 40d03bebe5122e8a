"""The Python examples in each package's README run as written, without printing a warning."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def examples():
    for readme in sorted(ROOT.glob("packages/*/README.md")):
        for n, block in enumerate(re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)):
            yield pytest.param(block, id=f"{readme.parent.name}-{n}")


@pytest.mark.parametrize("code", list(examples()))
def test_readme_example_runs(code: str, tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, f"the example prints a warning:\n{result.stderr}"
