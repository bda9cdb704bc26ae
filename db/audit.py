"""The append-only, hash-chained audit log.

Each event's ``hash`` is the SHA-256 of a canonical JSON rendering of its content and the previous
event's hash, so editing, deleting or reordering any event breaks the chain at that point; the one-row
``audit_head`` table records the last seq and hash, so deleting or forging events at the tail shows too.
Events are written with ``append_event`` inside the caller's transaction, so the change and its audit
event commit or roll back together.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.tables import AuditEvent, AuditHead
from db.types import utcnow

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
HEAD_ID = 1


class _HasSession(Protocol):
    def session(self, *, readonly: bool = False) -> Any: ...


@dataclass(frozen=True)
class ChainReport:
    """The result of ``verify_chain``: ``ok`` with the number of events checked, or where it first broke."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"audit details must be JSON-serialisable, got {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """The one JSON rendering that is hashed: sorted keys, no spaces, Unicode kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def compute_hash(
    *,
    seq: int,
    ts: datetime,
    actor: str,
    actor_id: int | None,
    action: str,
    object_type: str | None,
    object_id: str | None,
    details: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of an event's content and its predecessor's hash."""
    payload = [seq, ts.isoformat(), actor, actor_id, action, object_type, object_id, details, prev_hash]
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def _event_hash(event: AuditEvent) -> str:
    return compute_hash(
        seq=event.seq,
        ts=event.ts,
        actor=event.actor,
        actor_id=event.actor_id,
        action=event.action,
        object_type=event.object_type,
        object_id=event.object_id,
        details=event.details,
        prev_hash=event.prev_hash,
    )


def append_event(
    session: Session,
    *,
    actor: str,
    action: str,
    object_type: str | None = None,
    object_id: str | int | None = None,
    details: Mapping[str, Any] | None = None,
    actor_id: int | None = None,
) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction and return it (flushed).

    ``actor`` is a username or a system name (e.g. ``"system"``); ``action`` a dotted verb such as
    ``"chat.exchange"``. ``details`` must be JSON-serialisable (datetimes become ISO strings); never
    put raw prompt or response text in it.
    """
    # Lock the head row: PostgreSQL serialises concurrent appends here; on SQLite the write
    # transaction already holds the database lock (BEGIN IMMEDIATE).
    head = session.scalars(select(AuditHead).where(AuditHead.id == HEAD_ID).with_for_update()).one()
    # Round-trip through JSON so the stored details are exactly what was hashed.
    stored_details: dict[str, Any] = json.loads(canonical_json(dict(details or {})))
    seq = head.seq + 1
    ts = utcnow()
    oid = None if object_id is None else str(object_id)
    digest = compute_hash(
        seq=seq,
        ts=ts,
        actor=actor,
        actor_id=actor_id,
        action=action,
        object_type=object_type,
        object_id=oid,
        details=stored_details,
        prev_hash=head.hash,
    )
    event = AuditEvent(
        seq=seq,
        ts=ts,
        actor=actor,
        actor_id=actor_id,
        action=action,
        object_type=object_type,
        object_id=oid,
        details=stored_details,
        prev_hash=head.hash,
        hash=digest,
    )
    session.add(event)
    head.seq = seq
    head.hash = digest
    session.flush()
    logger.debug("audit seq=%s action=%s actor=%s object=%s:%s", seq, action, actor, object_type, oid)
    return event


def verify_chain(db_or_session: Session | _HasSession) -> ChainReport:
    """Walk the whole chain in seq order and report the first event that does not verify.

    Detects an edited event (hash mismatch), a deleted one (gap in seq), a reordering (prev_hash
    mismatch), and a tail that disagrees with ``audit_head`` (events removed or forged at the end).
    Accepts a ``Database`` (opens its own read-only session) or an open ``Session``.
    """
    if isinstance(db_or_session, Session):
        return _verify(db_or_session)
    with db_or_session.session(readonly=True) as session:
        return _verify(session)


def _verify(session: Session) -> ChainReport:
    prev_hash = GENESIS_HASH
    expected = 1
    checked = 0
    events = session.scalars(select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=500))
    for event in events:
        if event.seq != expected:
            return _bad(checked, expected, f"seq {expected} is missing (next event has seq {event.seq})")
        if event.prev_hash != prev_hash:
            return _bad(checked, event.seq, "prev_hash does not match the previous event's hash")
        if _event_hash(event) != event.hash:
            return _bad(checked, event.seq, "hash does not match the event's content")
        prev_hash = event.hash
        expected += 1
        checked += 1
    head = session.get(AuditHead, HEAD_ID)
    if head is None:
        return _bad(checked, None, "audit_head row is missing")
    if head.seq != checked or head.hash != prev_hash:
        first_bad = min(head.seq, checked) + 1
        return _bad(
            checked, first_bad, f"audit_head (seq {head.seq}) does not match the last event (seq {checked})"
        )
    return ChainReport(ok=True, checked=checked)


def _bad(checked: int, seq: int | None, reason: str) -> ChainReport:
    logger.warning("audit chain verification failed at seq %s: %s", seq, reason)
    return ChainReport(ok=False, checked=checked, first_bad_seq=seq, reason=reason)


def iter_events(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
    action_prefix: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    after_seq: int | None = None,
    limit: int | None = None,
) -> Iterator[AuditEvent]:
    """Events in seq order matching every given filter (``since`` inclusive, ``until`` exclusive).

    Streams in batches, so exporting a large log does not load it all at once.
    """
    stmt = select(AuditEvent)
    if since is not None:
        stmt = stmt.where(AuditEvent.ts >= since)
    if until is not None:
        stmt = stmt.where(AuditEvent.ts < until)
    if actor is not None:
        stmt = stmt.where(AuditEvent.actor == actor)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    if action_prefix is not None:
        stmt = stmt.where(AuditEvent.action.startswith(action_prefix, autoescape=True))
    if object_type is not None:
        stmt = stmt.where(AuditEvent.object_type == object_type)
    if object_id is not None:
        stmt = stmt.where(AuditEvent.object_id == str(object_id))
    if after_seq is not None:
        stmt = stmt.where(AuditEvent.seq > after_seq)
    stmt = stmt.order_by(AuditEvent.seq)
    if limit is not None:
        stmt = stmt.limit(limit)
    yield from session.scalars(stmt.execution_options(yield_per=500))


def event_to_dict(event: AuditEvent) -> dict[str, Any]:
    """An event as a plain dict with every column (``ts`` as ISO text), e.g. for JSON Lines export."""
    return {
        "id": event.id,
        "seq": event.seq,
        "ts": event.ts.isoformat(),
        "actor": event.actor,
        "actor_id": event.actor_id,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "details": event.details,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def latest_event(session: Session, action: str) -> AuditEvent | None:
    """The newest audit event with this action, or None."""
    return session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                           .order_by(AuditEvent.seq.desc()).limit(1)).first()


def events_about(session: Session, actions: Sequence[str], *, object_type: str | None = None,
                 object_id: str | None = None, limit: int = 1000) -> list[AuditEvent]:
    """Audit events with one of ``actions`` (optionally about one object), oldest first, the newest ``limit``."""
    stmt = select(AuditEvent).where(AuditEvent.action.in_(tuple(actions)))
    if object_type is not None:
        stmt = stmt.where(AuditEvent.object_type == object_type)
    if object_id is not None:
        stmt = stmt.where(AuditEvent.object_id == object_id)
    newest = list(session.scalars(stmt.order_by(AuditEvent.seq.desc()).limit(limit)))
    return newest[::-1]
