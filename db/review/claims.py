"""Claims: a reviewer takes an item (the most urgent one or a chosen one) for a while, or gives it back.

One conditional UPDATE settles every race, so two reviewers never hold the same item.

Lock order (see ``db.review.decisions``): a claim locks exactly one ``review_items`` row, with its UPDATE, and
only then the ``audit_head`` row (its audit event). Every transaction on the queue takes item rows in ascending
id order and before ``audit_head``, so claims, decisions and bulk decisions never wait on each other in a cycle.
Do not claim several items in one transaction; if that is ever needed, lock them with
``db.review.decisions.lock_items`` first.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, or_, select, update
from sqlalchemy.orm import Session

from db.audit import append_event
from db.review.queue import QUEUE_ORDER, QueueFilter, apply_filter, queue_key
from db.tables import ReviewItem
from db.types import utcnow

logger = logging.getLogger(__name__)


def claim_next(
    session: Session,
    reviewer_id: int,
    *,
    actor: str,
    filters: QueueFilter | None = None,
    claim_minutes: int = 15,
    now: datetime | None = None,
    attempts: int = 5,
) -> ReviewItem | None:
    """Claim the most urgent claimable item matching ``filters`` (open, or claimed with an expired claim).

    Each pick is settled by :func:`claim_item`'s conditional UPDATE; if another reviewer won that item,
    try the next one. Returns the claimed item or None when nothing is claimable.
    """
    now = now or utcnow()
    base = filters or QueueFilter()
    for _ in range(attempts):
        # Two index-ordered probes (LIMIT 1 each) instead of one OR over both states, which would sort.
        open_pick: ReviewItem | None = session.scalars(
            apply_filter(select(ReviewItem), replace(base, statuses=("open",), assignee_id=None))
            .order_by(*QUEUE_ORDER).limit(1)
        ).first()
        expired_pick: ReviewItem | None = session.scalars(
            apply_filter(select(ReviewItem), replace(base, statuses=("claimed",), assignee_id=None))
            .where(ReviewItem.claim_expires_at < now)
            .order_by(*QUEUE_ORDER).limit(1)
        ).first()
        picks = [p for p in (open_pick, expired_pick) if p is not None]
        if not picks:
            return None
        pick = min(picks, key=queue_key)
        if claim_item(session, pick.id, reviewer_id, actor=actor, claim_minutes=claim_minutes, now=now):
            return pick
    return None


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
    # An UPDATE gives a CursorResult (with rowcount); Session.execute is typed for any statement.
    result = cast(CursorResult[Any], session.execute(
        update(ReviewItem)
        .where(ReviewItem.id == item_id, claimable)
        .values(
            status="claimed",
            claimed_by_id=reviewer_id,
            claim_expires_at=now + timedelta(minutes=claim_minutes),
        )
        .execution_options(synchronize_session=False)
    ))
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
    result = cast(CursorResult[Any], session.execute(
        update(ReviewItem)
        .where(
            ReviewItem.id == item_id, ReviewItem.status == "claimed", ReviewItem.claimed_by_id == reviewer_id
        )
        .values(status="open", claimed_by_id=None, claim_expires_at=None)
        .execution_options(synchronize_session=False)
    ))
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
