"""Managed vLLM servers (engine/managed.py): the one command line, the start of a real server (its key kept out of
``ps``, its private log, health, the whole process group stopped), a start that fails (fast, with the log's last
lines), out-of-memory detection, and the stop of servers a crashed console left behind.

One real server start for the module (plus one that fails within seconds); the server's requests themselves are
covered by the contract tests (test_client_contract.py, "managed-server")."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import (
    EngineArgsError,
    EngineDeadError,
    EngineNotReadyError,
    ServerStartError,
    ServerUnavailableError,
)
from engine.managed import (
    PRIME_PROMPT_TOKENS,
    SERVER_MODULE,
    ManagedServer,
    ManagedServerClient,
    _proc_start,
    base_model_name,
    is_out_of_memory,
    last_error_line,
    reap_leftovers,
    server_command,
    server_env,
)
from engine.server_client import probe
from engine.types import ChatMessage, HostConfig, LoraAdapter, ModelSpec, SamplingSettings, ServerOptions

CONFIG = HostConfig(kv_cache_gib=0.25)


def flag_value(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


# --- the command line (no server) ------------------------------------------------------------------------------


def test_the_command_line_carries_the_versions_engine_arguments_and_no_key() -> None:
    spec = ModelSpec(name="support-v2", source="/models/support", revision="abc123", max_model_len=512,
                     engine_args={"enforce_eager": True, "enable_prefix_caching": False, "max_num_seqs": 4,
                                  "kv_cache_dtype": "auto"})
    command = server_command(spec, 43210, CONFIG, "/venv/bin/python", on_cpu=True)
    assert command[:3] == ["/venv/bin/python", "-m", SERVER_MODULE]
    assert flag_value(command, "--model") == "/models/support" and flag_value(command, "--revision") == "abc123"
    assert flag_value(command, "--host") == "127.0.0.1" and flag_value(command, "--port") == "43210"
    assert flag_value(command, "--served-model-name") == "support-v2"
    assert flag_value(command, "--max-model-len") == "512" and flag_value(command, "--max-num-seqs") == "4"
    assert flag_value(command, "--kv-cache-memory-bytes") == str(int(0.25 * (1 << 30)))  # the host's KV size
    assert "--enforce-eager" in command and "--no-enable-prefix-caching" in command
    assert "--no-trust-remote-code" in command and "--trust-remote-code" not in command
    assert not any("api-key" in part or "API_KEY" in part for part in command)


def test_on_a_gpu_the_kv_cache_is_left_to_the_versions_arguments_and_trust_remote_code_is_the_installations() -> None:
    spec = ModelSpec(name="big", source="org/model", engine_args={"gpu_memory_utilization": 0.8,
                                                                   "tensor_parallel_size": 2})
    command = server_command(spec, 8001, HostConfig(trust_remote_code=True), on_cpu=False)
    assert "--kv-cache-memory-bytes" not in command and flag_value(command, "--gpu-memory-utilization") == "0.8"
    assert flag_value(command, "--tensor-parallel-size") == "2" and "--trust-remote-code" in command
    assert command[0] == sys.executable


def test_a_lora_version_is_served_under_its_own_name_on_its_base() -> None:
    spec = ModelSpec(name="support-lora-v1", source="/models/base",
                     lora=LoraAdapter(name="support-lora-v1", path="/adapters/support", rank=12))
    command = server_command(spec, 8002, CONFIG, on_cpu=True)
    assert "--enable-lora" in command and flag_value(command, "--max-lora-rank") == "16"
    assert flag_value(command, "--lora-modules") == "support-lora-v1=/adapters/support"
    assert flag_value(command, "--served-model-name") == base_model_name(spec) != spec.name
    assert spec.model_on_server == "support-lora-v1"  # requests name the adapter


def test_engine_arguments_outside_the_allowlist_are_refused_before_anything_starts(tmp_path: Path) -> None:
    spec = ModelSpec(name="bad", source="/models/x", engine_args={"worker_cls": "evil.Worker"})
    with pytest.raises(EngineArgsError, match="worker_cls"):
        server_command(spec, 8003, CONFIG, on_cpu=True)
    with pytest.raises(EngineArgsError, match="worker_cls"):
        ManagedServer.start(spec, CONFIG, ServerOptions(log_dir=str(tmp_path / "servers")))
    assert not (tmp_path / "servers").exists() or not any((tmp_path / "servers").iterdir())


def test_the_key_goes_through_the_environment_and_an_inherited_one_is_dropped() -> None:
    assert server_env("k3y", {"PATH": "/bin", "VLLM_API_KEY": "old"}) == {"PATH": "/bin", "VLLM_API_KEY": "k3y"}
    assert server_env(None, {"PATH": "/bin", "VLLM_API_KEY": "old"}) == {"PATH": "/bin"}


def test_a_server_does_not_inherit_what_an_in_process_engine_added_to_this_processs_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # What vLLM's in-process engine sets in os.environ when it starts (measured: these among others).
    monkeypatch.setenv("VLLM_DIST_IDENT", "vllm_dist_of_the_in_process_engine")
    monkeypatch.setenv("LD_PRELOAD", "/somewhere/torch/lib/libgomp.so.1")
    env = server_env(None)
    assert "VLLM_DIST_IDENT" not in env and env.get("LD_PRELOAD") != "/somewhere/torch/lib/libgomp.so.1"
    assert env["PATH"] == os.environ["PATH"]  # the environment the process started with


@pytest.mark.parametrize(("tail", "returncode", "oom"), [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", 1, True),
    ("RuntimeError: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
     "allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)", 1, True),
    ("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`", 1, True),
    ("ValueError: To serve at least one request with the model's max seq len (8192), (1.00 GiB KV cache is "
     "needed, which is larger than the available KV cache memory (0.25 GiB).", 1, True),
    ("INFO starting\nINFO loading weights", -signal.SIGKILL, True),  # the kernel's OOM killer leaves no line
    ("OSError: Repo id must be in the form 'repo_name'", 1, False),
    ("ValueError: room for 3 zoom levels", 1, False),
])
def test_out_of_memory_is_told_from_the_logs_last_lines(tail: str, returncode: int, oom: bool) -> None:
    assert is_out_of_memory(tail, returncode) is oom


def test_the_error_line_of_a_traceback_is_found() -> None:
    tail = "Traceback (most recent call last):\n  File \"x.py\", line 1\n    raise OSError('no')\nOSError: no such model"
    assert last_error_line(tail) == "OSError: no such model" and last_error_line("INFO all fine") is None


# --- leftovers of a console that is gone (stand-in processes with a server's command line) -------------------------


def _stand_in(port: int) -> subprocess.Popen[bytes]:
    """A process whose command line reads like a managed server's (it only sleeps), in its own session."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", SERVER_MODULE,  # noqa: S603
                             "--port", str(port)], start_new_session=True)


def _pid_file(directory: Path, process: subprocess.Popen[bytes], port: int, owner: int,
              owner_started: int | None) -> Path:
    path = directory / f"v-{port}.pid"
    path.write_text(json.dumps({"pid": process.pid, "port": port, "model": "v", "owner_pid": owner,
                                "owner_started": owner_started}))
    return path


def _gone_pid() -> int:
    ended = subprocess.Popen(["true"])  # noqa: S607
    ended.wait()
    return ended.pid


def test_servers_of_a_console_that_is_gone_are_stopped_and_others_left_alone(tmp_path: Path) -> None:
    orphan, ours, stranger = _stand_in(41001), _stand_in(41002), subprocess.Popen(["sleep", "120"])  # noqa: S607
    try:
        orphan_file = _pid_file(tmp_path, orphan, 41001, _gone_pid(), 12345)
        ours_file = _pid_file(tmp_path, ours, 41002, os.getpid(), _proc_start(os.getpid()))
        stranger_file = _pid_file(tmp_path, stranger, 41003, _gone_pid(), 12345)  # pid now runs something else
        (tmp_path / "garbage.pid").write_text("not json")
        assert reap_leftovers(tmp_path) == [orphan.pid]
        assert orphan.wait(timeout=30) == -signal.SIGTERM and not orphan_file.exists()
        assert ours.poll() is None and ours_file.exists()  # a console that still runs owns it
        assert stranger.poll() is None and not stranger_file.exists()  # not a server: never signalled
        assert reap_leftovers(tmp_path / "missing") == []
    finally:
        for process in (orphan, ours, stranger):
            process.kill()
            process.wait()


def _group_members(group: int) -> list[int]:
    """The running processes of a process group (zombies, ended but not yet reaped, left out)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(entry.name))
    return members


# --- the first request, before a server counts as started (a stand-in server: ``ServerOptions.python``) ---------

# A stand-in for vLLM's server: answers /health, writes each POST (path, Authorization, body) as a JSON line to
# RECORD and answers it; with CRASH, answers 500 as vLLM's server does when its engine core died, logs vLLM's error
# line and exits.
_STAND_IN_SERVER = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT = int(sys.argv[sys.argv.index("--port") + 1])
RECORD, CRASH = {record!r}, {crash!r}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, status, payload):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def do_GET(self):
        self._answer(200 if self.path == "/health" else 404, b"{{}}")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with open(RECORD, "a") as record:
            record.write(json.dumps({{"path": self.path, "auth": self.headers.get("Authorization"),
                                     "body": body}}) + "\\n")
        if CRASH:
            self._answer(500, b'{{"error": {{"message": "EngineCore encountered an issue."}}}}')
            print("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.", flush=True)
            os._exit(1)
        self._answer(200, json.dumps({{"choices": [{{"index": 0, "text": "x", "finish_reason": "length"}}],
                                      "usage": {{"prompt_tokens": len(body["prompt"]), "completion_tokens": 1}}}}
                                     ).encode())


HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
"""


def _stand_in_python(tmp_path: Path, *, crash: bool) -> tuple[str, Path]:
    """An interpreter (the ``ServerOptions.python`` seam) that runs the stand-in server whatever module it is
    asked to run, and the file its requests are written to."""
    record = tmp_path / "requests.jsonl"
    script = tmp_path / "stand_in_server.py"
    script.write_text(_STAND_IN_SERVER.format(record=str(record), crash=crash))
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(0o755)
    return str(python), record


@pytest.mark.parametrize(("max_model_len", "lora", "tokens", "model"), [
    (None, False, PRIME_PROMPT_TOKENS, "first"),
    (16, True, 15, "first.base"),  # a short context: one token less than it; a LoRA version: its base
])
def test_a_server_answers_a_long_enough_first_request_before_it_counts_as_started(
        tmp_path: Path, max_model_len: int | None, lora: bool, tokens: int, model: str) -> None:
    python, record = _stand_in_python(tmp_path, crash=False)
    spec = ModelSpec(name="first", source=str(tmp_path), max_model_len=max_model_len, backend="managed-server",
                     lora=LoraAdapter("first", str(tmp_path / "adapter"), rank=8) if lora else None)
    client = ManagedServerClient.start(spec, CONFIG, ServerOptions(log_dir=str(tmp_path / "servers"), python=python,
                                                                   start_timeout_s=120))
    try:
        assert client.status().state == "ready"
        # It came in before start() returned: the server's very first request, with its key.
        (first,) = [json.loads(line) for line in record.read_text().splitlines()]
        assert first["path"] == "/v1/completions" and first["auth"] == f"Bearer {client.server.api_key}"
        body = first["body"]
        assert body["model"] == model and body["max_tokens"] == 1 and len(body["prompt"]) == tokens
        assert PRIME_PROMPT_TOKENS >= 5  # the shortest first engine step that lived on an AMX CPU (bfloat16)
        assert all(isinstance(token, int) and 0 < token < 64 for token in body["prompt"])  # in any vocabulary
    finally:
        client.shutdown()


def test_a_server_that_dies_on_its_first_request_did_not_start_and_is_stopped(tmp_path: Path) -> None:
    python, record = _stand_in_python(tmp_path, crash=True)
    spec = ModelSpec(name="dies-first", source=str(tmp_path), backend="managed-server")
    client = ManagedServerClient.start(spec, CONFIG, ServerOptions(log_dir=str(tmp_path / "servers"), python=python,
                                                                   start_timeout_s=120), wait=False)
    try:
        with pytest.raises(ServerStartError) as failed:
            client.wait_ready()
        message = str(failed.value)
        assert message.startswith("The vLLM server for dies-first did not start: it answered its first request "
                                  "with HTTP 500")
        assert "EngineDeadError: EngineCore encountered an issue." in message  # the log's last lines
        assert not failed.value.out_of_memory and not client.server.alive()
        assert len(record.read_text().splitlines()) == 1
        status = client.status()
        assert status.state == "failed" and status.error == message and client.serving is None
        with pytest.raises(EngineNotReadyError, match="did not start"):
            client.stream_prompt("Hello", SamplingSettings(max_tokens=1))
    finally:
        client.shutdown()


# --- a real managed server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def managed(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedServerClient]:
    # A LoRA version, so the one real start also shows the adapter served under the version's name.
    from engine.demo.tiny import build_tiny_lora

    adapter = build_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter", rank=8)
    log_dir = tmp_path_factory.mktemp("managed") / "servers"
    spec = ModelSpec(name="tiny-managed", source=str(tiny_model_dir), max_model_len=512, backend="managed-server",
                     engine_args={"enforce_eager": True}, lora=LoraAdapter("tiny-managed", str(adapter), rank=8))
    # The first port it picks is taken meanwhile (held here), as when another program binds it between the pick
    # and the server's bind: the server must move to another port by itself.
    import socket

    import engine.managed as managed_module

    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    held.listen()
    picks = iter([held.getsockname()[1]])
    real_pick = managed_module.pick_port
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(managed_module, "pick_port", lambda: next(picks, None) or real_pick())
        try:
            client = ManagedServerClient.start(spec, CONFIG, ServerOptions(log_dir=str(log_dir), start_timeout_s=600))
        finally:
            held.close()
    yield client
    client.shutdown()


@pytest.mark.engine
def test_the_server_runs_the_command_line_with_its_key_only_in_its_environment(managed: ManagedServerClient) -> None:
    server = managed.server
    argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode().split("\0")
    assert SERVER_MODULE in argv and flag_value(argv, "--port") == str(server.port)
    assert flag_value(argv, "--host") == "127.0.0.1" and flag_value(argv, "--served-model-name") == "tiny-managed.base"
    assert flag_value(argv, "--lora-modules").startswith("tiny-managed=") and "--enable-lora" in argv
    assert len(server.api_key) >= 32 and not any(server.api_key in part for part in argv)  # not in `ps`
    environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
    assert f"VLLM_API_KEY={server.api_key}".encode() in environ
    assert server.url == f"http://127.0.0.1:{server.port}" and managed.urls == (server.url,)
    assert server.api_key not in repr(managed) and server.api_key not in repr(server)


@pytest.mark.engine
def test_a_port_taken_before_the_server_bound_it_is_replaced_by_another(managed: ManagedServerClient) -> None:
    server = managed.server
    logs = sorted(server.log_dir.glob("tiny-managed-*.log"))
    (first,) = [log for log in logs if log != server.log_path]  # the attempt on the taken port
    assert "address already in use" in first.read_text(errors="replace").lower()
    assert not first.with_suffix(".pid").exists() and server.pid_path.exists()
    assert managed.urls == (server.url,) and managed.status().ready  # the client follows the server's new port


@pytest.mark.engine
def test_the_log_is_private_and_the_pid_file_names_the_server_and_its_console(managed: ManagedServerClient) -> None:
    server = managed.server
    assert server.log_path.name == f"tiny-managed-{server.port}.log" and server.log_path.stat().st_size > 0
    assert stat.S_IMODE(server.log_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(server.log_path.parent.stat().st_mode) == 0o700
    record = json.loads(server.pid_path.read_text())
    assert record["pid"] == server.pid and record["port"] == server.port and record["owner_pid"] == os.getpid()
    assert stat.S_IMODE(server.pid_path.stat().st_mode) == 0o600
    assert reap_leftovers(server.log_dir) == [] and server.alive()  # this console still runs: left alone
    assert server.api_key not in server.log_path.read_text(errors="replace")


@pytest.mark.engine
def test_the_server_is_ready_wants_its_key_and_answers(managed: ManagedServerClient) -> None:
    server = managed.server
    status = managed.status()
    assert status.state == "ready" and managed.serving is not None
    with pytest.raises(ServerUnavailableError, match="asks for an API key"):
        probe(server.url, "tiny-managed")
    info = probe(server.url, "tiny-managed", api_key=server.api_key)
    assert info.max_model_len == 512 and set(info.models) == {"tiny-managed", "tiny-managed.base"}
    assert info.root == str(managed.spec.lora.path)  # type: ignore[union-attr]  # the adapter answers as the version
    stream = managed.stream_chat([ChatMessage("user", "Hello?")], SamplingSettings(temperature=0.0, max_tokens=5,
                                                                                   ignore_eos=True))
    assert "".join(stream) == stream.result.text and stream.result.output_tokens == 5
    assert stream.result.server == server.url
    health = managed.health()
    assert health.state == "ready" and [s.url for s in health.servers] == [server.url]
    assert health.servers[0].state == "ready" and health.generation_tokens_total >= 5


@pytest.mark.engine
def test_a_server_that_dies_ends_its_streams_then_shutdown_stops_the_whole_group(managed: ManagedServerClient) -> None:
    # Last on purpose: it kills the module's server.
    server = managed.server
    group = server.pid
    assert group is not None and os.getpgid(group) == group  # its own session: the group is the server's
    stream = managed.stream_chat([ChatMessage("user", "Hello?")], SamplingSettings(temperature=0.0, max_tokens=400,
                                                                                   ignore_eos=True))
    next(stream)
    os.killpg(group, signal.SIGKILL)
    with pytest.raises(EngineDeadError, match=server.url):
        for _ in stream:
            pass
    assert stream.result.aborted
    deadline = time.monotonic() + 30
    while server.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    status = managed.status()
    assert status.state == "dead" and "exit status" in (status.error or "")
    managed.shutdown()
    managed.shutdown()
    deadline = time.monotonic() + 30  # SIGKILL is delivered at once, but a process takes a moment to end
    while _group_members(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group_members(group) == []  # no process of the group runs (the engine core included)
    assert managed.status().state == "stopped" and not server.pid_path.exists()


@pytest.mark.engine
def test_a_server_that_cannot_start_fails_at_once_with_its_logs_last_lines(tmp_path: Path) -> None:
    spec = ModelSpec(name="missing-model", source=str(tmp_path / "no-such-model"), max_model_len=512,
                     backend="managed-server")
    client = ManagedServerClient.start(spec, CONFIG, ServerOptions(log_dir=str(tmp_path / "servers"),
                                                                   start_timeout_s=600), wait=False)
    try:
        assert client.status().state in ("loading", "failed")
        with pytest.raises(ServerStartError) as failed:
            client.wait_ready()
        message = str(failed.value)
        # The process ended: the error says so (it did not wait for the 600 s start timeout) and quotes the log.
        assert "its process ended" in message and "did not answer /health" not in message
        assert "no-such-model" in message and "Its last log lines:" in message
        assert not failed.value.out_of_memory and not client.server.alive()
        status = client.status()
        assert status.state == "failed" and status.error == message and client.serving is None
    finally:
        client.shutdown()
