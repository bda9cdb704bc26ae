"""Running an evaluation: answer every prompt of a suite with one model version (:func:`run_suite_in_child`), and
time the candidate against a baseline version in the same run (:func:`run_latency_comparison`).

Both talk to their engines only through :class:`~engine.client.EngineClient`, started on each version's backend by
:func:`engine.backends.start_client`: an in-process version runs in a child process
(:class:`~engine.child_client.ChildEngineClient`: a second vLLM engine cannot live beside the console's live one
in its process) at a lower CPU priority so live chats win; a managed-server version gets its own vLLM server; a
server version is connected (nothing starts). The engine is ended (a child or managed server stopped, a server's
client closed) when the run ends. This module adds
what an evaluation needs on top: progress for the caller, a time limit, cancellation, and an
:class:`EvaluationRunError` whose message says why a run failed (the child's own error, or the tail of its log).
"""

from __future__ import annotations

import logging
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import backends
from engine.client import EngineClient
from engine.errors import EngineArgsError, EngineError, EngineNotReadyError
from engine.evals.latency import BASELINE, CANDIDATE, PairedTiming, abba_first
from engine.evals.report import Answer
from engine.evals.suite import Suite, SuiteRecord
from engine.types import (
    ChatMessage,
    HostConfig,
    ModelSpec,
    SamplingSettings,
    ServerOptions,
    check_engine_args,
)

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.2  # how often a running evaluation looks at its time limit and cancellation


class EvaluationRunError(EngineError):
    """The evaluation could not load the version, its engine crashed, it timed out or was cancelled; safe to show."""


@dataclass(frozen=True)
class ChildConfig:
    """How an evaluation's child engine runs and answers. Greedy sampling by default, so two runs of one version
    answer alike and a bias pair's answers differ only because their prompts do.

    The paired latency comparison (when the evaluation has a baseline) sends ``latency_prompts`` prompts to both
    versions, answers cut at ``latency_max_tokens`` tokens (only the first token is compared), after
    ``latency_warmup`` unmeasured requests to each. ``python`` is the child's interpreter (a seam for tests).
    ``server_options`` reach and run vLLM servers (server and managed-server versions; the installation's)."""

    kv_cache_gib: float = 0.25
    concurrency: int = 8
    max_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    nice: int = 5
    timeout_s: float = 1800.0
    python: str = sys.executable
    latency_prompts: int = 40
    latency_max_tokens: int = 8
    latency_warmup: int = 2
    trust_remote_code: bool = False  # the installation's setting, passed on to the child's engine
    server_options: ServerOptions = field(default_factory=ServerOptions)

    def __post_init__(self) -> None:
        if not self.kv_cache_gib > 0:
            raise ValueError(f"ChildConfig.kv_cache_gib must be > 0, got {self.kv_cache_gib}")
        if self.concurrency < 1:
            raise ValueError(f"ChildConfig.concurrency must be >= 1, got {self.concurrency}")
        if self.max_tokens < 1:
            raise ValueError(f"ChildConfig.max_tokens must be >= 1, got {self.max_tokens}")
        if not self.timeout_s > 0:
            raise ValueError(f"ChildConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.latency_prompts < 1 or self.latency_max_tokens < 1 or self.latency_warmup < 0:
            raise ValueError("ChildConfig.latency_prompts and latency_max_tokens must be >= 1, latency_warmup >= 0")

    def host_config(self) -> HostConfig:
        """The child's engine host: its own small KV cache, nothing to drain when it ends."""
        return HostConfig(kv_cache_gib=self.kv_cache_gib, drain_timeout_s=0.0,
                          trust_remote_code=self.trust_remote_code)

    def answer_sampling(self) -> SamplingSettings:
        """How the suite's answers are sampled."""
        return SamplingSettings(temperature=self.temperature, top_p=1.0, max_tokens=self.max_tokens, seed=self.seed)

    def sampling(self) -> dict[str, Any]:
        """The sampling the answers were made with, for the report."""
        return {"temperature": self.temperature, "top_p": 1.0, "max_tokens": self.max_tokens, "seed": self.seed}

    def start(self, spec: ModelSpec, log_path: Path | None) -> EngineClient:
        """Start ``spec``'s engine on its backend without waiting for it to load (an external server is checked
        at once: ServerUnavailableError)."""
        return backends.start_client(spec, self.host_config(), self.server_options, wait=False, in_process="child",
                                     log_path=log_path, nice=self.nice, python=self.python)


@dataclass(frozen=True)
class ChildRun:
    """What the run produced: every answer (in completion order) and how long loading and answering took."""

    answers: tuple[Answer, ...]
    load_s: float | None
    generate_s: float | None
    wall_s: float
    backend: str = "in-process"  # the version's backend (ModelSpec.backend)
    engine: str = "separate process"  # where its engine ran (engine.backends.backend_of)

    def run_info(self, config: ChildConfig) -> dict[str, Any]:
        """The run's facts for the report's ``run`` entry."""
        return {"load_s": self.load_s, "generate_s": self.generate_s, "wall_s": round(self.wall_s, 3),
                "concurrency": config.concurrency, "kv_cache_gib": config.kv_cache_gib,
                "sampling": config.sampling(), "engine": self.engine, "backend": self.backend}


ProgressFn = Callable[[str, int, int], None]  # (phase "loading"/"answering"/"comparing", done, total)


class _Watch:
    """A run's time limit and cancellation: ``why()`` says which ended it, or None while it may go on."""

    def __init__(self, deadline: float, cancel: threading.Event | None) -> None:
        self.deadline, self.cancel = deadline, cancel
        self.stopped: str | None = None

    def why(self) -> str | None:
        if self.stopped is None:
            if self.cancel is not None and self.cancel.is_set():
                self.stopped = "cancelled"
            elif time.monotonic() > self.deadline:
                self.stopped = "timeout"
        return self.stopped

    def reason(self, timeout_s: float) -> str:
        return f"took longer than {timeout_s:.0f} s" if self.stopped == "timeout" else "was cancelled"


def _wait_loaded(clients: Sequence[EngineClient], watch: _Watch) -> None:
    """Wait until every client's engine is ready; ModelLoadError if one cannot load. On timeout or cancellation
    the children are killed and this returns (``watch.stopped`` says so)."""
    for client in clients:
        while True:
            try:
                backends.wait_ready(client, WATCH_INTERVAL_S)
                break
            except EngineNotReadyError:
                if watch.why() is not None:
                    for other in clients:
                        backends.end(other)
                    return


# --- answering a suite ------------------------------------------------------------------------------------------


def answer_one(client: EngineClient, record: SuiteRecord, sampling: SamplingSettings) -> Answer:
    """Stream one prompt to the end and time it; an engine error becomes the answer's ``error``."""
    try:
        stream = client.stream_chat([ChatMessage("user", record.prompt)], sampling, request_id=f"eval-{record.id}")
        for _delta in stream:
            pass
        result = stream.result
    except EngineError as exc:
        return Answer(id=record.id, text="", error=str(exc) or type(exc).__name__)
    except Exception as exc:  # one prompt's bug (a tokenizer error...) must not lose the others' answers
        logger.exception("prompt %s failed", record.id)
        return Answer(id=record.id, text="", error=f"{type(exc).__name__}: {exc}"[:500])
    return Answer(
        id=record.id, text=result.text, ttft_s=result.ttft_s, itl_s=result.mean_itl_s, e2e_s=result.e2e_s,
        output_tokens=result.output_tokens, tokens_per_s=result.tokens_per_s, finish_reason=result.finish_reason,
        error=None if not result.aborted else f"aborted ({result.finish_reason})",
    )


def answer_suite(client: EngineClient, records: Sequence[SuiteRecord], sampling: SamplingSettings, *,
                 concurrency: int = 8, on_answer: Callable[[Answer, int], None] | None = None,
                 stop: Callable[[], bool] | None = None) -> list[Answer]:
    """Answer ``records`` through any engine client, ``concurrency`` requests in flight, in completion order.

    ``on_answer(answer, done)`` and ``stop()`` are called on this thread (about every 0.2 s for ``stop``); once
    ``stop()`` is True no further prompt is sent and this returns when the ones in flight end (the caller ends
    them sooner by killing the engine)."""
    todo: queue.SimpleQueue[SuiteRecord] = queue.SimpleQueue()
    for record in records:
        todo.put(record)
    answered: queue.SimpleQueue[Answer | None] = queue.SimpleQueue()
    halted = threading.Event()

    def work() -> None:
        try:
            while not halted.is_set():
                try:
                    record = todo.get_nowait()
                except queue.Empty:
                    return
                answered.put(answer_one(client, record, sampling))
        finally:
            answered.put(None)  # this worker is done

    workers = [threading.Thread(target=work, name=f"eval-{i}", daemon=True)
               for i in range(max(1, min(concurrency, len(records))))]
    for worker in workers:
        worker.start()
    answers: list[Answer] = []
    running = len(workers)
    while running:
        try:
            answer = answered.get(timeout=WATCH_INTERVAL_S)
        except queue.Empty:
            if stop is not None and stop():
                halted.set()
            continue
        if answer is None:
            running -= 1
            continue
        answers.append(answer)
        if on_answer is not None:
            on_answer(answer, len(answers))
        if stop is not None and stop():
            halted.set()
    return answers


def run_suite_in_child(
    spec: ModelSpec,
    suite: Suite,
    config: ChildConfig | None = None,
    *,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> ChildRun:
    """Answer every prompt of ``suite`` with ``spec`` in a child engine process that lives for this run; blocks
    until it ends.

    ``on_progress(phase, done, total)`` is called from this thread. Raises :class:`EvaluationRunError` if the
    version cannot load, its engine dies, the run exceeds ``config.timeout_s`` or ``cancel`` is set.
    """
    config = config or ChildConfig()
    try:  # before a process starts; the child's own host refuses it again
        check_engine_args(spec.engine_args, version=spec.name)
    except EngineArgsError as exc:
        raise EvaluationRunError(f"The evaluation of {spec.name} cannot start: {exc}") from None
    progress = on_progress or (lambda phase, done, total: None)
    started = time.monotonic()
    watch = _Watch(started + config.timeout_s, cancel)
    total = len(suite.records)
    with tempfile.TemporaryDirectory(prefix="llm-console-eval-") as tmp:
        progress("loading", 0, total)
        try:
            client = config.start(spec, Path(tmp) / "engine.log")
        except EngineError as exc:
            raise EvaluationRunError(f"The evaluation of {spec.name} failed: {exc}") from None
        engine = backends.backend_of(client)
        logger.info("evaluation of %s on %s: engine started (%s)", spec.name, suite.name, engine)
        try:
            try:
                _wait_loaded([client], watch)
            except EngineError as exc:
                raise EvaluationRunError(f"The evaluation of {spec.name} failed: {exc}") from None
            answers: list[Answer] = []
            generate_s = None
            if watch.stopped is None:
                progress("answering", 0, total)
                began = time.monotonic()

                def stop() -> bool:
                    if watch.why() is None:
                        return False
                    backends.end(client)  # ends the requests in flight at once
                    return True

                answers = answer_suite(client, suite.records, config.answer_sampling(),
                                       concurrency=config.concurrency,
                                       on_answer=lambda _answer, done: progress("answering", done, total),
                                       stop=stop)
                generate_s = round(time.monotonic() - began, 3)
            if watch.stopped is not None:
                raise EvaluationRunError(f"The evaluation of {spec.name} {watch.reason(config.timeout_s)}; "
                                         "it was stopped.")
            died = client.status()
            # The engine died under the answers: they are not a measurement of it. (A server that missed one health
            # check but answered every prompt did not.)
            if died.state != "ready" and (engine == "separate process" or any(a.error for a in answers)):
                raise EvaluationRunError(f"The evaluation of {spec.name} failed: {died.error or died.message}")
            load_s = getattr(client, "load_s", None)
        finally:
            client.shutdown()
    wall_s = time.monotonic() - started
    logger.info("evaluation of %s on %s: %s answers in %.1f s", spec.name, suite.name, len(answers), wall_s)
    return ChildRun(tuple(answers), load_s, generate_s, wall_s, spec.backend, engine)


# --- the paired latency comparison ------------------------------------------------------------------------------


def latency_prompts(records: Sequence[SuiteRecord], count: int) -> list[SuiteRecord]:
    """``count`` prompts for the latency comparison: spread evenly over the suite (every kind is in it), or the
    suite repeated when it has fewer."""
    if not records:
        return []
    if len(records) <= count:
        return [records[i % len(records)] for i in range(count)]
    return [records[i * len(records) // count] for i in range(count)]


def _first_token_ms(client: EngineClient, text: str, sampling: SamplingSettings, request_id: str) -> float | None:
    """Stream one prompt to its end; the engine's time to first token in ms, None if the request failed."""
    try:
        stream = client.stream_chat([ChatMessage("user", text)], sampling, request_id=request_id)
        for _delta in stream:
            pass
        result = stream.result
    except EngineError as exc:
        logger.warning("latency comparison: %s failed: %s", request_id, exc)
        return None
    if result.aborted or result.ttft_s is None:
        return None
    return result.ttft_s * 1000.0


def time_pairs(candidate: EngineClient, baseline: EngineClient, records: Sequence[SuiteRecord],
               config: ChildConfig | None = None, *, on_progress: ProgressFn | None = None,
               stop: Callable[[], bool] | None = None) -> list[PairedTiming]:
    """Time both running versions on ``records``, one request at a time in ABBA order, after
    ``config.latency_warmup`` unmeasured requests to each; ``stop()`` True ends it early (pairs so far)."""
    config = config or ChildConfig()
    progress = on_progress or (lambda phase, done, total: None)
    stopped = stop or (lambda: False)
    clients = {CANDIDATE: candidate, BASELINE: baseline}
    sampling = SamplingSettings(temperature=0.0, top_p=1.0, max_tokens=config.latency_max_tokens,
                                seed=config.seed, ignore_eos=True)
    for w in range(min(config.latency_warmup, len(records))):  # first requests pay for cold caches: not measured
        for role in (CANDIDATE, BASELINE):
            _first_token_ms(clients[role], records[w].prompt, sampling, f"lat-warmup-{w}")
    pairs: list[PairedTiming] = []
    for i, record in enumerate(records):
        if stopped():
            break
        first = abba_first(i)
        times: dict[str, float | None] = {}
        for role in (first, BASELINE if first == CANDIDATE else CANDIDATE):
            times[role] = _first_token_ms(clients[role], record.prompt, sampling, f"lat-{i}-{record.id}")
        pairs.append(PairedTiming(record.id, times[CANDIDATE], times[BASELINE], first))
        progress("comparing", i + 1, len(records))
    return pairs


def run_latency_comparison(
    candidate: ModelSpec,
    baseline: ModelSpec,
    records: Sequence[SuiteRecord],
    config: ChildConfig | None = None,
    *,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> list[PairedTiming]:
    """Time the first token of both versions on the same prompts, in the same run; blocks until it ends.

    Each version is served by its own engine (a child process, a managed server or a connected server), both
    started side by side and both idle but for the
    one request this thread sends at a time. Prompt ``i`` goes to both versions back to back, the candidate first
    for even ``i`` and the baseline first for odd ``i`` (ABBA), so drifts in the machine's load hit both alike.
    Greedy, answers cut at ``config.latency_max_tokens``. Raises :class:`EvaluationRunError` when a version
    cannot load, ``cancel`` is set or ``config.timeout_s`` passes.
    """
    config = config or ChildConfig()
    progress = on_progress or (lambda phase, done, total: None)
    watch = _Watch(time.monotonic() + config.timeout_s, cancel)
    progress("comparing", 0, len(records))
    clients: dict[str, EngineClient] = {}
    try:
        failures = []
        for role, spec in ((CANDIDATE, candidate), (BASELINE, baseline)):  # both load at once
            try:
                clients[role] = config.start(spec, None)
            except EngineError as exc:
                failures.append(str(exc))
        if failures:
            raise EvaluationRunError("The latency comparison could not start: " + "; ".join(failures))
        for client in clients.values():
            try:
                _wait_loaded([client], watch)
            except EngineError as exc:
                failures.append(str(exc))
        if failures:
            raise EvaluationRunError("The latency comparison could not start: " + "; ".join(failures))
        ended = threading.Event()

        def watchdog() -> None:  # a hung request must not outlive the timeout or a cancellation
            while not ended.wait(WATCH_INTERVAL_S):
                if watch.why() is not None:
                    for client in clients.values():
                        backends.end(client)
                    return

        guard = threading.Thread(target=watchdog, name="latency-watchdog", daemon=True)
        guard.start()
        try:
            pairs = [] if watch.stopped else time_pairs(
                clients[CANDIDATE], clients[BASELINE], records, config, on_progress=progress,
                stop=lambda: watch.stopped is not None)
        finally:
            ended.set()
            guard.join(timeout=5)
    finally:
        for client in clients.values():
            client.shutdown()
    if watch.stopped is not None:
        raise EvaluationRunError(f"The latency comparison of {candidate.name} with {baseline.name} "
                                 f"{watch.reason(config.timeout_s)}; it was stopped.")
    logger.info("latency comparison of %s with %s: %s pairs", candidate.name, baseline.name, len(pairs))
    return pairs
