"""Who may import whom (docs: DESIGN.md): pages reach engine/ and db/ only through the services, and engine/ and
db/ stay usable without Streamlit or the console."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

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


_PROBE = """
import importlib, json, sys
importlib.import_module({module!r})
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('streamlit', 'console', 'vllm'))))
"""


def _imported_after(module: str) -> list[str]:
    # A fresh interpreter, so modules imported by other tests in this process cannot hide or fake a leak.
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"importing {module} on its own failed:\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


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
