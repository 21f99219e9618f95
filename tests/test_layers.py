"""The architecture's dependency rules, read from the source with ``ast`` (no module is imported).

Layers point down only: the edges (``monitor.api``, ``monitor.cli``, ``monitor.demo``) over the
services over the storage layer; ``retrain`` never imports ``monitor``; the dashboard talks to the
server through ``monitor.client`` only. Each rule names the offending modules when it fails.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"monitor": "tuneloop.monitor", "retrain": "tuneloop.retrain", "dashboard": "tuneloop.dashboard"}
MAX_LINES = 600
STORAGE = "tuneloop.monitor.storage"
EDGES = {
    # package -> the packages that may import it (besides itself)
    "tuneloop.monitor.api": ("tuneloop.monitor.cli", "tuneloop.monitor.demo"),  # `serve` and the demo start it
    "tuneloop.monitor.cli": (),  # only the console script and ``python -m`` enter it
}
DASHBOARD_MAY_IMPORT = ("tuneloop.monitor.client", "tuneloop.monitor.config")
SQL = re.compile(
    r"\bSELECT\b[\s\S]*?\bFROM\b|\bINSERT\s+(?:OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b"
    r"|\b(?:CREATE|ALTER|DROP)\s+(?:OR\s+REPLACE\s+)?(?:TEMP(?:ORARY)?\s+)?(?:TABLE|INDEX|UNIQUE\s+INDEX|VIEW|SEQUENCE)\b"
    r"|\bCOPY\s+\w+\s+(?:FROM|TO)\b"
)
"""SQL statements (upper-case keywords, as every statement in the project is written), not prose."""


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    lines: int
    top_level: set[str] = field(default_factory=set)  # imported when the module itself is imported
    anywhere: set[str] = field(default_factory=set)  # also inside functions and TYPE_CHECKING blocks
    sql: list[tuple[int, str]] = field(default_factory=list)


def _module_name(path: Path) -> tuple[str, bool]:
    rel = path.relative_to(ROOT)
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__.py":
        return ".".join(parts[:-1]), True
    return ".".join(parts)[: -len(".py")], False


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """Modules one import statement names: ``from a import b`` is ``a.b`` when that is a module, else ``a``."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([base] if base else [])])
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            yield sub if sub in known else base


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _strings(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Every string literal (f-strings with their placeholders as ``?``), docstrings left out."""
    skip = _docstrings(tree)
    inside_fstring = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "?" for v in node.values)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
              and id(node) not in inside_fstring):
            yield node.lineno, node.value


def _scan() -> dict[str, Module]:
    files = sorted(p for top in PACKAGES for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)
    modules = {}
    for path in files:
        name, is_package = _module_name(path)
        modules[name] = Module(name, path, is_package, len(path.read_text(encoding="utf-8").splitlines()))
    known = set(modules)
    for m in modules.values():
        tree = ast.parse(m.path.read_text(encoding="utf-8"), filename=str(m.path))

        def visit(body: list[ast.stmt], top: bool, m: Module = m) -> None:
            for node in body:
                if isinstance(node, ast.Import | ast.ImportFrom):
                    found = {t for t in _imports(node, m.name, m.is_package, known) if t.startswith("tuneloop")}
                    m.anywhere |= found
                    if top:
                        m.top_level |= found
                elif isinstance(node, ast.If) and _is_type_checking(node):
                    visit(node.body, False)
                    visit(node.orelse, top)
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                    visit(node.body, False)
                elif isinstance(node, ast.ClassDef):
                    visit(node.body, top)
                else:
                    for child in ("body", "orelse", "finalbody", "handlers"):
                        inner = getattr(node, child, None)
                        if isinstance(inner, list):
                            visit([n for n in inner if isinstance(n, ast.stmt | ast.excepthandler)], top)

        visit(tree.body, True)
        m.sql = [(line, text) for line, text in _strings(tree) if SQL.search(text)]
    return modules


MODULES = _scan()


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_scan_sees_the_project():
    """Guards every rule below against passing on an empty or misread tree."""
    assert {"tuneloop.monitor.config", "tuneloop.retrain.trainer", "tuneloop.dashboard.app"} <= set(MODULES)
    assert "tuneloop.retrain.settings" in MODULES["tuneloop.monitor.config"].top_level
    assert "tuneloop.monitor.drift.checks" in MODULES["tuneloop.monitor.drift.runner"].top_level
    assert "tuneloop.retrain.trainer" in MODULES["tuneloop.retrain.build"].top_level
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert SQL.search("SELECT id FROM predictions WHERE project = ?") and SQL.search("DELETE FROM alerts")
    assert not SQL.search("Select the rows from the window") and not SQL.search("one select, one UPDATE")


def test_no_import_cycles_at_module_level():
    graph = {m.name: {t for t in m.top_level if t in MODULES and t != m.name} for m in MODULES.values()}
    assert _cycles(graph) == []


def test_retrain_imports_nothing_from_monitor():
    bad = {m.name: sorted(t for t in m.anywhere if _within(t, "tuneloop.monitor"))
           for m in MODULES.values() if _within(m.name, "tuneloop.retrain")}
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize("edge", sorted(EDGES))
def test_only_entry_points_import_the_edges(edge):
    allowed = (edge, *EDGES[edge])
    bad = {m.name: sorted(t for t in m.anywhere if _within(t, edge))
           for m in MODULES.values() if not any(_within(m.name, a) for a in allowed)}
    assert {k: v for k, v in bad.items() if v} == {}


def test_dashboard_reaches_the_server_only_through_client_and_config():
    bad = {m.name: sorted(t for t in m.anywhere if _within(t, "tuneloop.monitor") and t not in DASHBOARD_MAY_IMPORT)
           for m in MODULES.values() if _within(m.name, "tuneloop.dashboard")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_sql_lives_only_in_the_storage_layer():
    bad = {f"{m.path.relative_to(ROOT)}:{line}": text.strip().splitlines()[0][:80]
           for m in MODULES.values() if not _within(m.name, STORAGE) for line, text in m.sql}
    assert bad == {}


def test_no_module_over_600_lines():
    assert {str(m.path.relative_to(ROOT)): m.lines for m in MODULES.values() if m.lines > MAX_LINES} == {}
