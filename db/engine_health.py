"""Engine health history: samples of the serving engine's load, written by the sampler and read in time buckets.

Range reads aggregate in the database (one row per bucket, on the ``epoch_s`` index), never row by row: 30 days
of samples every 10 s are ~260,000 rows.

A sample is the whole engine's (``server`` NULL: what the console's engine client reports) or, for the server
backends, one vLLM server's (``server`` = its base URL, with ``queue_ms`` from its ``/metrics``). The engine's
reads (:func:`latest_sample`, :func:`bucketed`, :func:`versions_seen`) take only the engine's rows; the per-server
ones (:func:`latest_per_server`, :func:`bucketed_by_server`) only the servers'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, case, delete, func, literal_column, or_, select
from sqlalchemy.orm import Session

from db.tables import EngineHealthSample


@dataclass(frozen=True)
class HealthRecord:
    """One sample as the sampler takes it; ``errors`` are ``{"at": unix seconds, "message": str}``.

    ``server``: None for the whole engine's sample, a base URL for one vLLM server's (``queue_ms``: that server's
    mean queue time over the sample, None when no request finished in it)."""

    ts: datetime
    model_version: str | None
    state: str
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    preemptions: int = 0
    preemptions_total: int = 0
    prompt_tokens_per_s: float = 0.0
    generation_tokens_per_s: float = 0.0
    error: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    server: str | None = None
    queue_ms: float | None = None


@dataclass(frozen=True)
class HealthBucket:
    """The samples of one time bucket starting at ``start``: averages and peaks, preemptions and errors summed."""

    start: datetime
    samples: int
    running_avg: float
    running_max: int
    waiting_avg: float
    waiting_max: int
    kv_cache_avg: float
    kv_cache_max: float
    preemptions: int
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    errors: int
    not_ready: int  # samples taken while the engine was loading, failed, dead or stopped
    queue_ms: float | None = None  # per-server buckets: the mean of the samples' mean queue times (None: none)


def epoch_seconds(ts: datetime) -> int:
    return int(ts.timestamp())


def add_sample(session: Session, record: HealthRecord) -> EngineHealthSample:
    row = EngineHealthSample(
        ts=record.ts,
        epoch_s=epoch_seconds(record.ts),
        model_version=record.model_version,
        state=record.state,
        running=record.running,
        waiting=record.waiting,
        kv_cache_usage=record.kv_cache_usage,
        preemptions=record.preemptions,
        preemptions_total=record.preemptions_total,
        prompt_tokens_per_s=record.prompt_tokens_per_s,
        generation_tokens_per_s=record.generation_tokens_per_s,
        error=record.error,
        error_count=len(record.errors),
        errors=list(record.errors),
        server=record.server,
        queue_ms=record.queue_ms,
    )
    session.add(row)
    session.flush()
    return row


def delete_before(session: Session, before: datetime) -> int:
    """Delete the samples taken before ``before``; returns how many."""
    result = session.execute(delete(EngineHealthSample).where(EngineHealthSample.epoch_s < epoch_seconds(before)))
    return int(getattr(result, "rowcount", 0) or 0)


def latest_sample(session: Session) -> EngineHealthSample | None:
    """The newest sample of the whole engine (not a server's), or None."""
    stmt = (select(EngineHealthSample).where(EngineHealthSample.server.is_(None))
            .order_by(EngineHealthSample.epoch_s.desc(), EngineHealthSample.id.desc()))
    return session.scalars(stmt.limit(1)).first()


def latest_per_server(session: Session, *, since: datetime | None = None,
                      until: datetime | None = None) -> list[EngineHealthSample]:
    """The newest sample of each vLLM server sampled in [since, until) (no bound when None), by server URL."""
    t = EngineHealthSample
    newest = select(t.server, func.max(t.id).label("id")).where(t.server.is_not(None))
    if since is not None:
        newest = newest.where(t.epoch_s >= epoch_seconds(since))
    if until is not None:
        newest = newest.where(t.epoch_s < epoch_seconds(until))
    ids = newest.group_by(t.server).subquery()
    stmt = select(t).join(ids, t.id == ids.c.id).order_by(t.server)
    return list(session.scalars(stmt))


def _bucket_columns(t: type[EngineHealthSample], bucket: Any) -> list[Any]:
    return [
        bucket.label("bucket"),
        func.count().label("samples"),
        func.avg(t.running),
        func.max(t.running),
        func.avg(t.waiting),
        func.max(t.waiting),
        func.avg(t.kv_cache_usage),
        func.max(t.kv_cache_usage),
        func.sum(t.preemptions),
        func.avg(t.prompt_tokens_per_s),
        func.avg(t.generation_tokens_per_s),
        func.sum(t.error_count + case((t.error.is_not(None), 1), else_=0)),
        func.sum(case((t.state != "ready", 1), else_=0)),
        func.avg(t.queue_ms),
    ]


def _health_bucket(row: Any) -> HealthBucket:
    return HealthBucket(
        start=datetime.fromtimestamp(int(row[0]), UTC),
        samples=int(row[1]),
        running_avg=float(row[2] or 0.0),
        running_max=int(row[3] or 0),
        waiting_avg=float(row[4] or 0.0),
        waiting_max=int(row[5] or 0),
        kv_cache_avg=float(row[6] or 0.0),
        kv_cache_max=float(row[7] or 0.0),
        preemptions=int(row[8] or 0),
        prompt_tokens_per_s=float(row[9] or 0.0),
        generation_tokens_per_s=float(row[10] or 0.0),
        errors=int(row[11] or 0),
        not_ready=int(row[12] or 0),
        queue_ms=None if row[13] is None else float(row[13]),
    )


def _bucket_expr(bucket_s: int) -> Any:
    if bucket_s < 1:
        raise ValueError(f"bucket_s must be >= 1, got {bucket_s}")
    # The width is written into the SQL (a validated int), so the grouped and selected expressions are one and
    # the same to PostgreSQL (bound parameters would make them two).
    width = literal_column(str(int(bucket_s)), BigInteger())
    return (EngineHealthSample.epoch_s // width) * width


def bucketed(session: Session, *, since: datetime, until: datetime, bucket_s: int) -> list[HealthBucket]:
    """One :class:`HealthBucket` per ``bucket_s`` seconds that has samples of the whole engine in [since, until),
    oldest first."""
    t = EngineHealthSample
    bucket = _bucket_expr(bucket_s)
    stmt = (
        select(*_bucket_columns(t, bucket))
        .where(t.epoch_s >= epoch_seconds(since), t.epoch_s < epoch_seconds(until), t.server.is_(None))
        .group_by(bucket)
        .order_by(bucket)
    )
    return [_health_bucket(row) for row in session.execute(stmt)]


def bucketed_by_server(session: Session, *, since: datetime, until: datetime,
                       bucket_s: int) -> dict[str, list[HealthBucket]]:
    """Each vLLM server's samples in [since, until) as :class:`HealthBucket` of ``bucket_s`` seconds (with the mean
    queue time), oldest first, by server URL."""
    t = EngineHealthSample
    bucket = _bucket_expr(bucket_s)
    stmt = (
        select(t.server, *_bucket_columns(t, bucket))
        .where(t.epoch_s >= epoch_seconds(since), t.epoch_s < epoch_seconds(until), t.server.is_not(None))
        .group_by(t.server, bucket)
        .order_by(t.server, bucket)
    )
    out: dict[str, list[HealthBucket]] = {}
    for row in session.execute(stmt):
        out.setdefault(str(row[0]), []).append(_health_bucket(row[1:]))
    return out


def samples_with_errors(session: Session, *, since: datetime, until: datetime,
                        limit: int = 50) -> list[EngineHealthSample]:
    """The newest samples in [since, until) that noted an engine error or a host error, newest first (a server's
    sample whose server did not answer, too: its ``server`` says which)."""
    t = EngineHealthSample
    stmt = (
        select(t)
        .where(t.epoch_s >= epoch_seconds(since), t.epoch_s < epoch_seconds(until),
               or_(t.error_count > 0, t.error.is_not(None)))
        .order_by(t.epoch_s.desc(), t.id.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


def versions_seen(session: Session, *, since: datetime, until: datetime) -> list[tuple[str, datetime, datetime]]:
    """(model version, first sample, last sample) for each version sampled in [since, until), by first sample."""
    t = EngineHealthSample
    stmt = (
        select(t.model_version, func.min(t.epoch_s), func.max(t.epoch_s))
        .where(t.epoch_s >= epoch_seconds(since), t.epoch_s < epoch_seconds(until), t.model_version.is_not(None),
               t.server.is_(None))
        .group_by(t.model_version)
        .order_by(func.min(t.epoch_s))
    )
    return [(str(name), datetime.fromtimestamp(int(lo), UTC), datetime.fromtimestamp(int(hi), UTC))
            for name, lo, hi in session.execute(stmt)]
