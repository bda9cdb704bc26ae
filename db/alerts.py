"""Alerts, the webhooks they go to, and their deliveries (0026_alerts).

:func:`raise_alert` records an alert in the caller's transaction, once per condition (``kind`` + ``key``) until
:func:`resolve_alert` clears it, and queues one delivery per enabled webhook that receives its kind; the alert is
audited (``alert.raised``) in the same transaction. One-off events (a rollback, a test) are never resolved: their
``key`` names the event, so the same event is never raised twice.

Deliveries are sent by a dispatcher (console.services.alerts). Each attempt is first claimed here with one
conditional UPDATE (:func:`claim_delivery`), so of two console replicas only one sends it; a sender that dies
after sending and before :func:`record_attempt` leaves a claim that expires, and the delivery is sent again:
at-least-once delivery (receivers may tell repeats apart by the ``X-Console-Delivery`` header).

When a condition clears, :func:`resolve_alert` queues a ``resolved`` delivery (0030_alert_resolved) for each
webhook that had the ``firing`` one and still receives the kind. A resolved notice is never sent before its firing
notice: it is due, and can be claimed, only once that webhook's firing delivery of the alert has been delivered or
has given up (a firing notice still waiting when the condition clears is sent first, then the resolved one).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, not_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from db.audit import append_event, canonical_json
from db.tables import Alert, AlertAttempt, AlertDelivery, AppState, Webhook
from db.types import utcnow

ALERT_KINDS = ("slo_breach", "promotion_waiting", "auto_rollback", "scanner_fallback", "audit_verify_failed",
               "review_overdue", "test")
# Kinds that are one-off events: raised once per event (the key names it), never resolved.
EVENT_KINDS = frozenset({"auto_rollback", "test"})
ALERTS_ACTOR = "alerts"
MAX_KEY_CHARS = 200


def _dedup(kind: str, key: str) -> str:
    return f"{kind}:{key}"


def raise_alert(session: Session, kind: str, key: str, title: str, details: dict[str, Any], *,
                now: datetime | None = None, webhook_ids: Sequence[int] | None = None) -> int | None:
    """Record alert ``kind``/``key`` in the caller's transaction and queue its deliveries; returns its id, or None
    when the same condition is already firing (or this one-off event was already raised).

    ``webhook_ids`` (the page's "Send test alert") sends to those webhooks only, whatever kinds they receive.
    """
    if kind not in ALERT_KINDS:
        raise ValueError(f"unknown alert kind {kind!r}; one of {', '.join(ALERT_KINDS)}")
    key = str(key)[:MAX_KEY_CHARS]
    now = now or utcnow()
    dedup = _dedup(kind, key)
    if session.scalar(select(Alert.id).where(Alert.dedup_key == dedup)) is not None:
        return None
    stored = json.loads(canonical_json(dict(details)))  # datetimes as ISO text, as the audit log stores them
    alert = Alert(kind=kind, key=key, dedup_key=dedup, title=title, details=stored,
                  state="event" if kind in EVENT_KINDS else "firing", raised_at=now)
    try:
        with session.begin_nested():  # a replica raising the same condition at this moment wins; this one yields
            session.add(alert)
            session.flush()
    except IntegrityError:
        return None
    if webhook_ids is not None:
        hooks = list(session.scalars(select(Webhook).where(Webhook.id.in_(list(webhook_ids)))))
    else:
        hooks = [h for h in session.scalars(select(Webhook).where(Webhook.enabled.is_(True)).order_by(Webhook.id))
                 if kind in (h.alert_kinds or [])]
    for hook in hooks:
        session.add(AlertDelivery(alert_id=alert.id, webhook_id=hook.id, webhook_name=hook.name, status="pending",
                                  attempts=0, next_attempt_at=now, created_at=now))
    session.flush()
    append_event(session, actor=ALERTS_ACTOR, action="alert.raised", object_type="alert", object_id=alert.id,
                 details={"kind": kind, "key": key, "title": title, "webhooks": [h.name for h in hooks]})
    return alert.id


def resolve_alert(session: Session, kind: str, key: str, *, now: datetime | None = None) -> bool:
    """Clear the firing condition ``kind``/``key`` (it may be raised again later) and queue its resolved notices;
    True when one was firing (and this call cleared it).

    A resolved notice goes to each webhook that had a firing delivery of the alert (sent, waiting or given up) and
    is still there, enabled and receiving the kind. Audited as ``alert.resolved`` with those webhooks.
    """
    now = now or utcnow()
    alert = session.scalars(select(Alert).where(Alert.dedup_key == _dedup(kind, str(key)[:MAX_KEY_CHARS]),
                                                Alert.state == "firing")).one_or_none()
    if alert is None:
        return False
    # One conditional UPDATE: of two replicas clearing the condition at once, one queues the notices.
    cleared = session.execute(update(Alert).where(Alert.id == alert.id, Alert.state == "firing")
                              .values(state="resolved", dedup_key=None, resolved_at=now))
    if cleared.rowcount != 1:  # type: ignore[attr-defined]
        return False
    firing_to = select(AlertDelivery.webhook_id).where(AlertDelivery.alert_id == alert.id,
                                                         AlertDelivery.event == "firing")
    told = select(Webhook).where(Webhook.id.in_(firing_to), Webhook.enabled.is_(True)).order_by(Webhook.id)
    hooks = [h for h in session.scalars(told) if alert.kind in (h.alert_kinds or [])]
    for hook in hooks:
        session.add(AlertDelivery(alert_id=alert.id, webhook_id=hook.id, webhook_name=hook.name, status="pending",
                                  attempts=0, next_attempt_at=now, created_at=now, event="resolved"))
    session.flush()
    append_event(session, actor=ALERTS_ACTOR, action="alert.resolved", object_type="alert", object_id=alert.id,
                 details={"kind": alert.kind, "key": alert.key, "title": alert.title,
                          "webhooks": [h.name for h in hooks]})
    return True


def firing(session: Session, kind: str) -> list[Alert]:
    """The alerts of ``kind`` firing now."""
    return list(session.scalars(select(Alert).where(Alert.kind == kind, Alert.state == "firing")))


def recent_alerts(session: Session, limit: int = 50) -> list[Alert]:
    """The newest alerts first."""
    return list(session.scalars(select(Alert).order_by(Alert.raised_at.desc(), Alert.id.desc()).limit(limit)))


# --- webhooks ---------------------------------------------------------------------------------------------------


def list_webhooks(session: Session, *, for_update: bool = False) -> list[Webhook]:
    stmt = select(Webhook).order_by(Webhook.name)
    return list(session.scalars(stmt.with_for_update() if for_update else stmt))


def store_webhook_secrets(session: Session, hook: Webhook, *, url: str, secret: str | None, secret_format: str,
                          secret_key_id: str | None) -> None:
    """Store ``hook``'s URL and secret as given (encrypted by the caller, console.services.secret_box)."""
    hook.url, hook.secret, hook.secret_format, hook.secret_key_id = url, secret, secret_format, secret_key_id
    session.flush()


def plaintext_webhooks(session: Session) -> list[tuple[int, str, str, str | None]]:
    """(id, name, url, secret) of the webhooks stored in plaintext (rows from before 0029_webhook_secrets)."""
    stmt = (select(Webhook.id, Webhook.name, Webhook.url, Webhook.secret).where(Webhook.secret_format == "plain")
            .order_by(Webhook.id))
    return [(int(i), str(n), str(u), s) for i, n, u, s in session.execute(stmt)]


def encrypt_plaintext_webhook(session: Session, hook_id: int, *, url: str, secret: str | None, key_id: str) -> bool:
    """Replace webhook ``hook_id``'s plaintext URL and secret with their encrypted forms, if it is still plaintext
    (one conditional UPDATE: of two replicas doing this at once, one changes the row). True when this call did."""
    result = session.execute(
        update(Webhook).where(Webhook.id == hook_id, Webhook.secret_format == "plain")
        .values(url=url, secret=secret, secret_format="fernet", secret_key_id=key_id)
        .execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def encrypted_webhook_key_ids(session: Session) -> dict[str, int]:
    """How many webhooks each secrets key encrypted (key id: count)."""
    stmt = (select(Webhook.secret_key_id, func.count()).where(Webhook.secret_format != "plain")
            .group_by(Webhook.secret_key_id))
    return {str(k): int(n) for k, n in session.execute(stmt)}


def get_webhook(session: Session, webhook_id: int) -> Webhook | None:
    return session.get(Webhook, webhook_id)


def webhook_by_name(session: Session, name: str) -> Webhook | None:
    return session.scalars(select(Webhook).where(Webhook.name == name)).one_or_none()


def delete_webhook(session: Session, hook: Webhook, *, now: datetime) -> int:
    """Delete ``hook``; its deliveries keep its name, and those not sent yet fail ("webhook deleted"). Returns how
    many were still waiting."""
    waiting = session.execute(
        update(AlertDelivery).where(AlertDelivery.webhook_id == hook.id,
                                    AlertDelivery.status.in_(("pending", "sending")))
        .values(status="failed", last_error="webhook deleted", finished_at=now, next_attempt_at=None)
        .execution_options(synchronize_session=False)).rowcount  # type: ignore[attr-defined]
    session.execute(update(AlertDelivery).where(AlertDelivery.webhook_id == hook.id).values(webhook_id=None)
                    .execution_options(synchronize_session=False))
    session.delete(hook)
    session.flush()
    return int(waiting or 0)


# --- deliveries -------------------------------------------------------------------------------------------------


def _due(delivery: Any, now: datetime) -> ColumnElement[bool]:
    """``delivery`` (the table or an alias of it) may be attempted now: pending and due, or claimed by a sender whose
    claim ran out."""
    return or_(and_(delivery.status == "pending", delivery.next_attempt_at <= now),
               and_(delivery.status == "sending", delivery.claimed_until <= now))


def _after_firing(now: datetime | None) -> ColumnElement[bool]:
    """A firing notice, or a resolved one whose webhook's firing delivery of the same alert is settled (delivered or
    failed). With ``now``, a firing delivery due now counts as settled too: it has a lower id, so a round attempts it
    first, and the claim (without ``now``) then checks again."""
    firing = aliased(AlertDelivery)
    unsettled = [firing.alert_id == AlertDelivery.alert_id, firing.webhook_id == AlertDelivery.webhook_id,
                 firing.event == "firing", firing.status.in_(("pending", "sending"))]
    if now is not None:
        unsettled.append(not_(_due(firing, now)))
    return or_(AlertDelivery.event == "firing", not_(exists().where(*unsettled)))


def due_deliveries(session: Session, *, now: datetime, limit: int = 50, alert_id: int | None = None) -> list[int]:
    """Ids of deliveries to attempt now (of ``alert_id`` only, when given), oldest first: pending and due, or claimed
    by a sender whose claim ran out; a resolved notice only once its firing notice is settled or due with it."""
    stmt = (select(AlertDelivery.id).where(_due(AlertDelivery, now), _after_firing(now))
            .order_by(AlertDelivery.id).limit(limit))
    if alert_id is not None:
        stmt = stmt.where(AlertDelivery.alert_id == alert_id)
    return list(session.scalars(stmt))


def claim_delivery(session: Session, delivery_id: int, *, holder: str, now: datetime, lease_s: float) -> bool:
    """Claim one attempt of delivery ``delivery_id`` for ``holder`` (one conditional UPDATE: of two replicas only
    one wins); counts the attempt. True when this caller may send it. A resolved notice is not claimed while its
    webhook's firing notice of the alert is still waiting or being sent."""
    result = session.execute(
        update(AlertDelivery)
        .where(AlertDelivery.id == delivery_id, _due(AlertDelivery, now), _after_firing(None))
        .values(status="sending", claimed_by=holder, claimed_until=now + timedelta(seconds=lease_s),
                attempts=AlertDelivery.attempts + 1)
        .execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def record_attempt(session: Session, delivery: AlertDelivery, *, holder: str, now: datetime, ok: bool,
                   status_code: int | None, error: str | None, duration_ms: float,
                   retry_at: datetime | None) -> str:
    """Record the attempt ``holder`` made and move the delivery on: delivered, pending until ``retry_at``, or failed
    (no ``retry_at``: out of attempts). Returns the new status, or "lost" when the claim had expired and another
    sender took the delivery over (the attempt is still logged)."""
    session.add(AlertAttempt(delivery_id=delivery.id, attempt=delivery.attempts, at=now, status_code=status_code,
                             error=error, duration_ms=duration_ms, ok=ok))
    if delivery.status != "sending" or delivery.claimed_by != holder:
        session.flush()
        return "lost"
    delivery.last_status_code, delivery.last_error = status_code, error
    delivery.claimed_by = delivery.claimed_until = None
    if ok:
        delivery.status, delivery.finished_at, delivery.next_attempt_at = "delivered", now, None
    elif retry_at is None:
        delivery.status, delivery.finished_at, delivery.next_attempt_at = "failed", now, None
    else:
        delivery.status, delivery.next_attempt_at = "pending", retry_at
    session.flush()
    return delivery.status


def deliveries(session: Session, limit: int = 100) -> list[tuple[AlertDelivery, Alert]]:
    """The newest deliveries with their alerts."""
    stmt = (select(AlertDelivery, Alert).join(Alert, Alert.id == AlertDelivery.alert_id)
            .order_by(AlertDelivery.id.desc()).limit(limit))
    return [(d, a) for d, a in session.execute(stmt)]


def attempts_of(session: Session, delivery_id: int) -> list[AlertAttempt]:
    return list(session.scalars(select(AlertAttempt).where(AlertAttempt.delivery_id == delivery_id)
                                .order_by(AlertAttempt.id)))


# --- the evaluator's cursor on the audit log --------------------------------------------------------------------

CURSOR_KEY = "alerts_audit_cursor"


def audit_cursor(session: Session) -> int | None:
    """The last audit seq the evaluator read (None before its first round)."""
    row = session.get(AppState, CURSOR_KEY)
    return None if row is None or row.value is None else int(row.value)


def set_audit_cursor(session: Session, seq: int) -> None:
    """Move the evaluator's cursor (not audited: a reading position, not a decision; the alerts it raised are)."""
    row = session.get(AppState, CURSOR_KEY)
    if row is None:
        session.add(AppState(key=CURSOR_KEY, value=int(seq), updated_at=utcnow()))
    else:
        row.value, row.updated_at = int(seq), utcnow()
    session.flush()
