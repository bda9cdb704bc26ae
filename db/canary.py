"""The canary's queries: each arm's answers in the canary's minutes, and the judge's rounds (``canary_checks``).

The arms' counts, error and flag rates and p95 time to first token are :func:`db.promotions.window_stats` (the same
real-traffic rules as the watch window); :func:`ttft_above` adds the one count the latency test needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from db.tables import CanaryCheck, Exchange


def ttft_above(session: Session, model_version: str, start: datetime, end: datetime, threshold_ms: float, *,
               exclude: Sequence[tuple[datetime, datetime]] = ()) -> int:
    """How many of ``model_version``'s timed answers in ``[start, end)`` took longer than ``threshold_ms`` to the
    first token: the answers :func:`db.promotions.window_stats` takes its p95 over (real users' finished, answered
    exchanges outside ``exclude``)."""
    conditions = [Exchange.model_version == model_version, Exchange.created_at >= start, Exchange.created_at < end,
                  Exchange.synthetic.is_(False), Exchange.status.in_(("ok", "aborted")),
                  or_(Exchange.prompt_action.is_(None), Exchange.prompt_action != "block"),
                  Exchange.ttft_ms.is_not(None), Exchange.ttft_ms > threshold_ms]
    for a, b in exclude:
        conditions.append(or_(Exchange.created_at < a, Exchange.created_at >= b))
    return int(session.scalar(select(func.count()).where(*conditions)) or 0)


def add_check(session: Session, request_id: int, *, checked_at: datetime, candidate_n: int, live_n: int,
              decision: str, stats: Mapping[str, Any]) -> CanaryCheck:
    """Store one round of the canary's test (in the caller's transaction, beside the decision it led to)."""
    row = CanaryCheck(request_id=request_id, checked_at=checked_at, candidate_n=candidate_n, live_n=live_n,
                      decision=decision, stats=dict(stats))
    session.add(row)
    session.flush()
    return row


def checks(session: Session, request_id: int, *, limit: int = 500) -> list[CanaryCheck]:
    """The canary's rounds, newest first."""
    stmt = (select(CanaryCheck).where(CanaryCheck.request_id == request_id)
            .order_by(CanaryCheck.checked_at.desc(), CanaryCheck.id.desc()).limit(limit))
    return list(session.scalars(stmt))
