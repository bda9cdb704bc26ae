"""The blind second review: a share of decided items goes to another reviewer, who does not see the first decision.

The second opinion never changes the item or its decision in force; it feeds the agreement statistics
(``db.review.quality``).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, cast

from sqlalchemy import CursorResult, Select, func, select, update
from sqlalchemy.orm import Session

from db.audit import append_event
from db.review.items import ReviewStateError
from db.tables import DECISIONS, Exchange, ReviewDecision, ReviewItem, ReviewSample

logger = logging.getLogger(__name__)


def in_sample(item_id: int, share: float) -> bool:
    """Deterministic draw: the item's id hashed to [0, 1) falls below ``share``.

    A hash rather than a random generator keeps the draw reproducible and auditable (anyone can recompute
    which items should have been sampled) while spreading evenly over ids.
    """
    if share <= 0:
        return False
    digest = hashlib.sha256(f"review-sample:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def second_opinion_ids() -> Select[Any]:
    """A subquery of the ids of blind second opinions: decisions that count for agreement, never in force."""
    return select(ReviewSample.second_decision_id).where(ReviewSample.second_decision_id.is_not(None))


def create_sample(session: Session, decision: ReviewDecision, *, actor: str) -> ReviewSample:
    """Send a decided item to a blind second review; audited as ``review.sample``."""
    sample = ReviewSample(
        item_id=decision.item_id, first_decision_id=decision.id, first_reviewer_id=decision.reviewer_id
    )
    session.add(sample)
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=decision.reviewer_id,
        action="review.sample",
        object_type="review_item",
        object_id=decision.item_id,
        details={"sample_id": sample.id, "first_decision_id": decision.id},
    )
    return sample


def get_sample(session: Session, sample_id: int) -> ReviewSample | None:
    """The second-review sample with this id, or None."""
    return session.get(ReviewSample, sample_id)


def next_sample(session: Session, reviewer_id: int) -> ReviewSample | None:
    """The oldest undecided sample this reviewer may take: not their own first decision, not their own chat."""
    return session.scalars(
        select(ReviewSample)
        .join(ReviewItem, ReviewItem.id == ReviewSample.item_id)
        .join(Exchange, Exchange.id == ReviewItem.exchange_id)
        .where(
            ReviewSample.second_decision_id.is_(None),
            ReviewSample.first_reviewer_id != reviewer_id,
            Exchange.user_id != reviewer_id,
        )
        .order_by(ReviewSample.id)
        .limit(1)
    ).first()


def open_sample_count(session: Session) -> int:
    """How many samples still wait for their second decision."""
    return int(
        session.scalar(
            select(func.count()).select_from(ReviewSample).where(ReviewSample.second_decision_id.is_(None))
        )
        or 0
    )


def record_sample_decision(
    session: Session,
    *,
    sample_id: int,
    reviewer_id: int,
    decision: str,
    actor: str,
    category: str | None = None,
) -> ReviewDecision:
    """Record the blind second opinion on a sample; exactly one reviewer's opinion is kept. Audited.

    The opinion does not change the item's status or its decision in force: it feeds agreement statistics.
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    sample = session.get(ReviewSample, sample_id)
    if sample is None:
        raise LookupError(f"no review sample with id {sample_id}")
    if sample.first_reviewer_id == reviewer_id:
        raise ReviewStateError("the first reviewer cannot give the second opinion")
    row = ReviewDecision(
        item_id=sample.item_id, reviewer_id=reviewer_id, decision=decision, category=category, second_review=True
    )
    session.add(row)
    session.flush()
    # The conditional UPDATE settles a race between two second reviewers: only one fills the empty slot.
    result = cast(CursorResult[Any], session.execute(
        update(ReviewSample)
        .where(ReviewSample.id == sample_id, ReviewSample.second_decision_id.is_(None))
        .values(second_decision_id=row.id)
        .execution_options(synchronize_session=False)
    ))
    won = result.rowcount == 1
    if not won:
        raise ReviewStateError(f"sample {sample_id} already has its second opinion")
    session.refresh(sample)
    append_event(
        session,
        actor=actor,
        actor_id=reviewer_id,
        action="review.second_decision",
        object_type="review_item",
        object_id=sample.item_id,
        details={"sample_id": sample_id, "decision_id": row.id, "decision": decision, "category": category},
    )
    return row
