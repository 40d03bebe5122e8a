"""Every package keeps its own version, README, CHANGELOG entry and `__all__` in public modules."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "streaming": "streaming",
    "composer-lite": "composer_lite",
    "mpt": "mpt",
    "evalkit": "evalkit",
    "foundry": "foundry",
}


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_package_metadata_agrees(folder: str):
    pkg = ROOT / "packages" / folder
    meta = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]
    assert meta["name"] == folder
    init = (pkg / "src" / PACKAGES[folder] / "__init__.py").read_text()
    assert f'__version__ = "{meta["version"]}"' in init, "pyproject version and __version__ differ"
    changelog = (pkg / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(meta['version'])}\b", changelog, re.M), (
        "CHANGELOG lacks an entry for this version"
    )
    assert (pkg / "README.md").read_text().strip()
    for dep in meta["dependencies"] + sum(meta.get("optional-dependencies", {}).values(), []):
        if dep.startswith("torch"):
            assert "<" not in dep and "==" not in dep, f"{folder}: no upper pin on torch ({dep})"
            low = re.search(r">=\s*(\d+)\.(\d+)", dep)
            assert low is None or (int(low[1]), int(low[2])) <= (2, 11), (
                f"{folder}: torch lower bound above 2.11 ({dep})"
            )


def public_modules():
    for folder, name in PACKAGES.items():
        for path in sorted((ROOT / "packages" / folder / "src" / name).rglob("*.py")):
            if not any(
                part.startswith("_") and part != "__init__.py"
                for part in path.relative_to(ROOT).parts
            ):
                yield pytest.param(path, id=str(path.relative_to(ROOT / "packages")))


@pytest.mark.parametrize("path", list(public_modules()))
def test_public_module_has_docstring_and_all(path: Path):
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path} has no module docstring"
    if path.name == "__main__.py":
        return
    names = {
        t.id
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for t in ([node.target] if isinstance(node, ast.AnnAssign) else node.targets)
        if isinstance(t, ast.Name)
    }
    assert "__all__" in names, f"{path} has no __all__"
