"""app/'s imports flow one way: no cycle, not even through function-level imports.

Every ``import`` of an ``app`` module anywhere in a file counts (in functions, under
TYPE_CHECKING, and ``importlib.import_module("app...")`` calls), so a cycle hidden by a
late import fails here as plainly as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"

pytestmark = pytest.mark.unit


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in APP.rglob("*.py")}


def imported(path: Path, known: set[str]) -> set[str]:
    """The app modules ``path`` imports, at any depth of the file."""
    found: set[str] = set()

    def add(name: str) -> None:
        # Importing a.b.c runs a, a.b and a.b.c: each is a dependency.
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            candidate = ".".join(parts[:end])
            if candidate in known:
                found.add(candidate)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            add(node.module)
            for alias in node.names:
                add(f"{node.module}.{alias.name}")  # ``from app import metrics`` names a module
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def app_graph() -> dict[str, set[str]]:
    known = modules()
    names = set(known)
    # A module's own package is imported before it and is not an edge back up.
    return {
        name: {dep for dep in imported(path, names) if dep != name and not name.startswith(dep + ".")}
        for name, path in known.items()
    }


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_app_has_no_import_cycle() -> None:
    cycle = find_cycle(app_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_socket_never_imports_the_process() -> None:
    """app.chat, app.layers, app.history and app.web sit below app.process."""
    graph = app_graph()
    lower = ("app.chat", "app.layers", "app.history", "app.web", "app.metrics")
    offenders = sorted(
        f"{name} -> {dep}"
        for name, deps in graph.items()
        if name.startswith(lower)
        for dep in deps
        if dep.startswith("app.process") or dep == "app.asgi"
    )
    assert offenders == []
