"""Review items: an exchange put in the queue, and the one error every review write may raise."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from db.audit import append_event
from db.tables import DIRECTIONS, ITEM_REASONS, Exchange, ReviewItem

logger = logging.getLogger(__name__)


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
