"""docs/deployment.md runs as written: every command block of the guide is run here, in order, on the CPU build at
the smallest size, and must exit 0 and print what the guide says it does.

The marker convention (in the guide's Markdown, invisible when rendered):

- a fenced ``sh`` block right after a line ``<!-- tested -->`` is run by ``bash -euo pipefail`` as one step of a
  single terminal session: the variables one block exports are there for the next (the test keeps the session's
  ``export -p`` between blocks); ``EXPECTED`` below says what each block's output must contain;
- ``<!-- tested: background -->`` marks a long-running process (a vLLM server, the router): it is started in a
  process group of its own, the test waits until its ``READY`` URL answers 200 and stops the group at the end;
- every other fenced block must be configuration: the example variables (``export`` lines only), environment
  files (``NAME=value`` lines only) or YAML. ``test_every_command_block_of_the_guide_is_run`` holds the guide to
  that.

The guide's variables get test values (``_guide_env``): the tiny model as ``$MODEL_DIR``, ``TP=1``, free loopback
ports, a throwaway data directory and API key file. One vLLM server start (and the router, which is cheap).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "deployment.md"
BIN = Path(sys.executable).parent  # the virtualenv's bin: llm-console, vllm-router, python

# What each tested block must print (in the guide's order), or for a background block the URL (with the guide's
# variables) that answers 200 once it is up.
EXPECTED: list[tuple[str, list[str]]] = [
    ("run", ["registered model version big-v1 (in-process)", "big-v1 now holds production"]),
    ("run", ["registered model version big-v2 (managed-server)", "big-v2", "managed-server"]),
    ("background", ["http://$HOST:$VLLM_PORT/health"]),
    ("background", ["http://$ROUTER_HOST:$ROUTER_PORT/health"]),
    ("run", ["registered model version big-v3 (server) from big at http://", '"ratio_median"']),
]
START_TIMEOUT_S = 900  # a vLLM server on a busy 2-core machine: ~30 s quiet, minutes under load


@dataclass(frozen=True)
class Block:
    kind: str  # "run", "background" or "" (not run)
    lang: str
    code: str


def guide_blocks(text: str) -> list[Block]:
    """The guide's fenced blocks, each with the marker on the line before it (if any)."""
    blocks = []
    for m in re.finditer(r"(?:^<!-- tested(: background)? -->\n)?^```(\w*)\n(.*?)^```", text, re.S | re.M):
        marked = m.group(0).startswith("<!--")
        kind = ("background" if m.group(1) else "run") if marked else ""
        blocks.append(Block(kind, m.group(2), m.group(3)))
    return blocks


def _is_configuration(block: Block) -> bool:
    lines = [ln.split("#")[0].strip() for ln in block.code.splitlines()]
    lines = [ln for ln in lines if ln]
    if block.lang == "yaml":
        return True
    return all(re.match(r"(export )?[A-Z_]+=", ln) for ln in lines)


def test_every_command_block_of_the_guide_is_run() -> None:
    blocks = guide_blocks(GUIDE.read_text())
    tested = [b for b in blocks if b.kind]
    assert [b.kind for b in tested] == [kind for kind, _ in EXPECTED], "EXPECTED must follow the guide's blocks"
    not_run = [b.code for b in blocks if not b.kind and not _is_configuration(b)]
    assert not_run == [], "a command block of docs/deployment.md is not marked <!-- tested -->"
    assert all(b.lang == "sh" for b in tested)
    # The guide must keep teaching the parts the issue asks for.
    code = "\n".join(b.code for b in tested)
    for needle in ("tensor_parallel_size", "--backend managed-server", "vllm.entrypoints.openai.api_server",
                   "vllm-router", "--backend server", "LLM_CONSOLE_SERVER_API_KEY_FILE", "VLLM_API_KEY="):
        assert needle in code, needle


def test_the_marker_parser_sees_markers_only_right_before_a_block() -> None:
    text = ("<!-- tested -->\n```sh\necho a\n```\n\n```sh\nexport A=1\n```\n<!-- tested: background -->\n"
            "```sh\nsleep 1\n```\n<!-- tested -->\n\nprose\n```yaml\nk: v\n```\n")
    assert [(b.kind, b.lang, b.code) for b in guide_blocks(text)] == [
        ("run", "sh", "echo a\n"), ("", "sh", "export A=1\n"), ("background", "sh", "sleep 1\n"),
        ("", "yaml", "k: v\n")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _guide_env(tmp_path: Path, model_dir: Path) -> dict[str, str]:
    key_file = tmp_path / "vllm-api-key"
    key_file.write_text(secrets.token_urlsafe(24) + "\n")
    key_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_CONSOLE_") and k != "VLLM_API_KEY"}
    vllm_port, router_port = _free_port(), _free_port()
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "MODEL_DIR": str(model_dir), "TP": "1", "HOST": "127.0.0.1", "VLLM_PORT": str(vllm_port),
        "ROUTER_HOST": "127.0.0.1", "ROUTER_PORT": str(router_port), "ROUTER_METRICS_PORT": str(_free_port()),
        "WORKER_URLS": f"http://127.0.0.1:{vllm_port}", "KEY_FILE": str(key_file),
        "VLLM_ARGS": "--enforce-eager --max-model-len 512", "VLLM_CPU_KVCACHE_SPACE": "1",
        "LLM_CONSOLE_DATA_DIR": str(tmp_path / "data"), "LLM_CONSOLE_ADMIN_PASSWORD": secrets.token_urlsafe(16),
        "LLM_CONSOLE_SAFETY_ENABLED": "false",
    })
    return env


def _expand(template: str, env: dict[str, str]) -> str:
    return re.sub(r"\$(\w+)", lambda m: env[m.group(1)], template)


def _group_cmdlines(pgid: int) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) == pgid:
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ProcessLookupError):
            continue
    return found


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
            # The shell may be gone while its children still stop: give the group the same time.
            deadline = time.monotonic() + wait_s
            while _group_cmdlines(process.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not _group_cmdlines(process.pid):
                return
        except subprocess.TimeoutExpired:
            continue


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{url}: the process exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture()
def background(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in reversed(started):  # the router before the servers behind it
        _stop(process)


@pytest.mark.engine
def test_the_guide_runs_as_written(tmp_path: Path, tiny_model_dir: Path,
                                   background: list[subprocess.Popen[bytes]]) -> None:
    env = _guide_env(tmp_path, tiny_model_dir)
    state = tmp_path / "session.sh"  # the terminal session's exported variables, between blocks
    state.write_text("")
    tested = [b for b in guide_blocks(GUIDE.read_text()) if b.kind]
    assert len(tested) == len(EXPECTED)
    outputs: list[str] = []
    for number, (block, (kind, expected)) in enumerate(zip(tested, EXPECTED, strict=True), start=1):
        assert block.kind == kind
        if kind == "background":
            log = tmp_path / f"block-{number}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", f'source "{state}"\n{block.code}'],
                                           env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True)
            background.append(process)
            _wait_ready(_expand(expected[0], env), process, log)
            continue
        script = f'source "{state}"\n{block.code}\nexport -p > "{state}"\n'
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=START_TIMEOUT_S)
        assert done.returncode == 0, f"block {number} failed:\n{block.code}\n{done.stdout}\n{done.stderr}"
        for needle in expected:
            assert needle in done.stdout, f"block {number}: {needle!r} not in:\n{done.stdout}"
        outputs.append(done.stdout)

    key = Path(env["KEY_FILE"]).read_text().strip()
    # The servers' key is passed in the environment: it is in no process's command line.
    server_group = background[0].pid
    assert any("vllm.entrypoints.openai.api_server" in c for c in _group_cmdlines(server_group))
    assert not any(key in c for c in _group_cmdlines(server_group))
    # The last block measured the console's client against the openai client through the router.
    bench = json.loads(outputs[-1].strip().splitlines()[-1])
    assert bench["backend"] == "server" and bench["server"] == f"http://127.0.0.1:{env['ROUTER_PORT']}"
    assert bench["console_tokens_per_s"] > 0 and bench["openai_tokens_per_s"] > 0 and bench["ratio_median"] > 0
    assert bench["output_tokens_per_round"] == {"console": 4 * 16, "openai": 4 * 16}
    # The key is stored nowhere in the console's data: not in the database, not in any file it wrote.
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    # The router really sits in front: the servers' key gets through it, and a request without one is refused.
    router = f"http://127.0.0.1:{env['ROUTER_PORT']}/v1/models"
    with urllib.request.urlopen(urllib.request.Request(router, headers={"Authorization": f"Bearer {key}"}),
                                timeout=30) as response:
        assert [m["id"] for m in json.load(response)["data"]] == ["big"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(router, timeout=30)
    assert refused.value.code == 401
