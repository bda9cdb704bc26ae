"""Leases on periodic jobs, so that a job runs once per interval across console replicas (``job_runs``, 0020).

Several console processes may share one PostgreSQL database; each runs the same periodic jobs (checkpoints,
retention, the watch window, canary decisions). Before a round, a process :func:`claim`\\ s the job's row with one
conditional UPDATE: it wins only when no live lease is held and the last round started at least an interval ago.
Both conditions are re-checked by the database on the row it updates, so of two replicas racing for the same round
exactly one sees a row changed (PostgreSQL re-evaluates the WHERE clause on the row a concurrent winner committed;
SQLite serialises writers). The winner runs the round and :func:`finish`\\ es it (``last_finished_at``, lease freed).
A holder that dies mid-round leaves a lease that expires at ``lease_until``; then another replica takes over.

Times are the replicas' own clocks (UTC): replicas of one installation are expected to keep them in step (NTP);
a skew only shifts when the next round may start, it never lets two holders hold one live lease at the same time
unless it exceeds the lease itself.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.database import Database
from db.tables import JobRun

MAX_NAME_CHARS = 64
MAX_HOLDER_CHARS = 200


def holder_id() -> str:
    """Who holds a lease: ``hostname:pid:random`` (the random part tells two tasks of one process apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"[:MAX_HOLDER_CHARS]


def _check(name: str, holder: str) -> None:
    if not name or len(name) > MAX_NAME_CHARS:
        raise ValueError(f"a job name has 1 to {MAX_NAME_CHARS} characters: {name!r}")
    if not holder or len(holder) > MAX_HOLDER_CHARS:
        raise ValueError(f"a lease holder has 1 to {MAX_HOLDER_CHARS} characters")


def _ensure_row(session: Session, name: str) -> None:
    """Insert the job's row if it is missing; a replica inserting it at the same moment is not an error."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(postgresql.insert(JobRun).values(name=name, runs=0).on_conflict_do_nothing())
    elif dialect == "sqlite":
        session.execute(sqlite.insert(JobRun).values(name=name, runs=0).on_conflict_do_nothing())
    elif session.get(JobRun, name) is None:  # pragma: no cover - the console runs on SQLite or PostgreSQL only
        session.add(JobRun(name=name, runs=0))
        session.flush()


def claim(db: Database, name: str, *, holder: str, interval_s: float, lease_s: float, now: datetime) -> bool:
    """Claim this interval's round of job ``name`` for ``holder`` until ``now + lease_s``; True when it won.

    It wins when no lease is held (or the one held has expired) and the job never ran or last started at least
    ``interval_s`` before ``now``; the row then records the holder, the lease, the start and one more run.
    """
    _check(name, holder)
    if interval_s < 0 or lease_s <= 0:
        raise ValueError("the interval must be >= 0 and the lease > 0 seconds")
    claim_round = (
        update(JobRun)
        .where(JobRun.name == name,
               or_(JobRun.lease_until.is_(None), JobRun.lease_until <= now),
               or_(JobRun.last_started_at.is_(None), JobRun.last_started_at <= now - timedelta(seconds=interval_s)))
        .values(holder=holder, lease_until=now + timedelta(seconds=lease_s), last_started_at=now,
                runs=JobRun.runs + 1)
        .execution_options(synchronize_session=False)
    )
    with db.session() as s:
        if s.execute(claim_round).rowcount == 1:  # type: ignore[attr-defined]
            return True
        if s.get(JobRun, name) is not None:
            return False  # another replica holds the job or ran it within the interval
    with db.session() as s:  # the job's first round anywhere: insert its row, then claim it like any other
        _ensure_row(s, name)
    with db.session() as s:
        return bool(s.execute(claim_round).rowcount == 1)  # type: ignore[attr-defined]


def finish(db: Database, name: str, *, holder: str, now: datetime) -> bool:
    """End ``holder``'s round of job ``name``: record when it finished and free the lease. False (and nothing
    changed) when ``holder`` no longer held it: its lease had expired and another replica took the job over."""
    _check(name, holder)
    with db.session() as s:
        result = s.execute(
            update(JobRun)
            .where(JobRun.name == name, JobRun.holder == holder, JobRun.lease_until.is_not(None))
            .values(lease_until=None, last_finished_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def job_run(session: Session, name: str) -> JobRun | None:
    """The job's row (who ran it last, when, how many rounds), or None before its first claim."""
    return session.scalars(select(JobRun).where(JobRun.name == name)).one_or_none()
