"""Review items: an exchange put in the queue, and the one error every review write may raise."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.audit import append_event
from db.tables import DIRECTIONS, ITEM_REASONS, OPEN_ITEM_STATUSES, Exchange, ReviewItem

logger = logging.getLogger(__name__)

# Items no reviewer has decided yet: an exchange has at most one. A second request to review it adds its note to
# that item. The database holds to it for the items waiting for a reviewer (OPEN_ITEM_STATUSES: a partial unique
# index, migration 0014); an escalated item is undecided too (an admin decides it) and takes notes the same way.
UNDECIDED_STATUSES = (*OPEN_ITEM_STATUSES, "escalated")


class ReviewStateError(RuntimeError):
    """The item is not in a state that allows this operation (e.g. already decided)."""


@dataclass(frozen=True)
class ReviewItemRecord:
    """Why and how urgently an exchange enters the queue, worked out before the exchange is stored."""

    reason: str  # one of ITEM_REASONS
    severity: int = 0
    direction: str | None = None  # the side that triggered it, if one did
    due_at: datetime | None = None
    note: str | None = None


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
    """Put an exchange in the review queue (status 'open') and mark it pending review; audited.

    ``note`` is what the person who sent it to review wants a reviewer to look at (manual items).
    """
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


def undecided_item(session: Session, exchange_id: int) -> ReviewItem | None:
    """The exchange's item that no reviewer has decided yet, its row locked (``SELECT ... FOR UPDATE``), or None."""
    return session.scalars(
        select(ReviewItem)
        .where(ReviewItem.exchange_id == exchange_id, ReviewItem.status.in_(UNDECIDED_STATUSES))
        .order_by(ReviewItem.id)
        .limit(1)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()


def request_review(
    session: Session,
    *,
    exchange_id: int,
    note: str,
    actor: str,
    created_by_id: int | None,
    severity: int = 0,
    due_at: datetime | None = None,
    reason: str = "manual",
) -> tuple[ReviewItem, bool]:
    """Send an exchange to review by hand with a note: one undecided item per exchange.

    Without an undecided item, an item is created with ``reason`` (``manual``, or ``feedback`` for a thumbs-down) (:func:`create_review_item`); with one (flagged by the
    policy, or sent before), ``note`` is added to it, audited as ``review.note``. Returns the item and whether it
    was created. Two sessions racing to create it get one item: the loser's insert hits the partial unique index
    (PostgreSQL; SQLite writers queue at BEGIN IMMEDIATE and see the winner's item) and adds its note instead.
    """
    item = undecided_item(session, exchange_id)
    if item is None:
        try:
            with session.begin_nested():
                created = create_review_item(session, exchange_id=exchange_id, reason=reason, actor=actor,
                                             severity=severity, due_at=due_at, note=note,
                                             created_by_id=created_by_id)
            return created, True
        except IntegrityError:
            item = undecided_item(session, exchange_id)  # committed by the other session meanwhile
            if item is None:
                raise
            logger.info("review request for exchange %s met item %s created meanwhile", exchange_id, item.id)
    item.note = f"{item.note}\n\n{note}" if item.note else note
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=created_by_id,
        action="review.note",
        object_type="review_item",
        object_id=item.id,
        details={"exchange_id": exchange_id, "status": item.status, "note_chars": len(note)},
    )
    return item, False
