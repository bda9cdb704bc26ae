"""The reads behind the review quality loop: agreement between reviewers and outcomes per finding.

The statistics themselves are pure functions in ``console.services.review_stats``.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.review.samples import second_opinion_ids
from db.tables import Finding, ReviewDecision, ReviewItem, ReviewSample

logger = logging.getLogger(__name__)


def agreement_pairs(session: Session) -> list[tuple[str, str]]:
    """(first decision, blind second decision) for every sample that has both."""
    first = ReviewDecision.__table__.alias("first")
    second = ReviewDecision.__table__.alias("second")
    stmt = (
        select(first.c.decision, second.c.decision)
        .select_from(ReviewSample)
        .join(first, first.c.id == ReviewSample.first_decision_id)
        .join(second, second.c.id == ReviewSample.second_decision_id)
        .order_by(ReviewSample.id)
    )
    return [(a, b) for a, b in session.execute(stmt)]


def decided_findings(
    session: Session, *, since: datetime | None = None
) -> list[tuple[int, datetime, str, str, float, str]]:
    """(item_id, decided_at, detector, label, score, decision) for each finding of each item decided violation/false positive.

    Only the decision in force counts (corrections replace, blind second opinions do not).
    """
    latest = (
        select(ReviewDecision.item_id, func.max(ReviewDecision.id).label("decision_id"))
        .where(ReviewDecision.id.not_in(second_opinion_ids()))
        .group_by(ReviewDecision.item_id)
        .subquery()
    )
    stmt = (
        select(latest.c.item_id, ReviewDecision.created_at, Finding.detector, Finding.label, Finding.score, ReviewDecision.decision)
        .select_from(latest)
        .join(ReviewDecision, ReviewDecision.id == latest.c.decision_id)
        .join(ReviewItem, ReviewItem.id == latest.c.item_id)
        .join(Finding, Finding.exchange_id == ReviewItem.exchange_id)
        .where(ReviewDecision.decision.in_(["violation", "false_positive"]))
        .order_by(ReviewDecision.created_at)
    )
    if since is not None:
        stmt = stmt.where(ReviewDecision.created_at >= since)
    return [(i, at, det, lab, float(score), dec) for i, at, det, lab, score, dec in session.execute(stmt)]
