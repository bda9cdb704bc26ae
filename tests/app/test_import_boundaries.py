"""Who may import whom (docs/architecture.md): pages reach engine/ and db/ only through the services, and engine/ and
db/ stay usable without Streamlit or the console."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Alembic runs env.py itself, with its migration context set up; imported on its own it has no config to read.
NOT_STANDALONE = {"db.migrations.env"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules_under(package: str) -> list[str]:
    """Every module of the package, found on disk, so a new module is covered without editing this test."""
    names = {_module_name(p) for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts}
    return sorted(names - NOT_STANDALONE)


def _page_files() -> list[Path]:
    """The Streamlit side of the console: every page, the entrypoint and the helpers only pages use."""
    console = ROOT / "console"
    return sorted(console.joinpath("views").rglob("*.py")) + [
        console / name for name in ("app.py", "app_pages.py", "ui.py", "widgets.py") if (console / name).exists()
    ]


def _imported_modules(path: Path) -> set[str]:
    """Every module a file names in an import statement, wherever it stands (functions, TYPE_CHECKING blocks)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", _page_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_import_neither_engine_nor_db(path: Path) -> None:
    reached = sorted(m for m in _imported_modules(path) if m.split(".")[0] in ("engine", "db"))
    assert reached == [], f"{path.relative_to(ROOT)} imports {reached}: go through a console service instead"


def test_the_page_check_sees_every_page() -> None:
    pages = {p.name for p in _page_files()}
    assert {"chat.py", "review.py", "escalations.py", "models.py", "app.py"} <= pages


# One fresh interpreter loads the third-party libraries most modules need (never streamlit, vllm or ours), then
# forks a child per module: each child imports its module into a clean slate of our packages and reports what got
# loaded. As good as an interpreter per module for what these tests look for, at a fraction of the start-ups.
_PROBE = """
import importlib, json, os, sys
WATCHED = ('streamlit', 'console', 'vllm', 'engine', 'db')
for name in ('sqlalchemy', 'sqlalchemy.orm', 'alembic', 'numpy', 'presidio_analyzer', 'spacy'):
    importlib.import_module(name)
preloaded = sorted(m for m in sys.modules if m.split('.')[0] in WATCHED)
assert not preloaded, preloaded
results = {}
for module in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(module)
            out = {'loaded': sorted(m for m in sys.modules if m.split('.')[0] in ('streamlit', 'console', 'vllm'))}
        except BaseException as exc:
            import traceback
            out = {'error': ''.join(traceback.format_exception(exc))}
        with os.fdopen(write, 'w') as f:
            f.write(json.dumps(out))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        data = f.read()
    os.waitpid(pid, 0)
    results[module] = json.loads(data) if data else {'error': 'the child died without a word'}
print(json.dumps(results))
"""

_PROBED: dict[str, dict[str, Any]] = {}


def _imported_after(module: str) -> list[str]:
    # A fresh interpreter, so modules imported by other tests in this process cannot hide or fake a leak.
    if module not in _PROBED:
        wanted = sorted(set(_modules_under("engine") + _modules_under("db")) | {module})
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, json.dumps(wanted)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        )
        assert done.returncode == 0, f"the import probe failed:\n{done.stderr}"
        _PROBED.update(json.loads(done.stdout.strip().splitlines()[-1]))
    result = _PROBED[module]
    assert "error" not in result, f"importing {module} on its own failed:\n{result['error']}"
    return list(result["loaded"])


@pytest.mark.parametrize("module", _modules_under("engine") + _modules_under("db"))
def test_engine_and_db_modules_import_without_streamlit_or_console(module: str) -> None:
    leaked = [m for m in _imported_after(module) if m.split(".")[0] in ("streamlit", "console")]
    assert leaked == []


def test_every_engine_and_db_module_is_checked() -> None:
    checked = set(_modules_under("engine") + _modules_under("db"))
    assert {"engine", "engine.host", "engine.types", "engine.errors", "db", "db.tables", "db.audit"} <= checked
    assert not any(m.startswith("console") for m in checked)


def test_importing_engine_host_does_not_load_vllm_until_an_engine_starts() -> None:
    assert [m for m in _imported_after("engine.host") if m.split(".")[0] == "vllm"] == []


# --- no import cycle, between files or between packages -------------------------------------------------------
# Every import statement counts, wherever it stands: a lazy import inside a function only moves the cycle to run
# time. Only ``if TYPE_CHECKING:`` blocks are left out (they never run). The implicit import of a module's parent
# package (``import a.b.c`` runs ``a/b/__init__.py`` first) is not an edge: re-exporting submodules from a
# package's ``__init__`` is the ordinary shape, and a submodule that imports its own package by name is caught as
# an explicit edge.

GRAPH_PACKAGES = ("console", "engine", "db", "bench")


def _all_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in GRAPH_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` outside the bodies of ``if TYPE_CHECKING:`` (their ``else`` counts)."""
    out: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> set[str]:
    """The modules of ours one import statement loads: the named module, or for ``from x import y`` the
    submodule ``x.y`` when there is one, else ``x`` itself."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix for alias in node.names]
    return {name for name in names if name in known}


def _file_graph() -> dict[str, set[str]]:
    known = _all_modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = set()
        for node in _import_nodes(tree):
            graph[module] |= _targets(module, path, node, known)
        graph[module].discard(module)
    return graph


def _package_of(module: str, graph: dict[str, set[str]]) -> str:
    return module.split(".")[0]


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {p: set() for p in GRAPH_PACKAGES}
    for module, targets in graph.items():
        source = _package_of(module, graph)
        packages[source] |= {_package_of(t, graph) for t in targets} - {source}
    return packages


def _shortest_cycle_through(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str] | None:
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        next_frontier = []
        for node in frontier:
            for target in sorted(graph[node] & within):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if target not in parents:
                    parents[target] = node
                    next_frontier.append(target)
        frontier = next_frontier
    return None


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(component)
    return out


def import_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each cycle of ``graph`` as ``a -> b -> a``: the shortest through every member of every strongly connected
    component, each cycle once."""
    seen: set[frozenset[str]] = set()
    cycles: list[str] = []
    for component in _components(graph):
        for start in sorted(component):
            cycle = _shortest_cycle_through(graph, start, component)
            if cycle is not None and frozenset(cycle) not in seen:
                seen.add(frozenset(cycle))
                cycles.append(" -> ".join(cycle))
    return sorted(cycles)


def test_the_import_graph_sees_imports_inside_functions_and_skips_type_checking_blocks(tmp_path: Path) -> None:
    tree = ast.parse(
        "import a\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import b\nelse:\n    import c\n"
        "def f():\n    import d\n"
        "class K:\n    def g(self):\n        from e import x\n"
    )
    named = {n.names[0].name if isinstance(n, ast.Import) else n.module for n in _import_nodes(tree)}
    assert named == {"a", "typing", "c", "d", "e"}


def test_the_cycle_finder_names_each_cycle() -> None:
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}, "e": {"a"}}
    assert import_cycles(graph) == ["a -> b -> a", "c -> d -> c"]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_graph_resolves_relative_and_from_imports() -> None:
    graph = _file_graph()
    assert "console.services.access" in graph["console.services.chat"]  # from console.services.access import ...
    assert "db" in graph["console.resources"] or "db.database" in graph["console.resources"]


def test_no_import_cycle_between_files() -> None:
    cycles = import_cycles(_file_graph())
    assert cycles == [], "import cycles between files (move the shared piece down a layer):\n" + "\n".join(cycles)


def test_no_import_cycle_between_packages() -> None:
    cycles = import_cycles(_package_graph(_file_graph()))
    assert cycles == [], "import cycles between packages:\n" + "\n".join(cycles)
