"""The parent side of :mod:`engine.child`: a model version served by a child process, streamed like the host.

Used for a candidate version next to the live one (side-by-side chats), where a second in-process engine is not
possible. :meth:`ChildEngine.stream_chat` returns a :class:`RemoteStream`: an iterator of text deltas, then
``.result`` (a :class:`GenerationResult`), with ``cancel()``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from engine.errors import EngineDeadError, EngineError, EngineNotReadyError, ModelLoadError
from engine.types import ChatMessage, GenerationResult, ModelSpec, SamplingSettings, check_engine_args

logger = logging.getLogger(__name__)

_ENDED = object()


class RemoteStream(Iterator[str]):
    """Deltas of one request answered by a child engine; ``result`` once iteration ended."""

    def __init__(self, engine: ChildEngine, request_id: str, model_version: str, sink: queue.SimpleQueue[Any]) -> None:
        self.request_id = request_id
        self.model_version = model_version
        self._engine = engine
        self._sink = sink
        self._result: GenerationResult | None = None
        self._parts: list[str] = []

    @property
    def result(self) -> GenerationResult:
        """The finished request's text, counts and timings."""
        if self._result is None:
            raise RuntimeError(f"request {self.request_id} has not finished")
        return self._result

    def __iter__(self) -> RemoteStream:
        return self

    def __next__(self) -> str:
        if self._result is not None:
            raise StopIteration
        while True:
            try:
                message = self._sink.get(timeout=1.0)
            except queue.Empty:
                if not self._engine.alive():
                    self._finish_aborted()
                    raise EngineDeadError("The candidate engine stopped before this answer finished.") from None
                continue
            if message is _ENDED:
                self._finish_aborted()
                raise EngineDeadError("The candidate engine stopped before this answer finished.")
            if "delta" in message:
                self._parts.append(message["delta"])
                return str(message["delta"])
            if "result" in message:
                fields = dict(message["result"])
                fields["token_ids"] = tuple(fields.get("token_ids") or ())
                self._result = GenerationResult(**fields)
                raise StopIteration
            self._finish_aborted()
            raise EngineError(str(message.get("error") or "The candidate engine failed."))

    def cancel(self) -> GenerationResult:
        """Abort the request (no-op once it ended) and return the result with what was generated."""
        if self._result is None:
            try:
                self._engine.send({"op": "cancel", "id": self.request_id})
                deadline = time.monotonic() + 30.0
                while self._result is None and time.monotonic() < deadline:
                    next(self, None)
            except EngineError:
                pass  # the request is gone either way; the result says aborted
            self._finish_aborted()
        assert self._result is not None
        return self._result

    def _finish_aborted(self) -> None:
        if self._result is None:
            self._result = GenerationResult(
                request_id=self.request_id, model_version=self.model_version, text="".join(self._parts),
                finish_reason="abort", prompt_tokens=0, output_tokens=0, queue_s=None, ttft_s=None,
                mean_itl_s=None, e2e_s=None, aborted=True,
            )


class ChildEngine:
    """One model version served by ``python -m engine.child``; safe to share across threads."""

    def __init__(self, spec: ModelSpec, process: subprocess.Popen[str]) -> None:
        self.spec = spec
        self._process = process
        self._sinks: dict[str, queue.SimpleQueue[Any]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._error: str | None = None
        self.last_used = time.monotonic()
        self._reader = threading.Thread(target=self._read, name=f"child-engine[{spec.name}]", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, spec: ModelSpec, *, kv_cache_gib: float = 0.25, log_path: Path | None = None,
              timeout_s: float = 600.0, nice: int = 0, trust_remote_code: bool = False) -> ChildEngine:
        """Start the child, wait until its engine is ready; raise ModelLoadError if it cannot load.

        ``nice`` > 0 lowers the child's CPU priority by that much (evaluations, so live chats win).
        ``trust_remote_code`` is the installation's setting (``HostConfig.trust_remote_code`` in the child). A
        spec with engine arguments outside the allowlist is refused here, before any process starts (and again
        by the child's own host)."""
        check_engine_args(spec.engine_args, version=spec.name)
        env = dict(os.environ)
        env["VLLM_LOGGING_STREAM"] = "ext://sys.stderr"  # stdout carries the protocol only
        log: IO[str] | int = subprocess.DEVNULL if log_path is None else log_path.open("a")
        process = subprocess.Popen(  # noqa: S603 - our own module, no shell
            [sys.executable, "-m", "engine.child"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            text=True, env=env, bufsize=1,
        )
        engine = cls(spec, process)
        engine.send({"spec": dataclasses.asdict(spec) | {"engine_args": dict(spec.engine_args)},
                     "kv_cache_gib": kv_cache_gib, "nice": nice, "trust_remote_code": trust_remote_code})
        if not engine._ready.wait(timeout_s) or engine._error is not None:
            engine.shutdown()
            raise ModelLoadError(f"Model version {spec.name} could not start for comparison: "
                                 f"{engine._error or 'it took too long to load'}")
        return engine

    def alive(self) -> bool:
        """True while the child process runs."""
        return self._process.poll() is None

    def send(self, message: dict[str, Any]) -> None:
        stdin = self._process.stdin
        if stdin is None or not self.alive():
            raise EngineNotReadyError(f"The comparison engine for {self.spec.name} is not running.")
        with self._lock:
            stdin.write(json.dumps(message) + "\n")
            stdin.flush()

    def stream_chat(self, messages: Sequence[ChatMessage], sampling: SamplingSettings, *,
                    request_id: str | None = None) -> RemoteStream:
        """Start a chat completion in the child; returns its stream of deltas."""
        self.last_used = time.monotonic()
        request_id = f"{request_id or 'cmp'}-{next(self._ids)}"
        sink: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with self._lock:
            self._sinks[request_id] = sink
        self.send({"op": "chat", "id": request_id, "messages": [m.as_dict() for m in messages],
                   "sampling": dataclasses.asdict(sampling)})
        return RemoteStream(self, request_id, self.spec.name, sink)

    def shutdown(self) -> None:
        """End the child (closing its stdin lets it shut its engine down cleanly); kill it if it hangs."""
        try:
            if self._process.stdin is not None:
                self._process.stdin.close()
            self._process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait()

    def kill(self) -> None:
        """Stop the child at once (timeout or cancellation); its unfinished streams end with EngineDeadError."""
        if self.alive():
            self._process.kill()
        self._process.wait()

    def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        for line in stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue  # a stray line from a library; the protocol lines are JSON objects
            if not isinstance(message, dict):
                continue
            if "event" in message:
                if message["event"] == "failed":
                    self._error = str(message.get("error"))
                self._ready.set()
                continue
            with self._lock:
                sink = self._sinks.get(str(message.get("id")))
                if sink is not None and ("result" in message or "error" in message):
                    del self._sinks[str(message.get("id"))]
            if sink is not None:
                sink.put(message)
        # The child ended: wake everyone still waiting.
        if not self._ready.is_set():
            self._error = self._error or "the process ended while loading"
            self._ready.set()
        with self._lock:
            sinks, self._sinks = list(self._sinks.values()), {}
        for sink in sinks:
            sink.put(_ENDED)
