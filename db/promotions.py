"""Promotion requests (four eyes), the evaluation reports they freeze, and the aggregates the watch window compares.

A request asks to move an alias to a version; another person approves or rejects it. Deciding locks the request
row first, so two approvers deciding at once serialise and only the first decision counts. A request of the
production alias may carry a canary plan: approving it starts the canary (status ``canary``) instead of moving the
alias (``console.services.canary`` decides it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from db import flags
from db.audit import append_event, iter_events
from db.tables import AliasMove, Exchange, ModelAlias, PromotionRequest
from db.types import utcnow

logger = logging.getLogger(__name__)

DECISION_ACTIONS = {"approved": "promotion.approve", "rejected": "promotion.reject", "cancelled": "promotion.cancel",
                    "canary": "promotion.canary_started"}
CANARY_RUNNING = "canary"  # the status of an approved canary under way
# An exchange counts as flagged when the policy flagged or blocked its prompt or its output (db.flags).
FLAG_ACTIONS = flags.FLAG_ACTIONS


class PromotionStateError(ValueError):
    """The request was already decided (or cancelled); it cannot be decided again."""


def create_request(
    session: Session,
    *,
    alias: str,
    version_id: int,
    from_version_id: int | None,
    evaluation_id: int | None,
    report: Mapping[str, Any] | None,
    baseline_report: Mapping[str, Any] | None,
    gates: Sequence[Mapping[str, Any]],
    reason: str,
    actor: str,
    actor_id: int,
    details: Mapping[str, Any] | None = None,
    canary_plan: Mapping[str, Any] | None = None,
) -> PromotionRequest:
    """Store a pending request with its frozen reports and gates; audited as ``promotion.request``.

    ``details`` adds readable context (version names) to the audit event; ``canary_plan`` (a checked plan's
    ``to_dict()``) makes it a canary request, its plan in the audit event too.
    """
    request = PromotionRequest(
        alias=alias, version_id=version_id, from_version_id=from_version_id, evaluation_id=evaluation_id,
        report=None if report is None else dict(report),
        baseline_report=None if baseline_report is None else dict(baseline_report),
        gates=[dict(g) for g in gates], reason=reason, requested_by_id=actor_id, status="pending",
        created_at=utcnow(), canary_plan=None if canary_plan is None else dict(canary_plan),
    )
    session.add(request)
    session.flush()
    append_event(
        session, actor=actor, actor_id=actor_id, action="promotion.request", object_type="promotion_request",
        object_id=request.id,
        details={**dict(details or {}), "alias": alias, "version_id": version_id, "from_version_id": from_version_id,
                 "evaluation_id": evaluation_id, "failed_gates": [g["name"] for g in gates if not g.get("passed")],
                 "reason": reason, "canary_plan": None if canary_plan is None else dict(canary_plan)},
    )
    return request


def get_request(session: Session, request_id: int) -> PromotionRequest | None:
    """The request with this id, or None."""
    return session.get(PromotionRequest, request_id)


def lock_request(session: Session, request_id: int) -> PromotionRequest | None:
    """The request, re-read and locked for the rest of the transaction (PostgreSQL: FOR UPDATE; SQLite's write
    transactions already hold the database lock)."""
    stmt = select(PromotionRequest).where(PromotionRequest.id == request_id).with_for_update()
    return session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()


def list_requests(session: Session, *, status: str | None = None, version_id: int | None = None,
                  limit: int = 200) -> list[PromotionRequest]:
    """Requests, newest first, optionally only those with ``status`` or for one version."""
    stmt = select(PromotionRequest).order_by(PromotionRequest.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(PromotionRequest.status == status)
    if version_id is not None:
        stmt = stmt.where(PromotionRequest.version_id == version_id)
    return list(session.scalars(stmt))


def pending_request_for(session: Session, alias: str, version_id: int) -> PromotionRequest | None:
    """The pending request to move ``alias`` to this version, if one is open."""
    stmt = select(PromotionRequest).where(PromotionRequest.alias == alias, PromotionRequest.version_id == version_id,
                                          PromotionRequest.status == "pending")
    return session.scalars(stmt.limit(1)).first()


def running_canary(session: Session, alias: str) -> PromotionRequest | None:
    """The canary of ``alias`` under way (status ``canary``), if one runs (at most one does)."""
    stmt = select(PromotionRequest).where(PromotionRequest.alias == alias,
                                          PromotionRequest.status == CANARY_RUNNING)
    return session.scalars(stmt.order_by(PromotionRequest.id.desc()).limit(1)).first()


def decide(
    session: Session,
    request_id: int,
    *,
    status: str,
    actor: str,
    actor_id: int,
    note: str | None,
    override_reason: str | None = None,
    details: Mapping[str, Any] | None = None,
    canary_window: tuple[datetime, datetime] | None = None,
) -> PromotionRequest:
    """Approve, reject or cancel a pending request; audited (``promotion.approve``/``.reject``/``.cancel``).

    ``status="canary"`` approves a canary request and starts its canary over ``canary_window`` (start, end),
    audited as ``promotion.canary_started``: the alias does not move. The row is locked first; a request that is
    no longer pending raises :class:`PromotionStateError`, so of two concurrent decisions only the first is stored.
    """
    if status not in DECISION_ACTIONS:
        raise ValueError(f"status must be one of {sorted(DECISION_ACTIONS)}, got {status!r}")
    if (status == CANARY_RUNNING) != (canary_window is not None):
        raise ValueError("a canary window goes with status 'canary', and only with it")
    request = lock_request(session, request_id)
    if request is None:
        raise LookupError(f"promotion request {request_id} does not exist")
    if request.status != "pending":
        raise PromotionStateError(f"promotion request {request_id} is already {request.status}")
    request.status = status
    request.decided_by_id = actor_id
    request.decision_note = note
    request.override_reason = override_reason
    request.decided_at = utcnow()
    window: dict[str, Any] = {}
    if canary_window is not None:
        request.canary_started_at, request.canary_ends_at = canary_window
        window = {"started_at": canary_window[0].isoformat(), "ends_at": canary_window[1].isoformat()}
    session.flush()
    append_event(
        session, actor=actor, actor_id=actor_id, action=DECISION_ACTIONS[status], object_type="promotion_request",
        object_id=request.id,
        details={**dict(details or {}), **window, "alias": request.alias, "version_id": request.version_id,
                 "note": note, "override_reason": override_reason},
    )
    return request


# --- production history ----------------------------------------------------------------------------------------


def alias_moves_since(session: Session, alias: str, since: datetime) -> list[AliasMove]:
    """The alias's moves since ``since``, oldest first, preceded by the last move before it (who held it then)."""
    before = session.scalars(select(AliasMove).where(AliasMove.alias == alias, AliasMove.created_at < since)
                             .order_by(AliasMove.id.desc()).limit(1)).first()
    after = session.scalars(select(AliasMove).where(AliasMove.alias == alias, AliasMove.created_at >= since)
                            .order_by(AliasMove.id))
    return ([before] if before is not None else []) + list(after)


def lock_alias(session: Session, alias: str) -> ModelAlias | None:
    """The alias row, locked for the rest of the transaction, so decisions about it (a watch-window rollback on
    several console processes) serialise."""
    stmt = select(ModelAlias).where(ModelAlias.alias == alias).with_for_update()
    return session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()


# --- the watch window's aggregates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowStats:
    """What one version's answers in a time window did: counts, error and flag rates, p95 time to first token.

    ``requests`` counts the exchanges the model was asked to answer (a prompt the policy blocked never reached it);
    ``flagged`` counts those whose *answer* the policy flagged or blocked: what users typed is no measure of the
    version. ``ttft_count`` is how many answers the p95 is taken over.
    """

    requests: int
    errors: int
    flagged: int
    ttft_count: int
    ttft_p95_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def flag_rate(self) -> float:
        return self.flagged / self.requests if self.requests else 0.0


LOADTEST_GRACE = timedelta(minutes=1)  # answers still under way when a load test ends are slowed by it too
LOADTEST_LONGEST = timedelta(days=1)  # how far back a load test that overlaps a window may have started


def load_test_periods(session: Session, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The times console load tests ran that overlap ``[start, end)``, from their ``loadtest.start`` and
    ``loadtest.end`` audit events, each extended by :data:`LOADTEST_GRACE`; a run without an end event (still
    running, or its process died) counts until its planned duration is over."""
    runs: dict[str, list[datetime]] = {}
    for event in iter_events(session, since=start - LOADTEST_LONGEST, until=end, object_type="loadtest"):
        key = str(event.object_id)
        if event.action == "loadtest.start":
            seconds = float((event.details or {}).get("seconds") or 0)
            runs[key] = [event.ts, event.ts + timedelta(seconds=seconds)]
        elif event.action == "loadtest.end" and key in runs:
            runs[key][1] = event.ts
    periods = [(a, b + LOADTEST_GRACE) for a, b in runs.values()]
    return sorted((a, b) for a, b in periods if b > start and a < end)


def window_stats(session: Session, model_version: str, start: datetime, end: datetime, *,
                 exclude: Sequence[tuple[datetime, datetime]] = ()) -> WindowStats:
    """Aggregates over the exchanges ``model_version`` answered in ``[start, end)``, computed by the database.

    Only real users' finished exchanges count: a load test's synthetic chats, answers still being written, and
    anything sent during ``exclude`` (the periods a load test slowed every answer, :func:`load_test_periods`).
    Prompts the policy blocked are not counted (the version never saw them) and only the policy's verdict on the
    answer makes an exchange flagged.

    The p95 of time to first token interpolates linearly between the two ranks around 0.95 (as numpy's default),
    reading two rows through ORDER BY/OFFSET instead of loading the window.
    """
    in_window = [Exchange.model_version == model_version, Exchange.created_at >= start, Exchange.created_at < end,
                 Exchange.synthetic.is_(False), Exchange.status.not_in(("pending", "interrupted")),
                 or_(Exchange.prompt_action.is_(None), Exchange.prompt_action != "block")]
    for a, b in exclude:
        in_window.append(or_(Exchange.created_at < a, Exchange.created_at >= b))
    flagged = flags.action_flags_sql(Exchange.output_action)
    answered = (*in_window, Exchange.status.in_(("ok", "aborted")), Exchange.ttft_ms.is_not(None))
    row = session.execute(
        select(func.count(), func.coalesce(func.sum(case((Exchange.status == "error", 1), else_=0)), 0),
               func.coalesce(func.sum(flags.as_count(flagged)), 0)).where(*in_window)
    ).one()
    ttft_count = session.scalar(select(func.count()).where(*answered)) or 0
    p95: float | None = None
    if ttft_count:
        rank = 0.95 * (ttft_count - 1)
        low = int(rank)
        values = list(session.scalars(select(Exchange.ttft_ms).where(*answered)
                                      .order_by(Exchange.ttft_ms).offset(low).limit(2)))
        floats = [float(v) for v in values if v is not None]
        p95 = floats[0] if len(floats) == 1 else floats[0] + (floats[1] - floats[0]) * (rank - low)
    return WindowStats(int(row[0]), int(row[1]), int(row[2]), int(ttft_count), p95)
