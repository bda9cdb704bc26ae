"""Real vLLM OpenAI-compatible servers for tests (the session's ``vllm_server`` fixture, and tests that start their
own): started with the console's one command line (:func:`engine.managed.server_command`), on the tiny model, with a
small KV cache; always stopped by the caller (``RunningServer.stop``, a fixture's teardown)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from engine.managed import PRIME_PROMPT_TOKENS, server_command, server_env
from engine.types import HostConfig, ModelSpec

START_TIMEOUT_S = 300.0  # ~26 s on a quiet machine; much more while other tests load engines beside it
KV_CACHE_GIB = 0.25


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A vLLM server process of a test: ``url`` (base, no /v1), the API key it requires, its log."""

    url: str
    process: subprocess.Popen[bytes]
    api_key: str | None = field(repr=False)
    log_path: Path
    name: str

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to the server's process group, then SIGKILL; safe to call more than once."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # the engine core child may outlive the API server briefly
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _prime(server: RunningServer) -> None:
    """The server's first request, long enough (as a managed server's: engine.managed.PRIME_PROMPT_TOKENS) that a
    bfloat16 engine on a CPU with AMX survives it and whatever short request a test sends first (docs/models.md)."""
    headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
    body = {"model": server.name, "prompt": [1 + i % 32 for i in range(PRIME_PROMPT_TOKENS)], "max_tokens": 1}
    response = httpx.post(f"{server.url}/v1/completions", json=body, headers=headers, timeout=START_TIMEOUT_S)
    if response.status_code != 200:
        raise RuntimeError(f"the vLLM server for {server.name} failed its first request ({response.status_code}: "
                           f"{response.text[:200]}):\n{server.log_tail()}")


def start_vllm_server(model_dir: Path, name: str, *, port: int | None = None, api_key: str | None = None,
                      log_path: Path, timeout_s: float = START_TIMEOUT_S) -> RunningServer:
    """Start vLLM's OpenAI-compatible server serving ``model_dir`` as ``name`` on loopback and wait for /health.

    Raises RuntimeError (with the log's tail) if it exits or does not answer within ``timeout_s``; the process is
    then stopped."""
    port = port or free_port()
    spec = ModelSpec(name=name, source=str(model_dir), max_model_len=512, engine_args={"enforce_eager": True})
    command = server_command(spec, port, HostConfig(kv_cache_gib=KV_CACHE_GIB), on_cpu=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                                   env=server_env(api_key), start_new_session=True)
    server = RunningServer(f"http://127.0.0.1:{port}", process, api_key, log_path, name)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if not server.alive():
                raise RuntimeError(f"the vLLM server for {name} exited ({process.returncode}):\n{server.log_tail()}")
            try:
                if httpx.get(f"{server.url}/health", timeout=2.0).status_code == 200:
                    _prime(server)
                    return server
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the vLLM server for {name} did not answer /health within {timeout_s:.0f} s:\n"
                                   f"{server.log_tail()}")
            time.sleep(0.5)
    except BaseException:
        server.stop()
        raise
