"""Service-level objectives of the Latency page: one target per metric and statistic (``db.latency_report``
measures the report against them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.latency_report import SLO_METRICS, SloTarget
from db.tables import Slo
from db.types import utcnow


def list_slos(session: Session) -> list[Slo]:
    """Every target, by metric and statistic."""
    return list(session.scalars(select(Slo).order_by(Slo.metric, Slo.stat)))


def check_slo(metric: str, stat: str, threshold: float) -> None:
    """Raise ValueError unless ``metric``/``stat`` may be a target and ``threshold`` fits it."""
    if stat not in SLO_METRICS.get(metric, ()):
        raise ValueError(f"no target can be set on {metric!r} {stat!r}")
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError("a threshold is a finite number, 0 or more")
    if stat == "rate" and threshold > 1:
        raise ValueError("a rate threshold is a fraction between 0 and 1")


def set_slo(session: Session, *, metric: str, stat: str, threshold: float, set_by_id: int | None,
            now: datetime | None = None) -> tuple[Slo, float | None]:
    """Set (or replace) the target for ``metric``/``stat``; returns it and the threshold it replaced, if any."""
    check_slo(metric, stat, threshold)
    slo = session.scalars(select(Slo).where(Slo.metric == metric, Slo.stat == stat).with_for_update()).first()
    previous = slo.threshold if slo is not None else None
    if slo is None:
        slo = Slo(metric=metric, stat=stat)
        session.add(slo)
    slo.threshold = float(threshold)
    slo.set_by_id = set_by_id
    slo.set_at = now or utcnow()
    session.flush()
    return slo, previous


def delete_slo(session: Session, slo_id: int) -> Slo | None:
    """Remove a target; returns it (detached values still readable), or None if there was none."""
    slo = session.get(Slo, slo_id, with_for_update=True)
    if slo is not None:
        session.delete(slo)
        session.flush()
    return slo


def slo_targets(slos: Sequence[Slo]) -> list[SloTarget]:
    return [SloTarget(s.metric, s.stat, s.threshold) for s in slos]
