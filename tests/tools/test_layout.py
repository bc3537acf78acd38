"""Imports between the tool packages flow one way: scripts -> tools, tests -> both; nothing
edits ``sys.path`` (everything runs from the repository root as modules)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tools import ROOT

pytestmark = pytest.mark.unit

# package -> the top-level packages it must never import, at any depth of a file
FORBIDDEN = {"tools": {"scripts", "tests"}, "scripts": {"tests"}, "bench": {"scripts", "tests", "tools"}}


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_tops(tree: ast.AST) -> set[str]:
    """The top-level package of every import statement in ``tree`` (relative ones skipped)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def edits_sys_path(tree: ast.AST) -> bool:
    """Any ``sys.path`` attribute read or written, e.g. ``sys.path.insert(...)``."""
    return any(isinstance(node, ast.Attribute) and node.attr == "path"
               and isinstance(node.value, ast.Name) and node.value.id == "sys"
               for node in ast.walk(tree))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package: str) -> None:
    offenders = {}
    for path in sources(package):
        wrong = imported_tops(ast.parse(path.read_text())) & FORBIDDEN[package]
        if wrong:
            offenders[str(path.relative_to(ROOT))] = sorted(wrong)
    assert offenders == {}


@pytest.mark.parametrize("package", ["tools", "scripts", "bench", "tests"])
def test_nothing_edits_sys_path(package: str) -> None:
    offenders = [str(path.relative_to(ROOT)) for path in sources(package)
                 if edits_sys_path(ast.parse(path.read_text()))]
    assert offenders == []
