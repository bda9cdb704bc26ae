"""Read-only queries behind the latency dashboards."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.tables import Exchange


@dataclass(frozen=True)
class ExchangeTiming:
    created_at: datetime
    model_version: str
    status: str
    queue_ms: float | None
    ttft_ms: float | None
    itl_ms: float | None
    e2e_ms: float | None
    tokens_per_s: float | None
    prompt_tokens: int | None
    output_tokens: int | None


def exchange_timings(session: Session, *, since: datetime, model_version: str | None = None,
                     limit: int = 50_000) -> list[ExchangeTiming]:
    """Timings of the exchanges the engine answered (ok or stopped) since ``since``, oldest first."""
    stmt = (
        select(Exchange.created_at, Exchange.model_version, Exchange.status, Exchange.queue_ms, Exchange.ttft_ms,
               Exchange.itl_ms, Exchange.e2e_ms, Exchange.tokens_per_s, Exchange.prompt_tokens,
               Exchange.output_tokens)
        .where(Exchange.created_at >= since, Exchange.status.in_(("ok", "aborted")))
        .order_by(Exchange.created_at)
        .limit(limit)
    )
    if model_version:
        stmt = stmt.where(Exchange.model_version == model_version)
    return [ExchangeTiming(**row._mapping) for row in session.execute(stmt)]


def model_versions_seen(session: Session) -> list[str]:
    """Every model version that has answered at least once."""
    return list(session.scalars(select(Exchange.model_version).distinct().order_by(Exchange.model_version)))
