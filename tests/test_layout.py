"""The folder is the architecture (STYLE.md): evaluation, circuits and features are siblings that
open dictionaries through `tcx.runs` and read the model through `tcx.models`, never through each
other or through `tcx.training`; and no file grows past 500 lines."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tcx"
SIBLINGS = ("evaluation", "circuits", "features")


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("sibling", SIBLINGS)
def test_siblings_do_not_import_each_other(sibling):
    barred = {f"tcx.{s}" for s in SIBLINGS if s != sibling} | {"tcx.training"}
    found = [f"{path.relative_to(PACKAGE.parent)} imports {name}"
             for path in sorted((PACKAGE / sibling).rglob("*.py"))
             for name in _imported(path) if ".".join(name.split(".")[:2]) in barred]
    assert not found, found


def test_no_file_past_500_lines():
    long = [f"{p.relative_to(PACKAGE.parent)}: {n}" for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500]
    assert not long, long
