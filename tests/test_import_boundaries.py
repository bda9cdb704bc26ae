"""engine/ and db/ must stay usable without Streamlit: importing them must not import it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
import importlib, json, sys
importlib.import_module({package!r})
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('streamlit', 'console', 'vllm'))))
"""


def _imported_after(package: str) -> list[str]:
    # A fresh interpreter, so modules imported by other tests in this process cannot hide or fake a leak.
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(package=package)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    import json

    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", ["engine", "engine.host", "engine.types", "engine.errors", "db"])
def test_importing_package_does_not_import_streamlit_or_console(package: str) -> None:
    leaked = [m for m in _imported_after(package) if m.split(".")[0] in ("streamlit", "console")]
    assert leaked == []


def test_importing_engine_host_does_not_load_vllm_until_an_engine_starts() -> None:
    assert [m for m in _imported_after("engine.host") if m.split(".")[0] == "vllm"] == []
