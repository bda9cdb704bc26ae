"""Service-level objectives on the Latency page: admins set a target per metric and statistic (``slo.manage``), every
change audited; the page and the report (``console.services.latency``) measure against them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput, NotFound
from db import audit as audit_q
from db import latency_report
from db import slo as slo_q
from db import users as users_q

METRIC_LABELS: dict[str, str] = {
    "ttft_ms": "time to first token",
    "itl_ms": "inter-token latency",
    "e2e_ms": "end-to-end latency",
    "queue_ms": "queue time",
    "scan_before_ms": "prompt scan, before the first token",
    "scan_after_ms": "answer scan after the last token",
    "store_ms": "storage",
    "error_rate": "error rate",
    "abort_rate": "abort rate (stopped, cut or interrupted)",
    "flag_rate": "flag rate (prompt or answer flagged or blocked)",
    "block_rate": "block rate (prompt or answer)",
}
SLO_METRICS = latency_report.SLO_METRICS


@dataclass(frozen=True)
class SloView:
    id: int
    metric: str
    stat: str
    threshold: float  # ms, or a fraction for a rate
    set_by: str | None
    set_at: datetime

    @property
    def label(self) -> str:
        """E.g. "p95 time to first token <= 500 ms" or "error rate <= 1 %"."""
        return slo_label(self.metric, self.stat, self.threshold)


def slo_label(metric: str, stat: str, threshold: float) -> str:
    name = METRIC_LABELS.get(metric, metric)
    if stat == "rate":
        return f"{name} <= {threshold * 100:g} %"
    return f"{stat} {name} <= {threshold:g} ms"


def slo_views(session: Any) -> list[SloView]:
    """Every target, by metric and statistic, with the name of who set it."""
    slos = slo_q.list_slos(session)
    names: dict[int, str] = {}
    for slo in slos:
        if slo.set_by_id is not None and slo.set_by_id not in names:
            user = users_q.get_user(session, slo.set_by_id)
            names[slo.set_by_id] = user.username if user is not None else f"user {slo.set_by_id}"
    return [SloView(s.id, s.metric, s.stat, s.threshold, names.get(s.set_by_id) if s.set_by_id else None, s.set_at)
            for s in slos]

@requires("dashboard.view")
def list_slos(ctx: AppContext, actor: Principal) -> list[SloView]:
    """Every target, by metric and statistic."""
    with ctx.db.session(readonly=True) as s:
        return slo_views(s)


@requires("slo.manage")
def set_slo(ctx: AppContext, actor: Principal, metric: str, stat: str, threshold: float) -> SloView:
    """Set (or replace) the target for ``metric``/``stat``: milliseconds for a percentile, a fraction (0.01 = 1 %)
    for a rate. Audited as ``slo.set`` with the threshold it replaced."""
    if metric not in SLO_METRICS:
        raise InvalidInput(f"Targets can be set on {', '.join(METRIC_LABELS[m] for m in SLO_METRICS)}, "
                           f"not {metric!r}.")
    if stat not in SLO_METRICS[metric]:
        raise InvalidInput(f"A target on {METRIC_LABELS[metric]} is one of: {', '.join(SLO_METRICS[metric])}.")
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise InvalidInput("The threshold must be a number.") from None
    if not math.isfinite(value) or value <= 0 and stat != "rate" or value < 0:
        raise InvalidInput("A latency threshold is a number of milliseconds greater than 0."
                           if stat != "rate" else "A rate threshold is between 0 % and 100 %.")
    if stat == "rate" and value > 1:
        raise InvalidInput("A rate threshold is between 0 % and 100 %.")
    if stat != "rate" and value > 3_600_000:
        raise InvalidInput("A latency threshold is at most one hour (3,600,000 ms).")
    with ctx.db.session() as s:
        slo, previous = slo_q.set_slo(s, metric=metric, stat=stat, threshold=value, set_by_id=actor.user_id,
                                      now=ctx.now())
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="slo.set", object_type="slo",
                             object_id=f"{metric}/{stat}",
                             details={"metric": metric, "stat": stat, "threshold": value, "previous": previous})
        return SloView(slo.id, slo.metric, slo.stat, slo.threshold, actor.username, slo.set_at)


@requires("slo.manage")
def delete_slo(ctx: AppContext, actor: Principal, slo_id: int) -> str:
    """Remove a target; audited as ``slo.delete``. Returns what it was (e.g. "p95 time to first token <= 500 ms")."""
    with ctx.db.session() as s:
        slo = slo_q.delete_slo(s, int(slo_id))
        if slo is None:
            raise NotFound(f"No target with id {slo_id}.")
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="slo.delete",
                             object_type="slo", object_id=f"{slo.metric}/{slo.stat}",
                             details={"metric": slo.metric, "stat": slo.stat, "threshold": slo.threshold})
        return slo_label(slo.metric, slo.stat, slo.threshold)
