"""Policy change requests (``policy_change_requests``) and the streaming reads a policy backtest makes.

The backtest reads exchanges in keyset chunks (``iter_exchange_chunks``) and the findings of one chunk at a time
(``findings_for_range``), so a replay over 100,000 exchanges never holds them all in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.audit import append_event
from db.tables import POLICY_CHANGE_STATUSES, Exchange, Finding, PolicyChangeRequest, PolicyVersion
from db.types import utcnow

DECIDED_ACTIONS = {"approved": "policy.change_approved", "rejected": "policy.change_rejected",
                   "cancelled": "policy.change_cancelled"}


def create_request(session: Session, *, base_version: int, content: str, sha256: str, file_version: str,
                   reason: str, days: int, backtest: dict[str, Any], requested_by_id: int, actor: str,
                   details: dict[str, Any]) -> PolicyChangeRequest:
    """Store a pending request; audited as ``policy.change_requested`` with ``details`` (hashes, summary)."""
    row = PolicyChangeRequest(status="pending", base_version=base_version, content=content, sha256=sha256,
                              file_version=file_version, reason=reason, days=days, backtest=backtest,
                              requested_by_id=requested_by_id, created_at=utcnow())
    session.add(row)
    session.flush()
    append_event(session, actor=actor, actor_id=requested_by_id, action="policy.change_requested",
                 object_type="policy_change_request", object_id=row.id, details={"request": row.id, **details})
    return row


def get_request(session: Session, request_id: int) -> PolicyChangeRequest | None:
    return session.get(PolicyChangeRequest, request_id)


def lock_request(session: Session, request_id: int) -> PolicyChangeRequest | None:
    """The request, re-read and locked for the rest of the transaction (FOR UPDATE on PostgreSQL)."""
    stmt = select(PolicyChangeRequest).where(PolicyChangeRequest.id == request_id).with_for_update()
    return session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()


def lock_latest_policy_version(session: Session) -> PolicyVersion | None:
    """The newest stored policy version, locked: two approvals at once serialise here (PostgreSQL)."""
    stmt = select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(1).with_for_update()
    return session.scalars(stmt.execution_options(populate_existing=True)).first()


def latest_version_number(session: Session) -> int | None:
    """Just the newest stored policy version's number: the cheap look a console makes to follow changes."""
    return session.scalars(select(PolicyVersion.version).order_by(PolicyVersion.version.desc()).limit(1)).first()


def list_requests(session: Session, *, status: str | None = None, limit: int = 100) -> list[PolicyChangeRequest]:
    """Requests, newest first, optionally of one status."""
    if status is not None and status not in POLICY_CHANGE_STATUSES:
        raise ValueError(f"status must be one of {POLICY_CHANGE_STATUSES}, got {status!r}")
    stmt = select(PolicyChangeRequest).order_by(PolicyChangeRequest.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(PolicyChangeRequest.status == status)
    return list(session.scalars(stmt))


def decide(session: Session, request: PolicyChangeRequest, *, status: str, actor: str, actor_id: int | None,
           note: str | None, details: dict[str, Any], applied_version: int | None = None) -> None:
    """Close a pending request as approved, rejected or cancelled; audited in the same transaction."""
    if status not in DECIDED_ACTIONS:
        raise ValueError(f"status must be one of {tuple(DECIDED_ACTIONS)}, got {status!r}")
    request.status = status
    request.decided_by_id = actor_id
    request.decided_at = utcnow()
    request.decision_note = note
    request.applied_version = applied_version
    session.flush()
    append_event(session, actor=actor, actor_id=actor_id, action=DECIDED_ACTIONS[status],
                 object_type="policy_change_request", object_id=request.id,
                 details={"request": request.id, "note": note, **details})


# --- the backtest's reads ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExchangeRow:
    id: int
    created_at: datetime
    prompt_action: str | None


def iter_exchange_chunks(session: Session, *, since: datetime, until: datetime,
                         chunk: int = 5000) -> Iterator[list[ExchangeRow]]:
    """Real (not synthetic) exchanges created in [since, until), in id order, ``chunk`` at a time (keyset)."""
    after = 0
    while True:
        # Core rows through the session's connection: the ORM's per-row processing would double the replay's time.
        rows = session.connection().execute(
            select(Exchange.id, Exchange.created_at, Exchange.prompt_action)
            .where(Exchange.id > after, Exchange.created_at >= since, Exchange.created_at < until,
                   Exchange.synthetic.is_(False))
            .order_by(Exchange.id).limit(chunk)
        ).all()
        if not rows:
            return
        yield [ExchangeRow(r[0], r[1], r[2]) for r in rows]
        after = rows[-1][0]


def findings_for_range(session: Session, first_id: int, last_id: int) -> Sequence[Any]:
    """(exchange_id, direction, detector, label, score) of the findings of exchanges ``first_id``..``last_id``."""
    return session.connection().execute(
        select(Finding.exchange_id, Finding.direction, Finding.detector, Finding.label, Finding.score)
        .where(Finding.exchange_id >= first_id, Finding.exchange_id <= last_id)
    ).all()


@dataclass(frozen=True)
class ExchangeText:
    id: int
    created_at: datetime
    prompt: str
    response: str
    erased: bool


def exchange_texts(session: Session, ids: Sequence[int]) -> dict[int, ExchangeText]:
    """The stored (redacted) prompt and answer of a few exchanges, by id."""
    if not ids:
        return {}
    rows = session.execute(
        select(Exchange.id, Exchange.created_at, Exchange.prompt, Exchange.response, Exchange.text_erased_at)
        .where(Exchange.id.in_(list(ids)))
    ).all()
    return {r[0]: ExchangeText(r[0], r[1], r[2] or "", r[3] or "", r[4] is not None) for r in rows}
