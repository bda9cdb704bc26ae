"""Decisions: immutable records of what a reviewer decided; a correction is a new decision that supersedes.

Blind second-review opinions are decisions too, but never the one in force (see ``db.review.samples``).

Concurrency (PostgreSQL runs these transactions truly at once; SQLite serialises whole write transactions):
a decision locks the item's row first and judges the item by the state read under that lock, so of two
reviewers deciding one item exactly one wins. Every transaction takes ``review_items`` row locks in ascending
id order and before the ``audit_head`` lock (``db.audit.append_event``); a bulk decision therefore locks all its
items before it writes anything, so it cannot deadlock with a claim or with another bulk decision.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.audit import append_event
from db.review.items import ReviewStateError
from db.review.samples import second_opinion_ids
from db.tables import DECISIONS, Exchange, ReviewDecision, ReviewItem

logger = logging.getLogger(__name__)


def lock_items(session: Session, item_ids: Iterable[int]) -> dict[int, ReviewItem]:
    """Lock the items' rows (``SELECT ... FOR UPDATE``) in ascending id order and load their current state.

    Call it before any other write of a transaction that decides several items. The loaded objects are
    refreshed from the locked rows (``populate_existing``): a copy read earlier in the session, before the
    lock, would otherwise keep its stale status. Returns the items found, by id.
    """
    ids = sorted(set(item_ids))
    if not ids:
        return {}
    # One statement: PostgreSQL locks the rows as the sorted result is produced, i.e. in ascending id order.
    rows = session.scalars(
        select(ReviewItem)
        .where(ReviewItem.id.in_(ids))
        .order_by(ReviewItem.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {item.id: item for item in rows}


def _check_decidable(item: ReviewItem, *, reviewer_id: int, second_review: bool, correction: bool,
                     now: datetime | None) -> None:
    """Raise :class:`ReviewStateError` unless the (locked, current) item accepts this kind of decision."""
    if correction:
        if item.status != "decided":
            raise ReviewStateError(f"review item {item.id} is {item.status}; only a decided item can be corrected")
        return
    if second_review:
        if item.status != "escalated":
            already = "already decided" if item.status == "decided" else item.status
            raise ReviewStateError(f"review item {item.id} is {already}; only an escalated item gets a final decision")
        return
    if item.status == "decided":
        raise ReviewStateError(f"review item {item.id} is already decided")
    if item.status == "escalated":
        raise ReviewStateError(f"review item {item.id} is escalated; an admin decides it")
    held_by_other = (
        now is not None
        and item.status == "claimed"
        and item.claimed_by_id != reviewer_id
        and item.claim_expires_at is not None
        and item.claim_expires_at > now
    )
    if held_by_other:
        raise ReviewStateError(f"review item {item.id} is claimed by another reviewer")


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
    correction: bool = False,
    now: datetime | None = None,
) -> ReviewDecision:
    """Record an immutable decision on an item; audited as ``review.decision``.

    The item's row is locked first and its state read under the lock, so two reviewers deciding one item
    at once cannot both succeed: the second gets :class:`ReviewStateError`.

    A plain decision needs an open or claimed item; given ``now``, an item another reviewer holds a live claim
    on is refused too. ``second_review`` is the final decision on an escalated item; ``correction`` supersedes
    the decision in force on a decided item. 'escalate' moves the item to 'escalated'; other decisions move it
    to 'decided' and the exchange's review status to 'decided'. A new decision supersedes the previous one
    rather than editing it. Blind second-review opinions go through ``db.review.samples.record_sample_decision``.
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    item = lock_items(session, [item_id]).get(item_id)
    if item is None:
        raise LookupError(f"no review item with id {item_id}")
    return _decide_locked(session, item, reviewer_id=reviewer_id, decision=decision, actor=actor,
                          category=category, note=note, second_review=second_review, correction=correction, now=now)


def _decide_locked(session: Session, item: ReviewItem, *, reviewer_id: int, decision: str, actor: str,
                   category: str | None, note: str | None, second_review: bool, correction: bool,
                   now: datetime | None) -> ReviewDecision:
    _check_decidable(item, reviewer_id=reviewer_id, second_review=second_review, correction=correction, now=now)
    item_id = item.id
    previous = effective_decision(session, item_id)
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
            "correction": correction,
            "supersedes_id": row.supersedes_id,
        },
    )
    return row


def record_decisions(
    session: Session,
    *,
    item_ids: Sequence[int],
    reviewer_id: int,
    decision: str,
    actor: str,
    category: str | None = None,
    note: str | None = None,
    now: datetime | None = None,
) -> list[ReviewDecision]:
    """Decide several items alike in one transaction; each gets its own decision row and audit event.

    Every item's row is locked (ascending ids) before the first write, then the items are decided in
    ascending id order; the decisions come back in that order. All or nothing: if any item cannot be decided
    (:class:`ReviewStateError`, or ``LookupError`` for an unknown id), the caller's transaction rolls back.
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    locked = lock_items(session, item_ids)
    missing = sorted(set(item_ids) - set(locked))
    if missing:
        raise LookupError(f"no review item with id {missing[0]}")
    return [
        _decide_locked(session, locked[i], reviewer_id=reviewer_id, decision=decision, actor=actor,
                       category=category, note=note, second_review=False, correction=False, now=now)
        for i in sorted(locked)
    ]


def list_decisions(session: Session, item_id: int) -> list[ReviewDecision]:
    """Every decision on an item, oldest first."""
    return list(
        session.scalars(
            select(ReviewDecision).where(ReviewDecision.item_id == item_id).order_by(ReviewDecision.id)
        )
    )


def effective_decision(session: Session, item_id: int) -> ReviewDecision | None:
    """The decision in force on an item: the newest one that is not a blind second-review opinion."""
    return session.scalars(
        select(ReviewDecision)
        .where(ReviewDecision.item_id == item_id, ReviewDecision.id.not_in(second_opinion_ids()))
        .order_by(ReviewDecision.id.desc())
        .limit(1)
    ).first()
