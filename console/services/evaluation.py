"""Evaluating model versions: prompt suites (built-in or uploaded), runs, reports, and two reports side by side.

An evaluation never runs beside the live engine in this process: two vLLM engines in one process break each other
(vLLM's model-parallel state is process-global). Each run starts the version's engine on its backend
(:func:`engine.backends.start_client`, driven by :mod:`engine.evals.runner`): an in-process version in a short-lived
child engine process (:class:`engine.child_client.ChildEngineClient`) with its own small KV cache, a managed-server
version on a vLLM server of its own, a server version on its servers (connected, nothing started); it answers the
suite and is ended; other users' chats go on meanwhile. The report's ``run`` says which backend ran it. Any registered, unretired version whose
files are unchanged can be evaluated, served or not. Runs go one at a time per console process, on a background
thread; the rest wait in a queue (status ``queued``). The thread writes progress to the database as answers come,
then scans every answer with this console's safety stack (policy in force, output direction), computes the
report (:mod:`engine.evals.report`) and stores it.

When another version holds production (or a ``baseline`` is named), the run also times both versions' first
tokens on the same prompts, alternately, in two child processes side by side
(:func:`engine.evals.runner.run_latency_comparison`), and stores the paired summary as
``report["latency_comparison"]`` (keys: :func:`engine.evals.latency.compare_paired`); the promotion's latency gate
reads it. A baseline that cannot load leaves the summary with its ``error`` and ``n`` 0; the evaluation still ends.

Pages call :func:`list_suites`, :func:`upload_suite`, :func:`start_evaluation`, :func:`list_evaluations`,
:func:`get_evaluation`, :func:`get_report`, :func:`compare_evaluations`; the CLI :func:`run_evaluation_blocking`.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from console.services import feedback as feedback_svc
from console.services import moderation
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import ConsoleError, InvalidInput, NotFound
from console.services.registry import loadable_spec
from console.services.text import is_clean
from console.settings import SettingsError
from db import evaluations as evaluations_q
from db import model_versions as versions_q
from db import users as users_q
from db.model_versions import PRODUCTION
from engine.errors import EngineError
from engine.evals.latency import compare_paired, failed_comparison
from engine.evals.report import AnswerScan, ComparisonRow, compare_reports, compute_report, scan_of
from engine.evals.runner import ChildConfig, latency_prompts, run_latency_comparison, run_suite_in_child
from engine.evals.suite import (
    BUILTIN_DESCRIPTIONS,
    DEFAULT_SUITE,
    Suite,
    SuiteError,
    builtin_names,
    format_of,
    load_builtin,
    parse_suite,
)
from engine.types import ServerOptions

if TYPE_CHECKING:
    from db.tables import Evaluation
    from engine.types import ModelSpec

logger = logging.getLogger(__name__)

# Progress shares: loading the engine, answering, scanning (answering gets the bulk; scanning is fast). With a
# latency comparison, answering ends at _COMPARING_FROM and the comparison takes the rest up to _SCANNING_FROM.
_ANSWERING_FROM, _SCANNING_FROM, _SCANNING_TO = 0.05, 0.9, 0.99
_COMPARING_FROM = 0.7
PROGRESS_WRITE_INTERVAL_S = 0.5


class InvalidSuite(InvalidInput):
    """An uploaded suite has malformed rows; ``errors`` lists them, each with its line number. Nothing was stored."""

    def __init__(self, errors: tuple[str, ...]) -> None:
        self.errors = errors
        shown = "\n".join(errors)
        super().__init__(f"The suite cannot be used ({len(errors)} problem(s)); nothing was stored.\n{shown}")


@dataclass(frozen=True)
class SuiteInfo:
    """A suite as the page lists it: name, what it is for, prompt counts per kind."""

    name: str
    description: str
    n: int
    counts: dict[str, int]
    builtin: bool = True


@dataclass(frozen=True)
class EvaluationView:
    """One evaluation as pages show it; ``summary`` holds the headline figures once it is done."""

    id: int
    version: str
    suite: str
    suite_sha256: str
    n_prompts: int
    status: str  # queued, running, done, failed
    progress: float
    error: str | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    summary: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")


def _summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if not report:
        return None
    latency = report.get("latency") or {}
    bias = report.get("bias_gap") or {}
    return {"topic_accuracy": report.get("topic_accuracy"), "decline_rate": report.get("decline_rate"),
            "flag_rate_any": report.get("flag_rate_any"), "bias_answer_gap": bias.get("answer_gap"),
            "ttft_p95_ms": latency.get("ttft_p95_ms"), "e2e_p95_ms": latency.get("e2e_p95_ms"),
            "tokens_per_s": report.get("tokens_per_s"), "errors": report.get("errors")}


def _view(s: Any, e: Evaluation) -> EvaluationView:
    version = versions_q.get_model_version(s, e.version_id)
    creator = users_q.get_user(s, e.created_by_id) if e.created_by_id is not None else None
    return EvaluationView(
        e.id, version.name if version is not None else f"#{e.version_id}", e.suite, e.suite_sha256, e.n_prompts,
        e.status, e.progress, e.error, creator.username if creator is not None else None, e.created_at,
        e.started_at, e.finished_at, _summary(e.report),
    )


# --- suites -----------------------------------------------------------------------------------------------------


def _builtin(name: str) -> Suite:
    try:
        return load_builtin(name)
    except KeyError:
        raise InvalidInput(f"No built-in suite named {name!r}; choose one of {', '.join(builtin_names())}.") from None


@requires("models.evaluate")
def list_suites(ctx: AppContext, actor: Principal) -> list[SuiteInfo]:
    """The built-in suites (``standard`` first: all built-in prompts, the one promotions should carry)."""
    infos = []
    for name in builtin_names():
        suite = load_builtin(name)
        infos.append(SuiteInfo(name, BUILTIN_DESCRIPTIONS.get(name, ""), len(suite), suite.counts()))
    return infos


@requires("models.evaluate")
def upload_suite(ctx: AppContext, actor: Principal, filename: str, data: bytes | str, name: str | None = None) -> Suite:
    """Parse and validate an uploaded suite file (``.jsonl`` or ``.csv``, by its name); nothing is stored.

    The suite is named ``name`` or after the file. Raises :class:`InvalidSuite` (an ``InvalidInput``) listing
    every malformed row with its line number.
    """
    if isinstance(data, str) and not is_clean(data):
        raise InvalidSuite(("The file holds a character that cannot be stored (a NUL or a broken surrogate); "
                            "save it as UTF-8 text and upload it again.",))
    try:
        fmt = format_of(filename)
        stem = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return parse_suite((name or "").strip() or stem, data, fmt)
    except SuiteError as exc:
        raise InvalidSuite(exc.errors) from None


def _resolve_suite(suite: str | Suite | None) -> Suite:
    if suite is None:
        return _builtin(DEFAULT_SUITE)
    if isinstance(suite, Suite):
        if not suite.records:
            raise InvalidInput("The suite has no prompts.")
        return suite
    return _builtin(str(suite).strip())


# --- running ----------------------------------------------------------------------------------------------------


def _runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Job:
    ctx: AppContext
    evaluation_id: int
    spec: ModelSpec
    suite: Suite
    child: ChildConfig
    cancel: threading.Event
    cancelled_by: str | None = None
    baseline: ModelSpec | None = None  # the version the candidate's latency is compared with, in the same run
    baseline_name: str | None = None
    baseline_error: str | None = None  # why the baseline cannot be compared (its files changed...)


class _Runner:
    """The process's evaluation queue: one background thread runs the jobs one at a time."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cancels: dict[int, _Job] = {}

    def submit(self, job: _Job) -> None:
        with self._lock:
            self._cancels[job.evaluation_id] = job
            self._jobs.put(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="evaluations", daemon=True)
                self._thread.start()

    def cancel(self, evaluation_id: int, by: str) -> bool:
        with self._lock:
            job = self._cancels.get(evaluation_id)
        if job is None:
            return False
        job.cancelled_by = by
        job.cancel.set()
        return True

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job.cancel.is_set():
                    _fail(job.ctx, job.evaluation_id, f"Cancelled by {job.cancelled_by} before it started.",
                          only_if_unfinished=True)
                else:
                    _execute(job)
            except (EngineError, ConsoleError):
                pass  # recorded on the evaluation's row and logged by _execute
            except Exception:  # a bug in one job must not stop the queue; _execute marked the row failed
                logger.exception("evaluation %s: unexpected error", job.evaluation_id)
            finally:
                with self._lock:
                    self._cancels.pop(job.evaluation_id, None)


_RUNNER = _Runner()


def _fail(ctx: AppContext, evaluation_id: int, error: str, *, only_if_unfinished: bool = False) -> None:
    with ctx.db.session() as s:
        e = evaluations_q.get_evaluation(s, evaluation_id)
        if e is None or (only_if_unfinished and e.status not in evaluations_q.UNFINISHED):
            return
        evaluations_q.fail_evaluation(s, evaluation_id, error)


def _fail_orphans(ctx: AppContext) -> int:
    """Fail unfinished evaluations that a console process on this host queued and then died with."""
    host = socket.gethostname()
    failed = 0
    with ctx.db.session() as s:
        for e in evaluations_q.list_unfinished(s):
            owner_host, _, pid = (e.runner or "").rpartition(":")
            if owner_host != host or not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
                continue
            evaluations_q.fail_evaluation(s, e.id, "The console process running it stopped before it finished.")
            failed += 1
    return failed


def _scan_answers(ctx: AppContext, answers: Any, progress: Any) -> tuple[dict[str, AnswerScan] | None, list[str]]:
    """Scan every answer with the console's output policy; None (and a note) when no scanners are loaded."""
    try:
        stack = ctx.safety
    except ConsoleError as exc:  # the scanners failed to load: report without flags rather than not at all
        return None, [f"The safety scanners are not available ({exc}); flag rates were not measured."]
    if stack is None:
        return None, []
    scans: dict[str, AnswerScan] = {}
    texts = [a for a in answers if a.error is None]
    for i, answer in enumerate(texts, 1):
        gate = moderation.check_output(ctx, answer.text)
        acted_on = [hit.finding for hit in gate.decision.triggered] if gate.decision is not None else []
        stored = gate.text_for_storage if gate.text_for_storage != answer.text else None
        scans[answer.id] = scan_of(gate.findings, acted_on, gate.action, stored)
        progress(i, len(texts))
    notes = [f"Safety notice: {stack.notice}"] if getattr(stack, "notice", None) else []
    return scans, notes


def _execute(job: _Job) -> dict[str, Any]:
    """Run one queued evaluation to its end: child process, scans, report; the row ends done or failed."""
    ctx, eid = job.ctx, job.evaluation_id
    try:
        with ctx.db.session() as s:
            evaluations_q.mark_running(s, eid, runner=_runner_id())
    except evaluations_q.EvaluationStateError as exc:  # failed meanwhile (cancelled, or taken for an orphan)
        raise ConsoleError(f"Evaluation #{eid} was not started: {exc}.") from exc
    last_write = [0.0]

    def record(value: float, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - last_write[0] >= PROGRESS_WRITE_INTERVAL_S:
            last_write[0] = now
            with ctx.db.session() as s:
                evaluations_q.set_progress(s, eid, value)

    compares = job.baseline_name is not None
    answered_at = _COMPARING_FROM if compares else _SCANNING_FROM

    def on_child(phase: str, done: int, total: int) -> None:
        share = done / total if total else 1.0
        if phase == "loading":
            record(0.01, force=True)
        elif phase == "comparing":
            record(_COMPARING_FROM + (_SCANNING_FROM - _COMPARING_FROM) * share, force=done in (0, total))
        else:
            record(_ANSWERING_FROM + (answered_at - _ANSWERING_FROM) * share, force=done in (0, total))

    try:
        run = run_suite_in_child(job.spec, job.suite, job.child, on_progress=on_child, cancel=job.cancel)
        comparison = _compare_latency(job, on_child) if compares else None
        scans, notes = _scan_answers(
            ctx, run.answers,
            lambda done, total: record(_SCANNING_FROM + (_SCANNING_TO - _SCANNING_FROM) * done / max(total, 1)),
        )
        info = run.run_info(job.child)
        report = compute_report(job.suite, run.answers, scans, version=job.spec.name, run=info, notes=notes)
        data = report.as_dict()
        if comparison is not None:
            data["latency_comparison"] = comparison
        with ctx.db.session() as s:
            evaluations_q.finish_evaluation(s, eid, data)
    except (EngineError, ConsoleError) as exc:
        message = f"Cancelled by {job.cancelled_by}." if job.cancel.is_set() and job.cancelled_by else str(exc)
        logger.warning("evaluation %s of %s failed: %s", eid, job.spec.name, message)
        _fail(ctx, eid, message, only_if_unfinished=True)
        raise
    except Exception:
        _fail(ctx, eid, "Internal error while evaluating; see the console log.", only_if_unfinished=True)
        raise
    logger.info("evaluation %s of %s on %s done", eid, job.spec.name, job.suite.name)
    return data


def _compare_latency(job: _Job, progress: Any) -> dict[str, Any]:
    """The paired latency comparison of the job's version with its baseline (see the module docstring)."""
    assert job.baseline_name is not None
    candidate, baseline = job.spec.name, job.baseline_name
    if job.baseline is None:
        return failed_comparison(candidate_version=candidate, baseline_version=baseline,
                                 error=job.baseline_error or "the baseline cannot be loaded")
    try:
        pairs = run_latency_comparison(job.spec, job.baseline, latency_prompts(job.suite.records,
                                                                                job.child.latency_prompts),
                                       job.child, on_progress=progress, cancel=job.cancel)
    except EngineError as exc:
        if job.cancel.is_set():
            raise
        logger.warning("evaluation %s: latency comparison failed: %s", job.evaluation_id, exc)
        return failed_comparison(candidate_version=candidate, baseline_version=baseline, error=str(exc))
    return compare_paired(pairs, candidate_version=candidate, baseline_version=baseline, seed=job.child.seed,
                          max_tokens=job.child.latency_max_tokens)


def _baseline(ctx: AppContext, candidate: str, baseline: str | None, compare_latency: bool
              ) -> tuple[ModelSpec | None, str | None, str | None]:
    """(spec, name, why it cannot load) of the version to compare latency with: ``baseline`` if named (it must
    load), else the production holder when it is another version (if it cannot load, the report says why)."""
    if not compare_latency:
        return None, None, None
    if baseline is not None:
        spec = loadable_spec(ctx, baseline)
        if spec.name == candidate:
            raise InvalidInput("Compare the latency with another version than the one evaluated.")
        return spec, spec.name, None
    with ctx.db.session(readonly=True) as s:
        holder = versions_q.version_for_alias(s, PRODUCTION)
        name = None if holder is None else holder.name
    if name is None or name == candidate:
        return None, None, None
    try:
        return loadable_spec(ctx, name), name, None
    except ConsoleError as exc:
        return None, name, str(exc)


def _server_options(ctx: AppContext, *specs: ModelSpec | None) -> ServerOptions:
    """The installation's server options for the run; an unreadable API key file fails the run only when a version
    on an external server needs it."""
    try:
        return ctx.settings.server_options()
    except SettingsError as exc:
        if any(spec is not None and spec.backend == "server" for spec in specs):
            raise InvalidInput(str(exc)) from None
        return ServerOptions(log_dir=str(ctx.settings.servers_dir), start_timeout_s=ctx.settings.server_start_seconds)


def _queue(ctx: AppContext, actor: str, actor_id: int | None, version_name: str, suite: str | Suite | None,
           child: ChildConfig | None, baseline: str | None = None, compare_latency: bool = True
           ) -> tuple[_Job, EvaluationView]:
    chosen = _resolve_suite(suite)
    spec = loadable_spec(ctx, version_name)  # registered, not retired, files unchanged: else a clear error
    base_spec, base_name, base_error = _baseline(ctx, spec.name, baseline, compare_latency)
    _fail_orphans(ctx)
    with ctx.db.session() as s:
        version = versions_q.get_model_version_by_name(s, spec.name)
        if version is None:  # retired or removed between the two reads
            raise NotFound(f"No model version named {version_name!r} is registered.")
        row = evaluations_q.create_evaluation(
            s, version_id=version.id, suite=chosen.name, suite_sha256=chosen.sha256, n_prompts=len(chosen),
            actor=actor, actor_id=actor_id, runner=_runner_id(),
        )
        view = _view(s, row)
    config = child or ChildConfig(latency_prompts=ctx.settings.evaluation_latency_prompts)
    # The installation decides whether model code may run, and how vLLM servers are reached, never the caller.
    config = replace(config, trust_remote_code=ctx.settings.trust_remote_code,
                     server_options=_server_options(ctx, spec, base_spec))
    return _Job(ctx, view.id, spec, chosen, config, threading.Event(), baseline=base_spec, baseline_name=base_name,
                baseline_error=base_error), view


@requires("models.evaluate")
def start_evaluation(ctx: AppContext, actor: Principal, version_name: str, suite: str | Suite | None = None, *,
                     child: ChildConfig | None = None, baseline: str | None = None,
                     compare_latency: bool = True) -> EvaluationView:
    """Queue an evaluation of ``version_name`` on ``suite`` (a built-in name, an uploaded :class:`Suite`, or None
    for ``standard``) and return at once; poll :func:`get_evaluation` for progress. ``child`` tunes the child
    process (KV cache, concurrency, answer length); pages leave it alone. The latency is compared in the same
    run with ``baseline`` (default: the production holder, when it is another version) unless
    ``compare_latency`` is False."""
    job, view = _queue(ctx, actor.username, actor.user_id, version_name, suite, child, baseline, compare_latency)
    _RUNNER.submit(job)
    return view


@requires("models.evaluate")
def cancel_evaluation(ctx: AppContext, actor: Principal, evaluation_id: int) -> bool:
    """Stop a queued or running evaluation of this process; True if it was asked to stop."""
    with ctx.db.session(readonly=True) as s:
        e = evaluations_q.get_evaluation(s, evaluation_id)
        if e is None:
            raise NotFound(f"No evaluation #{evaluation_id}.")
        if e.status not in evaluations_q.UNFINISHED:
            raise InvalidInput(f"Evaluation #{evaluation_id} has already {'finished' if e.status == 'done' else 'failed'}.")
    return _RUNNER.cancel(evaluation_id, actor.username)


@requires("models.evaluate")
def run_evaluation_blocking(ctx: AppContext, actor: Principal, version_name: str, suite: str | Suite | None = None,
                            *, child: ChildConfig | None = None, baseline: str | None = None,
                            compare_latency: bool = True) -> dict[str, Any]:
    """:func:`start_evaluation` run in the calling thread (``llm-console model eval``); returns the stored report
    dict. Stored and audited the same way; raises a ConsoleError (the row is marked failed) when the run fails.
    """
    job, _view_ = _queue(ctx, actor.username, actor.user_id, version_name, suite, child, baseline, compare_latency)
    try:
        return _execute(job)
    except EngineError as exc:
        raise ConsoleError(str(exc)) from exc


def wait_for_evaluation(ctx: AppContext, evaluation_id: int, timeout_s: float = 1800.0,
                        poll_s: float = 0.5) -> EvaluationView:
    """Block until an evaluation is done or failed (CLI and tests); its final view. TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        with ctx.db.session(readonly=True) as s:
            e = evaluations_q.get_evaluation(s, evaluation_id)
            if e is None:
                raise NotFound(f"No evaluation #{evaluation_id}.")
            view = _view(s, e)
        if view.finished:
            return view
        if time.monotonic() > deadline:
            raise TimeoutError(f"evaluation #{evaluation_id} still {view.status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


# --- reading ----------------------------------------------------------------------------------------------------


@requires("models.evaluate")
def list_evaluations(ctx: AppContext, actor: Principal, version_name: str, limit: int = 50) -> list[EvaluationView]:
    """A version's evaluations, newest first, with status, progress and headline figures."""
    with ctx.db.session(readonly=True) as s:
        version = versions_q.get_model_version_by_name(s, (version_name or "").strip())
        if version is None:
            raise NotFound(f"No model version named {version_name!r} is registered.")
        return [_view(s, e) for e in evaluations_q.list_evaluations(s, version.id, limit=limit)]


@requires("models.evaluate")
def get_evaluation(ctx: AppContext, actor: Principal, evaluation_id: int) -> EvaluationView:
    """One evaluation's status and progress (poll it while it runs)."""
    with ctx.db.session(readonly=True) as s:
        e = evaluations_q.get_evaluation(s, evaluation_id)
        if e is None:
            raise NotFound(f"No evaluation #{evaluation_id}.")
        return _view(s, e)


def _report(ctx: AppContext, evaluation_id: int) -> dict[str, Any]:
    with ctx.db.session(readonly=True) as s:
        e = evaluations_q.get_evaluation(s, evaluation_id)
        if e is None:
            raise NotFound(f"No evaluation #{evaluation_id}.")
        if e.status != "done" or e.report is None:
            raise InvalidInput(f"Evaluation #{evaluation_id} has no report: it is {e.status}.")
        return dict(e.report)


@requires("models.evaluate")
def get_report(ctx: AppContext, actor: Principal, evaluation_id: int) -> dict[str, Any]:
    """The full stored report of a finished evaluation (see ``engine.evals.report.EvalReport.as_dict``)."""
    return _report(ctx, evaluation_id)


@requires("models.evaluate")
def latest_report(ctx: AppContext, actor: Principal, version_name: str, suite: str | None = None) -> dict[str, Any] | None:
    """The newest finished report of a version (optionally of one suite), or None."""
    with ctx.db.session(readonly=True) as s:
        version = versions_q.get_model_version_by_name(s, (version_name or "").strip())
        if version is None:
            raise NotFound(f"No model version named {version_name!r} is registered.")
        e = evaluations_q.latest_done(s, version.id, suite=suite)
        return dict(e.report) if e is not None and e.report is not None else None


# How far back the evaluation page looks for users' ratings of a version's answers (live traffic, beside the suite).
FEEDBACK_DAYS = 30


@requires("models.evaluate")
def version_feedback(ctx: AppContext, actor: Principal, version_name: str,
                     days: int = FEEDBACK_DAYS) -> feedback_svc.VersionFeedback:
    """Users' thumbs up and down on the version's answers of the last ``days`` days (live chats, not the suite's
    prompts): the evaluation report's figure from real use."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        raise InvalidInput(f"The feedback window must be a whole number of days from 1 to 3,650, got {days!r}.")
    name = (version_name or "").strip()
    now = ctx.now()
    with ctx.db.session(readonly=True) as s:
        if versions_q.get_model_version_by_name(s, name) is None:
            raise NotFound(f"No model version named {version_name!r} is registered.")
        rows = feedback_svc.rates(s, since=now - timedelta(days=days), until=None, version=name)
    return rows[0] if rows else feedback_svc.VersionFeedback(model_version=name)


@requires("models.evaluate")
def compare_evaluations(ctx: AppContext, actor: Principal, evaluation_a: int, evaluation_b: int) -> list[ComparisonRow]:
    """Two finished reports side by side: rows of (metric, a, b, difference b - a)."""
    return compare_reports(_report(ctx, evaluation_a), _report(ctx, evaluation_b))
