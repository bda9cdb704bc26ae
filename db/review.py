"""The safety review queue: items, atomic claims and immutable decisions.

Who may claim or decide (roles, no self-review) is the console's job; this module keeps the data
consistent under concurrency and audits every change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from db.audit import append_event
from db.models import DECISIONS, DIRECTIONS, ITEM_REASONS, Exchange, ReviewDecision, ReviewItem
from db.types import utcnow

logger = logging.getLogger(__name__)


class ReviewStateError(RuntimeError):
    """The item is not in a state that allows this operation (e.g. already decided)."""


def create_review_item(
    session: Session,
    *,
    exchange_id: int,
    reason: str,
    actor: str,
    direction: str | None = None,
    severity: int = 0,
    due_at: datetime | None = None,
    note: str | None = None,
    created_by_id: int | None = None,
) -> ReviewItem:
    """Put an exchange in the review queue (status 'open') and mark it pending review; audited."""
    if reason not in ITEM_REASONS:
        raise ValueError(f"reason must be one of {ITEM_REASONS}, got {reason!r}")
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    item = ReviewItem(
        exchange_id=exchange_id,
        reason=reason,
        direction=direction,
        severity=severity,
        status="open",
        due_at=due_at,
        note=note,
        created_by_id=created_by_id,
    )
    session.add(item)
    exchange = session.get(Exchange, exchange_id)
    if exchange is not None:
        exchange.review_status = "pending"
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=created_by_id,
        action="review.item",
        object_type="review_item",
        object_id=item.id,
        details={"exchange_id": exchange_id, "reason": reason, "direction": direction, "severity": severity},
    )
    return item


def get_review_item(session: Session, item_id: int) -> ReviewItem | None:
    """The review item with this id, or None."""
    return session.get(ReviewItem, item_id)


def list_queue(
    session: Session,
    *,
    statuses: Iterable[str] = ("open", "claimed"),
    reason: str | None = None,
    min_severity: int | None = None,
    claimed_by_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[ReviewItem]:
    """Queue items, most severe first, then oldest first."""
    stmt = select(ReviewItem).where(ReviewItem.status.in_(list(statuses)))
    if reason is not None:
        stmt = stmt.where(ReviewItem.reason == reason)
    if min_severity is not None:
        stmt = stmt.where(ReviewItem.severity >= min_severity)
    if claimed_by_id is not None:
        stmt = stmt.where(ReviewItem.claimed_by_id == claimed_by_id)
    stmt = stmt.order_by(ReviewItem.severity.desc(), ReviewItem.created_at, ReviewItem.id)
    return list(session.scalars(stmt.limit(limit).offset(offset)))


def claim_item(
    session: Session,
    item_id: int,
    reviewer_id: int,
    *,
    actor: str,
    claim_minutes: int = 15,
    now: datetime | None = None,
) -> bool:
    """Claim an open item (or one whose claim expired) for ``reviewer_id``; True if this call won.

    One conditional UPDATE decides the race: of two reviewers claiming at once, exactly one
    matches the row. Audited as ``review.claim`` only for the winner.
    """
    now = now or utcnow()
    claimable = or_(
        ReviewItem.status == "open",
        and_(ReviewItem.status == "claimed", ReviewItem.claim_expires_at < now),
    )
    result = session.execute(
        update(ReviewItem)
        .where(ReviewItem.id == item_id, claimable)
        .values(
            status="claimed",
            claimed_by_id=reviewer_id,
            claim_expires_at=now + timedelta(minutes=claim_minutes),
        )
        .execution_options(synchronize_session=False)
    )
    won = result.rowcount == 1
    if won:
        # The UPDATE bypassed the identity map; make a loaded copy of the item see the new claim.
        item = session.get(ReviewItem, item_id)
        if item is not None:
            session.refresh(item)
        append_event(
            session,
            actor=actor,
            actor_id=reviewer_id,
            action="review.claim",
            object_type="review_item",
            object_id=item_id,
            details={"claim_expires_at": now + timedelta(minutes=claim_minutes)},
        )
    return won


def release_item(session: Session, item_id: int, reviewer_id: int, *, actor: str) -> bool:
    """Give back a claim held by ``reviewer_id``; True if it was held. Audited."""
    result = session.execute(
        update(ReviewItem)
        .where(
            ReviewItem.id == item_id, ReviewItem.status == "claimed", ReviewItem.claimed_by_id == reviewer_id
        )
        .values(status="open", claimed_by_id=None, claim_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    released = result.rowcount == 1
    if released:
        item = session.get(ReviewItem, item_id)
        if item is not None:
            session.refresh(item)
        append_event(
            session,
            actor=actor,
            actor_id=reviewer_id,
            action="review.release",
            object_type="review_item",
            object_id=item_id,
        )
    return released


def record_decision(
    session: Session,
    *,
    item_id: int,
    reviewer_id: int,
    decision: str,
    actor: str,
    category: str | None = None,
    note: str | None = None,
    second_review: bool = False,
) -> ReviewDecision:
    """Record an immutable decision on an item; audited as ``review.decision``.

    'escalate' moves the item to 'escalated' (a second review decides it); other decisions move it to
    'decided' and the exchange's review status to 'decided'. A decision on an already decided item
    must be a ``second_review`` and supersedes the previous decision rather than editing it.
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    item = session.scalars(select(ReviewItem).where(ReviewItem.id == item_id).with_for_update()).one_or_none()
    if item is None:
        raise LookupError(f"no review item with id {item_id}")
    if item.status == "decided" and not second_review:
        raise ReviewStateError(f"review item {item_id} is already decided")
    previous = session.scalars(
        select(ReviewDecision)
        .where(ReviewDecision.item_id == item_id)
        .order_by(ReviewDecision.id.desc())
        .limit(1)
    ).first()
    row = ReviewDecision(
        item_id=item_id,
        reviewer_id=reviewer_id,
        decision=decision,
        category=category,
        note=note,
        supersedes_id=None if previous is None else previous.id,
        second_review=second_review,
    )
    session.add(row)
    item.status = "escalated" if decision == "escalate" else "decided"
    item.claim_expires_at = None
    if item.status == "decided":
        exchange = session.get(Exchange, item.exchange_id)
        if exchange is not None:
            exchange.review_status = "decided"
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=reviewer_id,
        action="review.decision",
        object_type="review_item",
        object_id=item_id,
        details={
            "decision_id": row.id,
            "exchange_id": item.exchange_id,
            "decision": decision,
            "category": category,
            "second_review": second_review,
            "supersedes_id": row.supersedes_id,
        },
    )
    return row


def list_decisions(session: Session, item_id: int) -> list[ReviewDecision]:
    """Every decision on an item, oldest first."""
    return list(
        session.scalars(
            select(ReviewDecision).where(ReviewDecision.item_id == item_id).order_by(ReviewDecision.id)
        )
    )
