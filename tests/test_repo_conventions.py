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


def readme_package_rows() -> dict[str, str]:
    """{package folder: status cell} of the top-level README's package table."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        found = re.match(r"\|\s*\[packages/([\w-]+)\]\(packages/[\w-]+\)\s*\|(.*)\|\s*$", line)
        if found:
            rows[found[1]] = found[2].split("|")[-1].strip()
    return rows


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_top_level_readme_shows_each_packages_version(folder: str):
    rows = readme_package_rows()
    assert folder in rows, f"README.md's package table has no row for packages/{folder}"
    version = tomllib.loads((ROOT / "packages" / folder / "pyproject.toml").read_text())
    version = version["project"]["version"]
    assert rows[folder].startswith(f"{version}:"), (
        f"README.md says {rows[folder]!r} for packages/{folder}; its pyproject says {version}"
    )


FAULT_TABLE = re.compile(r"^## What happens with [^\n]*\n(.*?)(?=^## |\Z)", re.M | re.S)


@pytest.mark.parametrize("folder", ["streaming", "composer-lite", "mpt", "foundry"])
def test_fault_table_rows_name_tests_that_exist(folder: str):
    """Each built package's README has a fault table ("What happens with ..."): bad input -> what
    the user sees -> the test (or the scenario of a table-driven test, `flipped-byte` for
    `def flipped_byte`) in the package's suite that holds the row true."""
    pkg = ROOT / "packages" / folder
    section = FAULT_TABLE.search((pkg / "README.md").read_text())
    assert section, f"packages/{folder}/README.md has no '## What happens with ...' fault table"
    rows = [r for r in section[1].splitlines() if r.startswith("|") and "---" not in r][1:]
    assert rows, f"the fault table of packages/{folder}/README.md has no rows"
    defined = set()  # functions of the suite: tests, or scenarios a table-driven test runs
    for path in (pkg / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^\s*(?:async )?def (\w+)", path.read_text(), re.M))
    for row in rows:
        named = [n.replace("-", "_") for n in re.findall(r"`([\w-]+)`", row.split("|")[-2])]
        assert named, f"packages/{folder} fault-table row names no test: {row}"
        missing = [name for name in named if name not in defined]
        assert not missing, (
            f"packages/{folder} fault table names tests that do not exist: {missing}"
        )
