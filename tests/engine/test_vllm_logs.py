"""vLLM's own logs go to stderr (engine/__init__.py), so a command's stdout is only its output:
``llm-console bench switch --json`` prints JSON a pipe can parse, even when an in-process engine starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from console.settings import PROJECT_ROOT

pytestmark = pytest.mark.engine  # starts a real in-process engine in a subprocess

_SCRIPT = """
import json, sys
from engine.host import EngineHost
from engine.types import HostConfig, ModelSpec
host = EngineHost.start(ModelSpec(name="tiny-logs", source=sys.argv[1]), HostConfig(kv_cache_gib=0.25), wait=True)
host.shutdown()
print(json.dumps({"served": "tiny-logs"}))
"""


def test_an_engine_start_logs_to_stderr_and_stdout_keeps_only_the_output(tiny_model_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_STREAM"}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(tiny_model_dir)], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"served": "tiny-logs"}  # one JSON object, nothing else
    assert "Resolved architecture" in done.stderr  # vLLM's own start-up lines, on stderr
