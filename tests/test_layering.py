"""Each package imports only the packages below it (DESIGN.md, "The five packages and how they stack")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"streaming", "composer_lite", "mpt", "evalkit", "foundry"}
ALLOWED = {
    "streaming": set(),
    "composer_lite": {"streaming"},
    "mpt": set(),
    "evalkit": {"composer_lite", "streaming"},
    "foundry": {"streaming", "composer_lite", "mpt", "evalkit"},
}


def imported_packages(source: str, filename: str) -> list[tuple[int, str]]:
    """(line, top-level name) of every absolute import in `source`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and getattr(
            node.func, "attr", getattr(node.func, "id", None)
        ) in ("import_module", "__import__"):
            if (
                node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def layering_violations(src_root: Path) -> list[str]:
    bad = []
    for path in sorted(src_root.glob("*/src/*/**/*.py")):
        importer = path.relative_to(src_root).parts[2]
        for line, name in imported_packages(path.read_text(), str(path)):
            if name in OURS and name != importer and name not in ALLOWED[importer]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {importer} imports {name}")
    return bad


def test_every_package_is_in_the_allowed_table():
    found = {
        p.name
        for p in (ROOT / "packages").glob("*/src/*")
        if p.is_dir() and not p.name.endswith(".egg-info")
    }
    assert found == OURS


def test_no_import_crosses_the_layering():
    assert layering_violations(ROOT / "packages") == []


def test_the_checker_catches_an_upward_import(tmp_path: Path):
    bad = tmp_path / "mpt" / "src" / "mpt"
    bad.mkdir(parents=True)
    (bad / "x.py").write_text(
        "import os\nfrom composer_lite.trainer import Trainer\n"
        "def f():\n    import importlib\n    importlib.import_module('foundry.cli')\n"
    )
    (bad / "ok.py").write_text("from mpt import config\nfrom . import x\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert layering_violations(tmp_path) == [
            "mpt/src/mpt/x.py:2: mpt imports composer_lite",
            "mpt/src/mpt/x.py:5: mpt imports foundry",
        ]
    finally:
        ROOT = saved


@pytest.mark.parametrize("importer", sorted(ALLOWED))
def test_allowed_table_points_only_downward(importer: str):
    assert importer not in ALLOWED[importer]
    for lower in ALLOWED[importer]:
        assert importer not in ALLOWED[lower], f"{importer} and {lower} may not import each other"
