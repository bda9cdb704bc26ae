"""Decisions: immutable records of what a reviewer decided; a correction is a new decision that supersedes.

Blind second-review opinions are decisions too, but never the one in force (see ``db.review.samples``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.audit import append_event
from db.review.items import ReviewStateError
from db.review.samples import second_opinion_ids
from db.tables import DECISIONS, Exchange, ReviewDecision, ReviewItem

logger = logging.getLogger(__name__)


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
) -> ReviewDecision:
    """Record an immutable decision on an item; audited as ``review.decision``.

    'escalate' moves the item to 'escalated' (a second review decides it); other decisions move it to
    'decided' and the exchange's review status to 'decided'. A decision on an already decided item
    must be a ``second_review`` or a ``correction`` and supersedes the previous decision rather than editing it.
    Blind second-review opinions go through ``db.review.samples.record_sample_decision`` instead.
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    item = session.scalars(select(ReviewItem).where(ReviewItem.id == item_id).with_for_update()).one_or_none()
    if item is None:
        raise LookupError(f"no review item with id {item_id}")
    if item.status == "decided" and not (second_review or correction):
        raise ReviewStateError(f"review item {item_id} is already decided")
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
) -> list[ReviewDecision]:
    """Decide several items alike in one transaction; each gets its own decision row and audit event."""
    return [
        record_decision(
            session, item_id=i, reviewer_id=reviewer_id, decision=decision, actor=actor, category=category, note=note
        )
        for i in item_ids
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
