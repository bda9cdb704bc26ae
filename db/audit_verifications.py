"""The record of audit-chain verifications (``audit_verifications``, 0028): one row per run, scheduled or asked for.

A run is written in the caller's transaction (the Audit page's verify writes it with its ``audit.verify`` event) and
the table is kept bounded: each write drops the rows older than the newest :data:`KEEP_RUNS`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.tables import VERIFY_TRIGGERS, AuditVerification

# At one scheduled run an hour this is about six weeks of history; manual runs count too.
KEEP_RUNS = 1000
MAX_REASON_CHARS = 1000


def record_run(session: Session, *, trigger: str, started_at: datetime, duration_ms: float, ok: bool,
               checked: int, kind: str | None = None, first_bad_seq: int | None = None, reason: str | None = None,
               keep: int = KEEP_RUNS) -> AuditVerification:
    """Record one verification run (it finished ``duration_ms`` after ``started_at``) and drop the runs older than
    the newest ``keep``; returns the new row."""
    if trigger not in VERIFY_TRIGGERS:
        raise ValueError(f"unknown verification trigger {trigger!r}; one of {', '.join(VERIFY_TRIGGERS)}")
    if keep < 1:
        raise ValueError("at least the newest run is kept")
    duration_ms = max(float(duration_ms), 0.0)
    run = AuditVerification(trigger=trigger, started_at=started_at,
                            finished_at=started_at + timedelta(milliseconds=duration_ms), duration_ms=duration_ms, ok=ok,
                            checked=checked, kind=kind, first_bad_seq=first_bad_seq,
                            reason=reason[:MAX_REASON_CHARS] if reason else None)
    session.add(run)
    session.flush()
    # The oldest id still kept; every row below it goes (ids grow with each run).
    oldest_kept = session.scalar(select(AuditVerification.id).order_by(AuditVerification.id.desc())
                                 .offset(keep - 1).limit(1))
    if oldest_kept is not None:
        session.execute(delete(AuditVerification).where(AuditVerification.id < oldest_kept)
                        .execution_options(synchronize_session=False))
    return run


def recent_runs(session: Session, *, limit: int = 20, trigger: str | None = None) -> list[AuditVerification]:
    """The newest ``limit`` runs, newest first (of one ``trigger`` only, when given)."""
    stmt = select(AuditVerification)
    if trigger is not None:
        stmt = stmt.where(AuditVerification.trigger == trigger)
    return list(session.scalars(stmt.order_by(AuditVerification.id.desc()).limit(limit)))


def last_run(session: Session, *, trigger: str | None = None) -> AuditVerification | None:
    """The newest run (of ``trigger``, when given), or None before the first."""
    runs = recent_runs(session, limit=1, trigger=trigger)
    return runs[0] if runs else None
