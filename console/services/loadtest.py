"""Load tests from the console: N concurrent synthetic chats for T seconds against the live version, then a report.

An operator or admin starts one (:func:`start_load`) with a prompt set (``loadtest_prompts.PROMPT_SETS``), a
concurrency of at most ``LLM_CONSOLE_LOADTEST_MAX_CONCURRENCY`` (8) and a duration of at most
``LLM_CONSOLE_LOADTEST_MAX_SECONDS`` (120). One load test runs at a time in a console process, on background
threads: each of the N workers sends a single-turn chat through the chat service (``start_turn(...,
synthetic=True)``: scanned, stored and audited like any chat, and marked synthetic so every dashboard leaves it out
by default), reads the whole answer, and sends the next, until T seconds have passed. Answers under way at the end
finish; :func:`stop_load` cuts them (stored as aborted) and ends the run at once.

The chats are sent as the user who started the run (their conversations, their audit trail), marked synthetic.
Each chat is authorised as ``loadtest.run`` for that user as they are then, so an admin without the operator role
may run one, and a user disabled during a run ends it at their next chat.

The report (:func:`load_status`, live while it runs) counts requests, errors and statuses and gives p50/p95 time to
first token and end-to-end latency in ms as a chat user sees them (measured at the console: scans and storage
included, unlike the engine's own timings on the Latency page), and output tokens per second over the run. The start,
a stop and the end are audit events (``loadtest.start``, ``loadtest.stop``, ``loadtest.end``). Only the user who
started a run, or an admin, may stop it (a refused stop is audited as ``access.denied``); after a run ends the
next waits ``LLM_CONSOLE_LOADTEST_COOLDOWN_SECONDS`` (60), refused with the time it may start.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from console.services import access
from console.services import chat as chat_svc
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import AccessDenied, ConsoleError, InvalidInput, ModelUnavailable, NotFound
from console.services.loadtest_prompts import PROMPT_SETS
from db import audit as audit_q

logger = logging.getLogger(__name__)

TEMPERATURE = 0.7
TOP_P = 0.95
ERROR_BACKOFF_S = 0.5  # a worker whose chat failed waits this long (or until stopped) before the next one
MAX_ERROR_MESSAGES = 5


@dataclass(frozen=True)
class LoadRun:
    """A load test as it was started."""

    run_id: str
    prompt_set: str
    concurrency: int
    seconds: int
    model_version: str
    started_by: str
    started_at: datetime
    started_by_id: int | None = None


@dataclass(frozen=True)
class LoadReport:
    """Where a load test stands, or how it ended.

    ``state``: ``running``, ``stopping`` (stop asked, answers being cut), ``finished`` (ran its time),
    ``stopped`` or ``failed`` (the user who started it may no longer run it). Latencies in ms, measured at the
    console; None when no request got that far.
    """

    run: LoadRun
    state: str
    elapsed_s: float
    requests: int
    errors: int
    by_status: dict[str, int]
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    e2e_p50_ms: float | None
    e2e_p95_ms: float | None
    output_tokens: int
    output_tokens_per_s: float | None
    error_messages: tuple[str, ...] = ()
    stopped_by: str | None = None
    finished_at: datetime | None = None

    @property
    def running(self) -> bool:
        return self.state in ("running", "stopping")

    def summary(self) -> dict[str, Any]:
        """The report's figures as a flat dict (for the audit event and a page table)."""
        return {
            "run_id": self.run.run_id, "state": self.state, "prompt_set": self.run.prompt_set,
            "concurrency": self.run.concurrency, "seconds": self.run.seconds,
            "model_version": self.run.model_version, "elapsed_s": round(self.elapsed_s, 1),
            "requests": self.requests, "errors": self.errors, "by_status": dict(self.by_status),
            "ttft_p50_ms": self.ttft_p50_ms, "ttft_p95_ms": self.ttft_p95_ms, "e2e_p50_ms": self.e2e_p50_ms,
            "e2e_p95_ms": self.e2e_p95_ms, "output_tokens": self.output_tokens,
            "output_tokens_per_s": self.output_tokens_per_s, "stopped_by": self.stopped_by,
        }


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` (0..1) percentile of ``values`` by linear interpolation between closest ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 1)


@dataclass
class _Runner:
    ctx: AppContext
    actor: Principal
    run: LoadRun
    prompts: tuple[str, ...]
    max_tokens: int
    stop_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    finished_at: datetime | None = None
    state: str = "running"
    stopped_by: str | None = None
    statuses: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    thread: threading.Thread | None = None
    final: LoadReport | None = None

    # -- the controller thread --

    def start(self) -> None:
        self.thread = threading.Thread(target=self._control, name=f"loadtest-{self.run.run_id}", daemon=True)
        self.thread.start()

    def _control(self) -> None:
        workers = [threading.Thread(target=self._work, args=(i,), name=f"loadtest-{self.run.run_id}-{i}",
                                    daemon=True) for i in range(self.run.concurrency)]
        try:
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        finally:
            with self.lock:
                self.ended, self.finished_at = time.monotonic(), self.ctx.now()
                if self.state == "running":
                    self.state = "finished"
                elif self.state == "stopping":
                    self.state = "stopped"
            report = self.report()
            try:
                with self.ctx.db.session() as s:
                    audit_q.append_event(s, actor=self.actor.username, actor_id=self.actor.user_id,
                                         action="loadtest.end", object_type="loadtest", object_id=self.run.run_id,
                                         details=report.summary())
            except Exception:  # the report stays on the page even if the database could not take the event
                logger.exception("load test %s: storing its end event failed", self.run.run_id)
            self.final = report
            logger.info("load test %s %s: %d requests, %d errors", self.run.run_id, report.state, report.requests,
                        report.errors)

    # -- the worker threads --

    def _work(self, index: int) -> None:
        deadline = self.started + self.run.seconds
        start_turn = getattr(chat_svc.start_turn, "__wrapped__", chat_svc.start_turn)  # authorised below
        n = index
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            prompt = self.prompts[n % len(self.prompts)]
            n += self.run.concurrency
            try:
                actor = access.authorize(self.ctx, self.actor, "loadtest.run")
            except ConsoleError as exc:  # disabled, signed out everywhere, or lost the role: the run ends
                self._fail(str(exc))
                return
            try:
                ok = self._one(start_turn, actor, prompt)
            except Exception as exc:  # a bug: end the run and say so, rather than lose a worker silently
                logger.exception("load test %s: a worker failed", self.run.run_id)
                self._fail(f"The load test failed: {type(exc).__name__}: {exc}")
                return
            if not ok:
                self.stop_event.wait(ERROR_BACKOFF_S)

    def _one(self, start_turn: Any, actor: Principal, prompt: str) -> bool:
        """Send one chat and read its answer; True if it ended without an error."""
        began = time.perf_counter()
        first: float | None = None
        try:
            turn = start_turn(self.ctx, actor, None, prompt, temperature=TEMPERATURE, top_p=TOP_P,
                              max_tokens=self.max_tokens, synthetic=True)
            deltas = turn.deltas()
            try:
                for delta in deltas:
                    if first is None and delta:
                        first = time.perf_counter()
                    if self.stop_event.is_set():
                        break  # closing the stream below cancels the request; it is stored as aborted
            finally:
                deltas.close()
        except AccessDenied as exc:
            self._fail(str(exc))
            return False
        except ConsoleError as exc:
            self._record("error", began, first, None, str(exc))
            return False
        outcome = turn.outcome
        status = outcome.status if outcome is not None else "error"
        result = outcome.result if outcome is not None else None
        self._record(status, began, first, result.output_tokens if result is not None else None, None)
        return status != "error"

    def _record(self, status: str, began: float, first: float | None, output_tokens: int | None,
                error: str | None) -> None:
        now = time.perf_counter()
        with self.lock:
            self.statuses[status] += 1
            if first is not None:
                self.ttft_s.append(first - began)
            if status == "ok":
                self.e2e_s.append(now - began)
            if status == "error":
                self.errors += 1
                if error and error not in self.error_messages and len(self.error_messages) < MAX_ERROR_MESSAGES:
                    self.error_messages.append(error)
            self.output_tokens += output_tokens or 0

    def _fail(self, message: str) -> None:
        with self.lock:
            if self.state in ("running", "stopping"):
                self.state = "failed"
            if message not in self.error_messages:
                self.error_messages.append(message)
        self.stop_event.set()

    # -- any thread --

    def stop(self, by: str) -> None:
        with self.lock:
            if self.state == "running":
                self.state, self.stopped_by = "stopping", by
        self.stop_event.set()

    def report(self) -> LoadReport:
        with self.lock:
            end = self.ended if self.ended is not None else time.monotonic()
            elapsed = max(end - self.started, 0.0)
            return LoadReport(
                run=self.run,
                state=self.state,
                elapsed_s=elapsed,
                requests=sum(self.statuses.values()),
                errors=self.errors,
                by_status=dict(sorted(self.statuses.items())),
                ttft_p50_ms=_ms(percentile(self.ttft_s, 0.5)),
                ttft_p95_ms=_ms(percentile(self.ttft_s, 0.95)),
                e2e_p50_ms=_ms(percentile(self.e2e_s, 0.5)),
                e2e_p95_ms=_ms(percentile(self.e2e_s, 0.95)),
                output_tokens=self.output_tokens,
                output_tokens_per_s=round(self.output_tokens / elapsed, 1) if elapsed > 0 else None,
                error_messages=tuple(self.error_messages),
                stopped_by=self.stopped_by,
                finished_at=self.finished_at,
            )


# One load test at a time per console process: the one running, or the last one (its `final` report).
_lock = threading.Lock()
_current: _Runner | None = None


def prompt_sets() -> dict[str, str]:
    """Prompt set name -> label, for the page's picker."""
    return {name: spec.label for name, spec in PROMPT_SETS.items()}


def may_stop(actor: Principal, run: LoadRun) -> bool:
    """Whether ``actor`` may stop ``run``: the user who started it, or an admin."""
    return "admin" in actor.roles or (run.started_by_id is not None and run.started_by_id == actor.user_id)


def _cooldown_left(ctx: AppContext, runner: _Runner | None) -> datetime | None:
    """When the next load test may start, if the last one ended less than ``loadtest_cooldown_seconds`` ago."""
    if runner is None or runner.final is None or runner.finished_at is None or not ctx.settings.loadtest_cooldown_seconds:
        return None
    next_start = runner.finished_at + timedelta(seconds=ctx.settings.loadtest_cooldown_seconds)
    return next_start if ctx.now() < next_start else None


def _whole_number(value: object, what: str, limit: int, setting: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"The {what} must be a whole number, got {value!r}.")
    if not 1 <= value <= limit:
        raise InvalidInput(f"The {what} must be between 1 and {limit} (the limit is set by {setting}); "
                           f"got {value}.")
    return value


@requires("loadtest.run")
def start_load(ctx: AppContext, actor: Principal, prompt_set: str, concurrency: int, seconds: int) -> LoadRun:
    """Start a load test against the live version; raises InvalidInput for a bad set or bounds or when one is
    already running, ModelUnavailable when no model answers."""
    global _current
    spec = PROMPT_SETS.get(prompt_set) if isinstance(prompt_set, str) else None
    if spec is None:
        raise InvalidInput(f"Unknown prompt set {prompt_set!r}; choose one of {', '.join(PROMPT_SETS)}.")
    concurrency = _whole_number(concurrency, "concurrency", ctx.settings.loadtest_max_concurrency,
                                "LLM_CONSOLE_LOADTEST_MAX_CONCURRENCY")
    seconds = _whole_number(seconds, "duration in seconds", ctx.settings.loadtest_max_seconds,
                            "LLM_CONSOLE_LOADTEST_MAX_SECONDS")
    host = ctx.host
    if host is None:
        raise ModelUnavailable("No model is being served, so there is nothing to load-test.")
    serving = host.serving
    if serving is None:
        raise ModelUnavailable("The model is not answering yet (loading, switching or stopped); try again when "
                               "it is.")
    with _lock:
        current = _current
        if current is not None and current.final is None:
            raise InvalidInput(f"A load test is already running (started by {current.run.started_by}); stop it or "
                               "wait for its report.")
        next_start = _cooldown_left(ctx, current)
        if next_start is not None:
            assert current is not None and current.finished_at is not None
            raise InvalidInput(
                f"The last load test ended at {current.finished_at:%H:%M:%S} UTC; the next may start at "
                f"{next_start:%H:%M:%S} UTC (a pause of {ctx.settings.loadtest_cooldown_seconds} s between runs, "
                "LLM_CONSOLE_LOADTEST_COOLDOWN_SECONDS).")
        run = LoadRun(run_id=uuid.uuid4().hex[:12], prompt_set=prompt_set, concurrency=concurrency,
                      seconds=seconds, model_version=serving.name, started_by=actor.username,
                      started_at=ctx.now(), started_by_id=actor.user_id)
        # The host is held for the run: its workers do not go back to a page's factory from their threads.
        runner = _Runner(dataclasses.replace(ctx, host_factory=lambda: host), actor, run, spec.prompts,
                         spec.max_tokens)
        with ctx.db.session() as s:
            audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="loadtest.start",
                                 object_type="loadtest", object_id=run.run_id,
                                 details={"prompt_set": prompt_set, "concurrency": concurrency, "seconds": seconds,
                                          "model_version": serving.name})
        _current = runner
        runner.start()
    logger.info("load test %s started by %s: %s x%d for %ds on %s", run.run_id, actor.username, prompt_set,
                concurrency, seconds, serving.name)
    return run


@requires("loadtest.run")
def load_status(ctx: AppContext, actor: Principal) -> LoadReport | None:
    """The running load test's report so far, else the last one's final report, else None."""
    runner = _current
    if runner is None:
        return None
    return runner.final or runner.report()


@requires("loadtest.run")
def stop_load(ctx: AppContext, actor: Principal) -> LoadReport:
    """Stop the running load test: no new chats, answers under way are cut. Raises NotFound if none runs, and
    AccessDenied (audited as ``access.denied``) unless ``actor`` started it or is an admin."""
    with _lock:
        runner = _current
        if runner is None or runner.final is not None or runner.stop_event.is_set():
            raise NotFound("No load test is running.")
        if not may_stop(actor, runner.run):
            reason = f"only {runner.run.started_by}, who started it, or an admin may stop it"
            with ctx.db.session() as s:
                audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="access.denied",
                                     object_type="loadtest", object_id=runner.run.run_id,
                                     details={"action": "loadtest.stop", "reason": reason,
                                              "started_by": runner.run.started_by})
            logger.warning("load test %s: stop refused for %s (%s)", runner.run.run_id, actor.username, reason)
            raise AccessDenied(f"This load test was started by {runner.run.started_by}: {reason}.")
        with ctx.db.session() as s:
            audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="loadtest.stop",
                                 object_type="loadtest", object_id=runner.run.run_id,
                                 details={"started_by": runner.run.started_by})
        runner.stop(actor.username)
    return runner.report()


def wait_for_load(timeout: float | None = None) -> LoadReport | None:
    """Wait until the current load test ends (or ``timeout`` seconds pass); its report, or None if none ran.

    For tests and the command line; pages poll :func:`load_status`.
    """
    runner = _current
    if runner is None:
        return None
    if runner.thread is not None:
        runner.thread.join(timeout)
    return runner.final or runner.report()
