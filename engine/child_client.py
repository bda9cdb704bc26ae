"""An :class:`~engine.client.EngineClient` whose engine runs in a child process (``python -m engine.child``).

For a second model version beside the console's live one: a side-by-side candidate, an evaluation, the two
versions of a latency comparison. :meth:`ChildEngineClient.start` starts the child and waits until its engine is
ready; requests then go over the line protocol of :mod:`engine.child_wire`, and each returns a
:class:`ChildStream` (deltas, then ``result``; ``cancel()``), errors arriving as their :mod:`engine.errors` type.
"""

from __future__ import annotations

import itertools
import logging
import queue
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from engine import child_wire as wire
from engine.errors import EmptyPromptError, EngineDeadError, EngineError, EngineNotReadyError, ModelLoadError
from engine.stream import StreamBase
from engine.types import (
    ChatMessage,
    EngineHealth,
    GenerationResult,
    HostConfig,
    HostStatus,
    ModelSpec,
    SamplingSettings,
    check_engine_args,
)

logger = logging.getLogger(__name__)

# The directory that holds the ``engine`` package: the child's working directory, so ``-m engine.child``
# resolves to this same code whether or not the project is installed.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
LOG_TAIL_LINES = 12
# How long a waiting caller sleeps on its queue before checking that the child still runs.
LIVENESS_POLL_S = 1.0
CALL_TIMEOUT_S = 60.0

_ENDED = object()  # put on every open queue when the child's output ends


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last non-blank lines of a child's log ('' when there is none)."""
    if path is None:
        return ""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


class ChildStream(StreamBase):
    """One request answered by the child: an iterator of text deltas, then ``result`` (a
    :class:`~engine.client.ResponseStream`). Dropping it unfinished cancels the request."""

    def __init__(self, client: ChildEngineClient, request_id: str, prompt_tokens: int,
                 sink: queue.SimpleQueue[Any]) -> None:
        self.request_id = request_id
        self.model_version = client.spec.name
        self.prompt_tokens = prompt_tokens
        self._client = client
        self._sink = sink
        self._parts: list[str] = []
        self._result: GenerationResult | None = None
        self._finalizer = weakref.finalize(self, client.cancel, request_id)
        self._finalizer.atexit = False

    def __next__(self) -> str:
        while self._result is None:
            message = self._client.next_message(self._sink)
            if message is _ENDED:
                self._finish_aborted()
                raise EngineDeadError(f"The engine process serving {self.model_version} stopped before this "
                                      "answer finished.")
            if "delta" in message:
                delta = str(message["delta"])
                self._parts.append(delta)
                if delta:
                    return delta
            elif "result" in message:
                self._finish(wire.result_from_wire(message["result"]))
            else:
                self._finish_aborted()
                raise wire.error_from_wire(message.get("error"))
        raise StopIteration

    def cancel(self) -> GenerationResult:
        """Abort the request (no-op once it ended) and return the result with what was generated."""
        if self._result is None:
            self._finalizer()  # sends the cancel once and disarms the finalizer
            deadline = time.monotonic() + 30.0
            try:
                while self._result is None and time.monotonic() < deadline:
                    next(self, None)
            except EngineError:
                pass  # the request is gone either way; the result says aborted
            self._finish_aborted()
        assert self._result is not None
        return self._result

    def _finish(self, result: GenerationResult) -> None:
        self._finalizer.detach()
        self._client.forget(self.request_id)
        self._result = result

    def _finish_aborted(self) -> None:
        if self._result is None:
            self._finish(GenerationResult(
                request_id=self.request_id, model_version=self.model_version, text="".join(self._parts),
                finish_reason="abort", prompt_tokens=self.prompt_tokens, output_tokens=0, queue_s=None,
                ttft_s=None, mean_itl_s=None, e2e_s=None, aborted=True,
            ))


class ChildEngineClient:
    """One model version served by ``python -m engine.child``; an :class:`~engine.client.EngineClient`, safe to
    share across threads. Build it with :meth:`start`."""

    def __init__(self, spec: ModelSpec, process: subprocess.Popen[str], log_path: Path | None = None) -> None:
        self.spec = spec
        self.log_path = log_path
        self.last_used = time.monotonic()  # for a pool that ends idle children
        self.load_s: float | None = None  # as the child measured it
        self._process = process
        self._sinks: dict[str, queue.SimpleQueue[Any]] = {}
        self._lock = threading.Lock()  # guards _sinks and writes to the child's stdin
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._error: str | None = None
        self._closed = False
        self._reader = threading.Thread(target=self._read, name=f"child-engine[{spec.name}]", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, spec: ModelSpec, config: HostConfig | None = None, *, wait: bool = True, nice: int = 0,
              log_path: Path | None = None, timeout_s: float = 600.0,
              python: str = sys.executable) -> ChildEngineClient:
        """Start the child with ``spec`` and ``config`` (its own host's; ``trust_remote_code`` is the
        installation's) and return the client, once its engine is ready unless ``wait`` is False (then call
        :meth:`wait_ready`).

        A spec with engine arguments outside the allowlist is refused here with EngineArgsError, before any
        process starts (and again by the child's own host). ``nice`` > 0 lowers the child's CPU priority so live
        chats win. The child's stderr (vLLM's logs) goes to ``log_path``. ``python`` is the interpreter (a seam for
        tests). Raises ModelLoadError (with the child's reason, or its log's last lines) if it cannot load within
        ``timeout_s`` (the child is then ended)."""
        check_engine_args(spec.engine_args, version=spec.name)
        config = config or HostConfig(kv_cache_gib=0.25)
        log: IO[str] | int = subprocess.DEVNULL if log_path is None else log_path.open("a", encoding="utf-8")
        try:
            process = subprocess.Popen(  # noqa: S603 - our own module, no shell
                [python, "-m", "engine.child"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                cwd=PACKAGE_ROOT, text=True, encoding="utf-8", errors="replace", bufsize=1,
            )
        finally:
            if not isinstance(log, int):
                log.close()  # the child holds its own copy
        client = cls(spec, process, log_path)
        logger.info("engine process %s started for %s", process.pid, spec.name)
        try:
            client._send(wire.start_message(spec, config, nice=nice))
        except EngineError:
            pass  # it already ended: the reader reports how
        if wait:
            try:
                client.wait_ready(timeout_s)
            except EngineNotReadyError:
                client.kill()
                raise ModelLoadError(f"Model version {spec.name} could not start in its own process: it took "
                                     f"longer than {timeout_s:.0f} s to load.") from None
        return client

    def wait_ready(self, timeout: float | None = None) -> HostStatus:
        """Block until the child's engine loaded; ModelLoadError (the child is then ended) if it could not,
        EngineNotReadyError if it still loads after ``timeout`` seconds."""
        if not self._ready.wait(timeout):
            raise EngineNotReadyError(f"{self.spec.name} is still loading after {timeout or 0:.0f} s.")
        if self._error is not None:
            self.kill()
            raise ModelLoadError(f"Model version {self.spec.name} could not start in its own process: {self._error}")
        return HostStatus("ready", self.spec.name, f"Serving {self.spec.name}", 1.0)

    # -- EngineClient --

    @property
    def serving(self) -> ModelSpec | None:
        """The version while the child serves it; None once it stopped."""
        return self.spec if self.status().state == "ready" else None

    def status(self) -> HostStatus:
        """Told from the process (loading, failed, dead, stopped); while it runs, the child host's own status."""
        local = self._local_status()
        if local is not None:
            return local
        try:
            return wire.status_from_wire(self._call({"op": "status"}))
        except EngineError:
            return self._local_status() or HostStatus("dead", self.spec.name, "The engine process does not answer.")

    def health(self) -> EngineHealth:
        """The child host's load and counters; only the state and error while it does not run."""
        local = self._local_status()
        if local is None:
            try:
                return wire.health_from_wire(self._call({"op": "health"}))
            except EngineError:
                local = self._local_status() or HostStatus("dead", self.spec.name, "The engine process does not answer.")
        return EngineHealth(local.state, self.spec.name, error=local.error, at=time.time())

    def stream_chat(self, messages: Sequence[ChatMessage], sampling: SamplingSettings, *,
                    request_id: str | None = None) -> ChildStream:
        """Start a chat completion in the child; returns its stream once the child's host took it (it raises what
        the host raised: PromptTooLongError...)."""
        if not messages or not messages[-1].content.strip():
            raise EmptyPromptError()
        return self._submit({"op": "chat", "messages": [m.as_dict() for m in messages],
                             "sampling": wire.sampling_to_wire(sampling)}, request_id or f"chat-{uuid.uuid4().hex[:16]}")

    def stream_prompt(self, prompt: str, sampling: SamplingSettings, *, request_id: str | None = None) -> ChildStream:
        """Start a completion of a raw prompt (no chat template) in the child."""
        return self._submit({"op": "prompt", "prompt": prompt, "sampling": wire.sampling_to_wire(sampling)},
                            request_id or f"cmpl-{uuid.uuid4().hex[:16]}")

    def check_chat(self, messages: Sequence[ChatMessage]) -> None:
        """What :meth:`stream_chat` would refuse, checked by the child's host; nothing while it does not run."""
        if self._local_status() is not None:
            return
        self._call({"op": "check", "messages": [m.as_dict() for m in messages]})

    def cancel(self, request_id: str) -> None:
        """Abort a running request by its id; ignored once the child ended."""
        try:
            self._send({"op": "cancel", "id": request_id})
        except EngineError:
            pass

    def shutdown(self) -> None:
        """End the child (closing its stdin lets it shut its engine down cleanly), killing it if it hangs; safe to
        call more than once. Unfinished streams end with EngineDeadError."""
        self._closed = True
        try:
            with self._lock:
                if self._process.stdin is not None and not self._process.stdin.closed:
                    self._process.stdin.close()
            self._process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=5)

    # -- the process --

    @property
    def pid(self) -> int:
        return self._process.pid

    def alive(self) -> bool:
        """True while the child process runs."""
        return self._process.poll() is None

    def kill(self) -> None:
        """Stop the child at once (a timeout or a cancellation); its unfinished streams end with EngineDeadError."""
        self._closed = True
        if self.alive():
            self._process.kill()
        self._process.wait()
        self._reader.join(timeout=5)

    def next_message(self, sink: queue.SimpleQueue[Any], deadline: float | None = None) -> Any:
        """The next message for one request (``_ENDED`` once the child's output ended); EngineNotReadyError when
        none came by ``deadline`` (``time.monotonic()``; None waits as long as the child runs)."""
        while True:
            try:
                return sink.get(timeout=LIVENESS_POLL_S)
            except queue.Empty:
                if not self._reader.is_alive():
                    try:
                        return sink.get_nowait()
                    except queue.Empty:
                        return _ENDED
                if deadline is not None and time.monotonic() > deadline:
                    raise EngineNotReadyError(f"The engine process for {self.spec.name} does not answer.") from None

    def forget(self, request_id: str) -> None:
        """Stop routing answers of ``request_id`` (its stream has ended)."""
        with self._lock:
            self._sinks.pop(request_id, None)

    # -- internals --

    def _local_status(self) -> HostStatus | None:
        """The state when it is known without asking the child: everything but 'ready'."""
        name = self.spec.name
        if self._closed:
            return HostStatus("stopped", name, f"The engine process for {name} was stopped.")
        if not self._ready.is_set():
            return HostStatus("loading", name, f"Starting {name} in its own process")
        if self._error is not None:
            return HostStatus("failed", name, f"{name} failed to load", error=self._error)
        if not self.alive() or not self._reader.is_alive():
            return HostStatus("dead", name, f"The engine process for {name} stopped",
                              error=self._ended_because())
        return None

    def _ended_because(self) -> str:
        status = self._process.poll()
        tail = log_tail(self.log_path)
        return (f"its engine process ended unexpectedly (exit status {status})."
                + (f" Its last log lines:\n{tail}" if tail else ""))

    def _send(self, message: dict[str, Any]) -> None:
        with self._lock:
            stdin = self._process.stdin
            if self._closed or stdin is None or stdin.closed or not self.alive():
                raise self._not_running()
            try:
                stdin.write(wire.encode(message))
                stdin.flush()
            except OSError as exc:  # the child ended meanwhile (a broken pipe)
                raise self._not_running() from exc

    def _not_running(self) -> EngineError:
        if self._closed:
            return EngineNotReadyError(f"The engine process for {self.spec.name} has been shut down.")
        return EngineDeadError(f"The engine process for {self.spec.name} has stopped.")

    def _open(self, request_id: str) -> queue.SimpleQueue[Any]:
        sink: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with self._lock:
            if request_id in self._sinks:
                raise EngineError(f"Request id {request_id} is already in use.")
            self._sinks[request_id] = sink
        return sink

    def _submit(self, message: dict[str, Any], request_id: str) -> ChildStream:
        self.last_used = time.monotonic()
        sink = self._open(request_id)
        try:
            self._send(message | {"id": request_id})
            first = self.next_message(sink)
        except BaseException:
            self.forget(request_id)
            raise
        if first is _ENDED:
            self.forget(request_id)
            raise self._not_running()
        if "accepted" not in first:
            self.forget(request_id)
            raise wire.error_from_wire(first.get("error"))
        return ChildStream(self, request_id, int(first["accepted"].get("prompt_tokens") or 0), sink)

    def _call(self, message: dict[str, Any], timeout_s: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        """Send a question (check, status, health) and wait for its reply; raises its error."""
        request_id = f"call-{next(self._ids)}"
        sink = self._open(request_id)
        deadline = time.monotonic() + timeout_s
        try:
            self._send(message | {"id": request_id})
            answer = self.next_message(sink, deadline)
            if answer is _ENDED:
                raise self._not_running()
            if "reply" not in answer:
                raise wire.error_from_wire(answer.get("error"))
            return dict(answer["reply"])
        finally:
            self.forget(request_id)

    def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        for line in stdout:
            try:
                message = wire.decode(line)
            except ValueError:
                continue  # not a protocol line (the child keeps fd 1 for the protocol; be lenient anyway)
            if "event" in message:
                if message["event"] == "failed":
                    self._error = str(message.get("error"))
                elif message["event"] == "ready":
                    load_s = message.get("load_s")
                    self.load_s = float(load_s) if isinstance(load_s, int | float) else None
                self._ready.set()
                continue
            with self._lock:
                sink = self._sinks.get(str(message.get("id")))
            if sink is not None:
                sink.put(message)
        # The child ended: wake everyone still waiting.
        if not self._ready.is_set():
            self._process.wait()
            self._error = self._ended_because()
            self._ready.set()
        with self._lock:
            sinks, self._sinks = list(self._sinks.values()), {}
        for sink in sinks:
            sink.put(_ENDED)
