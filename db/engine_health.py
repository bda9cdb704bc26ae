"""Engine health history: samples of the serving engine's load, written by the sampler and read in time buckets.

Range reads aggregate in the database (one row per bucket, on the ``epoch_s`` index), never row by row: 30 days
of samples every 10 s are ~260,000 rows.
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
    """One sample as the sampler takes it; ``errors`` are ``{"at": unix seconds, "message": str}``."""

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
    )
    session.add(row)
    session.flush()
    return row


def delete_before(session: Session, before: datetime) -> int:
    """Delete the samples taken before ``before``; returns how many."""
    result = session.execute(delete(EngineHealthSample).where(EngineHealthSample.epoch_s < epoch_seconds(before)))
    return int(getattr(result, "rowcount", 0) or 0)


def latest_sample(session: Session) -> EngineHealthSample | None:
    stmt = select(EngineHealthSample).order_by(EngineHealthSample.epoch_s.desc(), EngineHealthSample.id.desc())
    return session.scalars(stmt.limit(1)).first()


def bucketed(session: Session, *, since: datetime, until: datetime, bucket_s: int) -> list[HealthBucket]:
    """One :class:`HealthBucket` per ``bucket_s`` seconds that has samples in [since, until), oldest first."""
    if bucket_s < 1:
        raise ValueError(f"bucket_s must be >= 1, got {bucket_s}")
    t = EngineHealthSample
    # The width is written into the SQL (a validated int), so the grouped and selected expressions are one and
    # the same to PostgreSQL (bound parameters would make them two).
    width = literal_column(str(int(bucket_s)), BigInteger())
    bucket = (t.epoch_s // width) * width
    stmt = (
        select(
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
        )
        .where(t.epoch_s >= epoch_seconds(since), t.epoch_s < epoch_seconds(until))
        .group_by(bucket)
        .order_by(bucket)
    )
    return [
        HealthBucket(
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
        )
        for row in session.execute(stmt)
    ]


def samples_with_errors(session: Session, *, since: datetime, until: datetime,
                        limit: int = 50) -> list[EngineHealthSample]:
    """The newest samples in [since, until) that noted an engine error or a host error, newest first."""
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
        .where(t.epoch_s >= epoch_seconds(since), t.epoch_s < epoch_seconds(until), t.model_version.is_not(None))
        .group_by(t.model_version)
        .order_by(func.min(t.epoch_s))
    )
    return [(str(name), datetime.fromtimestamp(int(lo), UTC), datetime.fromtimestamp(int(hi), UTC))
            for name, lo, hi in session.execute(stmt)]
