"""Where a model version's engine runs, decided in one place: :func:`start_client` turns a
:class:`~engine.types.ModelSpec` into the :class:`~engine.client.EngineClient` of its backend.

- ``server``: vLLM OpenAI-compatible servers someone else runs; the client is connected (each URL is checked to
  answer and serve the version's model), nothing is started
  (:meth:`engine.server_client.ServerEngineClient.connect`);
- ``managed-server``: the console starts vLLM's OpenAI-compatible server as a child process on a loopback port
  (:meth:`engine.managed.ManagedServerClient.start`);
- ``in-process``: vLLM in a process of ours. The console's live engine is the one
  :class:`~engine.host.EngineHost` of its process (``in_process="here"``; :class:`engine.switching.SwitchingEngine`
  keeps exactly one); a second version beside it (a side-by-side candidate, an evaluation) runs in a child process
  (``in_process="child"``, :class:`~engine.child_client.ChildEngineClient`), because vLLM's per-process state
  forbids two engines in one process.

Callers then only see the protocol; :func:`wait_ready`, :func:`end` and :func:`backend_of` cover what differs in
waiting for, ending and describing the engine they got.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine.errors import EngineNotReadyError, ModelLoadError
from engine.types import HostConfig, HostStatus, ModelSpec, ServerOptions, check_engine_args

if TYPE_CHECKING:
    from engine.client import EngineClient

InProcess = Literal["child", "here"]
IN_PROCESS_MODES: tuple[InProcess, ...] = ("child", "here")
POLL_S = 0.2  # how often wait_ready looks at a client that has no wait of its own


def start_client(spec: ModelSpec, config: HostConfig, options: ServerOptions, *, wait: bool = True,
                 in_process: InProcess = "child", log_path: Path | None = None, nice: int = 0,
                 python: str | None = None) -> EngineClient:
    """The engine client for ``spec`` on its backend, started (or connected) now.

    ``wait`` returns once the engine answers (else call :func:`wait_ready`); an external server is checked at once
    either way. ``in_process`` says where an in-process version runs: ``child`` (a child process, for a version
    beside the live one) or ``here`` (an :class:`~engine.host.EngineHost` in this process). ``log_path``, ``nice``
    and ``python`` are the child process's (its log, CPU priority and interpreter); a managed server logs under
    ``options.log_dir``. Engine arguments outside the allowlist are refused before anything starts.

    Raises ServerUnavailableError (an external server does not answer or serve the model), ServerStartError (a
    managed server did not come up), ModelLoadError (an in-process version did not load) or EngineArgsError.
    """
    if in_process not in IN_PROCESS_MODES:
        raise ValueError(f"in_process must be one of {', '.join(IN_PROCESS_MODES)}, got {in_process!r}")
    if spec.backend == "server":
        from engine.server_client import ServerEngineClient

        return ServerEngineClient.connect(spec, options)
    check_engine_args(spec.engine_args, version=spec.name)
    if spec.backend == "managed-server":
        from engine.managed import ManagedServerClient

        return ManagedServerClient.start(spec, config, options, wait=wait)
    if in_process == "here":
        from engine.host import EngineHost

        return EngineHost.start(spec, config, wait=wait)
    from engine.child_client import ChildEngineClient

    return ChildEngineClient.start(spec, config, wait=wait, nice=nice, log_path=log_path,
                                   timeout_s=options.start_timeout_s, python=python or sys.executable)


def wait_ready(client: EngineClient, timeout: float | None = None) -> HostStatus:
    """Block until ``client``'s engine serves; ModelLoadError if it cannot, EngineNotReadyError after ``timeout``
    seconds (None: no limit). Uses the client's own ``wait_ready`` where it has one."""
    own = getattr(client, "wait_ready", None)
    if callable(own):
        status: HostStatus = own(timeout)
        return status
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = client.status()
        if status.state == "ready":
            return status
        if status.state in ("failed", "dead", "stopped"):
            raise ModelLoadError(f"Model version {status.model_version or '?'} could not start: "
                                 f"{status.error or status.message}")
        if deadline is not None and time.monotonic() >= deadline:
            raise EngineNotReadyError(f"{status.model_version or 'The engine'} is still loading after "
                                      f"{timeout or 0:.0f} s.")
        time.sleep(POLL_S)


def end(client: EngineClient) -> None:
    """End ``client`` at once (a timeout or a cancellation): kill a child process, else shut the client down
    (a managed server is stopped; an external server's client is closed, the server keeps running)."""
    kill = getattr(client, "kill", None)
    if callable(kill):
        kill()
    else:
        client.shutdown()


def backend_of(client: EngineClient) -> str:
    """Where ``client``'s engine runs, in the words of reports: ``in-process``, ``separate process``, ``server``
    or ``managed-server``."""
    from engine.child_client import ChildEngineClient
    from engine.managed import ManagedServerClient
    from engine.server_client import ServerEngineClient

    if isinstance(client, ChildEngineClient):
        return "separate process"
    if isinstance(client, ManagedServerClient):  # a ServerEngineClient too: asked first
        return "managed-server"
    if isinstance(client, ServerEngineClient):
        return "server"
    return "in-process"
