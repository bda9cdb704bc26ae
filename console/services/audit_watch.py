"""The audit chain verifies itself: every ``audit_verify_minutes`` one console replica (the ``audit-verify`` lease)
verifies the whole chain against the signed checkpoints, exactly as the Audit page's verify does
(``db.audit.verify_chain`` with the console's anchor), and records the run in ``audit_verifications``.

Which runs are audit events: a failed run is an ``audit.verify`` event (actor ``system``, ``trigger: schedule``),
like a failed manual verify, so the alert evaluator raises ``audit_verify_failed`` from it (one alert until it
clears; nothing raises it twice). A passing run is a table row only: one event an hour forever would bloat the chain
it checks. The one exception is the first passing run after a failed one (of any trigger): it is an event too, so
the recovery is on record and the alert clears. Manual verifies (page and command line) are recorded in the same
table by ``console.services.audit.verify``.

A full pass is fast enough to run every round (about 0.6 s per 100,000 events on SQLite: docs/audit.md), so there is
no incremental mode.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import OperationalError

from console.services import audit as audit_svc
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import StorageUnavailable
from console.services.periodic import PeriodicTask
from db import audit as audit_q
from db import audit_verifications as verifications_q

logger = logging.getLogger(__name__)

JOB = "audit-verify"
SYSTEM_ACTOR = "system"
# How often each replica asks for the lease: the first round comes about a minute after start, then one per interval
# across replicas and restarts (the lease row remembers when it last ran).
TICK_S = 60.0
RECENT_RUNS = 20


@dataclass(frozen=True)
class VerificationRun:
    """One recorded run, as the Audit page shows it (times in UTC)."""

    id: int
    trigger: str
    started_at: datetime
    finished_at: datetime
    duration_ms: float
    ok: bool
    checked: int
    kind: str | None
    first_bad_seq: int | None
    reason: str | None


@dataclass(frozen=True)
class VerificationStatus:
    """The schedule (``every_minutes``; 0: off), the newest scheduled run, and the newest runs of every trigger."""

    every_minutes: int
    last_automatic: VerificationRun | None
    recent: tuple[VerificationRun, ...]


def _view(row: Any) -> VerificationRun:
    return VerificationRun(row.id, row.trigger, row.started_at, row.finished_at, row.duration_ms, bool(row.ok),
                           row.checked, row.kind, row.first_bad_seq, row.reason)


def run_scheduled(ctx: AppContext) -> VerificationRun:
    """One scheduled round: verify the chain, record the run; a failure (or the recovery after one) is audited."""
    started = ctx.now()
    t0 = time.perf_counter()
    try:
        report = audit_q.verify_chain(ctx.db, audit_svc.anchor(ctx))
    except OperationalError:
        raise StorageUnavailable("The database is busy or unavailable; the audit chain was not verified.") from None
    duration_ms = (time.perf_counter() - t0) * 1000.0
    with ctx.db.session() as s:
        previous = verifications_q.last_run(s)
        run = verifications_q.record_run(s, trigger="schedule", started_at=started, duration_ms=duration_ms,
                                         ok=report.ok, checked=report.checked, kind=report.kind,
                                         first_bad_seq=report.first_bad_seq, reason=report.reason)
        if not report.ok or (previous is not None and not previous.ok):
            audit_q.append_event(s, actor=SYSTEM_ACTOR, actor_id=None, action="audit.verify",
                                 details={"ok": report.ok, "checked": report.checked, "kind": report.kind,
                                          "first_bad_seq": report.first_bad_seq,
                                          "checkpoints_checked": report.checkpoints_checked,
                                          "anchored_seq": report.anchored_seq, "checkpoint_files": 0,
                                          "trigger": "schedule", "run_id": run.id,
                                          "duration_ms": round(duration_ms, 1)})
        view = _view(run)
    if report.ok:
        logger.info("audit chain verified on schedule: %d events intact in %.0f ms", report.checked, duration_ms)
    return view


class AuditVerifier(PeriodicTask):
    """Verifies the audit chain every ``audit_verify_minutes``, in one replica per interval (the ``audit-verify``
    lease); each replica asks every ``tick_s`` (default a minute) whether a round is due."""

    def __init__(self, ctx: AppContext, *, minutes: float | None = None, tick_s: float = TICK_S) -> None:
        minutes = ctx.settings.audit_verify_minutes if minutes is None else minutes
        if minutes <= 0:
            raise ValueError("automatic audit verification is off (LLM_CONSOLE_AUDIT_VERIFY_MINUTES=0)")
        interval_s = minutes * 60.0
        super().__init__(interval_s, name="audit-verifier", job=JOB, db=ctx.db, tick_s=min(tick_s, interval_s))
        self.ctx = ctx

    def run_once(self) -> VerificationRun:
        return run_scheduled(self.ctx)


def start(ctx: AppContext) -> AuditVerifier | None:
    """Start the scheduled verification (None when ``audit_verify_minutes`` is 0: off)."""
    if not ctx.settings.audit_verify_minutes:
        logger.info("automatic audit verification is off (LLM_CONSOLE_AUDIT_VERIFY_MINUTES=0)")
        return None
    return AuditVerifier(ctx).start()


@requires("audit.verify")
def verification_status(ctx: AppContext, actor: Principal, *, limit: int = RECENT_RUNS) -> VerificationStatus:
    """The schedule, the newest scheduled run and the newest ``limit`` runs (for whoever may verify the chain)."""
    with ctx.db.session(readonly=True) as s:
        last = verifications_q.last_run(s, trigger="schedule")
        recent = tuple(_view(r) for r in verifications_q.recent_runs(s, limit=max(1, min(limit, 100))))
        return VerificationStatus(ctx.settings.audit_verify_minutes, _view(last) if last is not None else None,
                                  recent)
