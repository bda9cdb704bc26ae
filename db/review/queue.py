"""The safety review queue: items, atomic claims and immutable decisions.

Who may claim or decide (roles, no self-review) is the console's job; this module keeps the data
consistent under concurrency and audits every change.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from db.audit import append_event
from db.models import (
    DECISIONS,
    DIRECTIONS,
    ITEM_REASONS,
    ITEM_STATUSES,
    Exchange,
    Finding,
    RawText,
    ReviewDecision,
    ReviewItem,
    ReviewSample,
)
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


@dataclass(frozen=True)
class QueueFilter:
    """What a reviewer narrowed the queue to; None means "any". Findings filters match any finding of the exchange."""

    statuses: tuple[str, ...] = ("open", "claimed")
    detector: str | None = None
    label: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    model_version: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    assignee_id: int | None = None
    reason: str | None = None
    min_severity: int | None = None
    # Reviewers never see their own conversations in the queue (separation of duties).
    exclude_owner_id: int | None = None


def _filtered(stmt: Select[Any], f: QueueFilter) -> Select[Any]:
    if f.statuses:
        stmt = stmt.where(ReviewItem.status.in_(list(f.statuses)))
    if f.reason is not None:
        stmt = stmt.where(ReviewItem.reason == f.reason)
    if f.min_severity is not None:
        stmt = stmt.where(ReviewItem.severity >= f.min_severity)
    if f.assignee_id is not None:
        stmt = stmt.where(ReviewItem.claimed_by_id == f.assignee_id)
    if f.created_from is not None:
        stmt = stmt.where(ReviewItem.created_at >= f.created_from)
    if f.created_to is not None:
        stmt = stmt.where(ReviewItem.created_at < f.created_to)
    finding_terms = []
    if f.detector is not None:
        finding_terms.append(Finding.detector == f.detector)
    if f.label is not None:
        finding_terms.append(Finding.label == f.label)
    if f.min_score is not None:
        finding_terms.append(Finding.score >= f.min_score)
    if f.max_score is not None:
        finding_terms.append(Finding.score <= f.max_score)
    if finding_terms:
        # EXISTS keeps one row per item and lets SQLite walk the queue index in order, probing findings by
        # exchange_id, so the first page stops early instead of sorting every match.
        stmt = stmt.where(
            exists().where(Finding.exchange_id == ReviewItem.exchange_id, *finding_terms)
        )
    if f.model_version is not None or f.exclude_owner_id is not None:
        stmt = stmt.join(Exchange, Exchange.id == ReviewItem.exchange_id)
        if f.model_version is not None:
            stmt = stmt.where(Exchange.model_version == f.model_version)
        if f.exclude_owner_id is not None:
            stmt = stmt.where(Exchange.user_id != f.exclude_owner_id)
    return stmt


_QUEUE_ORDER = (ReviewItem.severity.desc(), ReviewItem.created_at, ReviewItem.id)


def list_queue(
    session: Session,
    filters: QueueFilter | None = None,
    *,
    statuses: Iterable[str] | None = None,
    reason: str | None = None,
    min_severity: int | None = None,
    claimed_by_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[ReviewItem]:
    """Queue items matching ``filters`` (keyword shortcuts override it), most severe first, then oldest first."""
    f = filters or QueueFilter()
    overrides: dict[str, Any] = {}
    if statuses is not None:
        overrides["statuses"] = tuple(statuses)
    if reason is not None:
        overrides["reason"] = reason
    if min_severity is not None:
        overrides["min_severity"] = min_severity
    if claimed_by_id is not None:
        overrides["assignee_id"] = claimed_by_id
    if overrides:
        f = replace(f, **overrides)
    statuses_ = list(dict.fromkeys(f.statuses)) or list(ITEM_STATUSES)
    if len(statuses_) == 1:
        stmt = _filtered(select(ReviewItem), replace(f, statuses=tuple(statuses_))).order_by(*_QUEUE_ORDER)
        return list(session.scalars(stmt.limit(limit).offset(offset)))
    # "status IN (a, b) ORDER BY severity, age" makes SQLite sort every match; one index-ordered probe per
    # status, each stopping after offset + limit rows, merged here, reads only what the page needs.
    per_status = [
        session.scalars(
            _filtered(select(ReviewItem), replace(f, statuses=(status,)))
            .order_by(*_QUEUE_ORDER)
            .limit(offset + limit)
        )
        for status in statuses_
    ]
    merged = heapq.merge(*per_status, key=_queue_key)
    return list(itertools.islice(merged, offset, offset + limit))


def _queue_key(item: ReviewItem) -> tuple[int, datetime, int]:
    return (-item.severity, item.created_at, item.id)


@dataclass(frozen=True)
class QueueSummary:
    """The queue's health at a glance: items per status, the oldest open item, how many are overdue."""

    counts: dict[str, int]
    oldest_open_at: datetime | None
    overdue: int


def queue_summary(session: Session, *, now: datetime | None = None) -> QueueSummary:
    """Counts per status, the creation time of the oldest open item and the overdue count (open or claimed)."""
    now = now or utcnow()
    counts = {status: 0 for status in ITEM_STATUSES}
    for status, n in session.execute(select(ReviewItem.status, func.count()).group_by(ReviewItem.status)):
        counts[status] = n
    oldest = session.scalar(select(func.min(ReviewItem.created_at)).where(ReviewItem.status == "open"))
    overdue = session.scalar(
        select(func.count())
        .select_from(ReviewItem)
        .where(ReviewItem.status.in_(["open", "claimed"]), ReviewItem.due_at < now)
    )
    return QueueSummary(counts=counts, oldest_open_at=oldest, overdue=int(overdue or 0))


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
        open_pick = session.scalars(
            _filtered(select(ReviewItem), replace(base, statuses=("open",), assignee_id=None))
            .order_by(*_QUEUE_ORDER).limit(1)
        ).first()
        expired_pick = session.scalars(
            _filtered(select(ReviewItem), replace(base, statuses=("claimed",), assignee_id=None))
            .where(ReviewItem.claim_expires_at < now)
            .order_by(*_QUEUE_ORDER).limit(1)
        ).first()
        picks = [p for p in (open_pick, expired_pick) if p is not None]
        if not picks:
            return None
        pick = min(picks, key=_queue_key)
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
    correction: bool = False,
) -> ReviewDecision:
    """Record an immutable decision on an item; audited as ``review.decision``.

    'escalate' moves the item to 'escalated' (a second review decides it); other decisions move it to
    'decided' and the exchange's review status to 'decided'. A decision on an already decided item
    must be a ``second_review`` or a ``correction`` and supersedes the previous decision rather than editing it.
    Blind second-review opinions go through :func:`record_sample_decision` instead.
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


def list_decisions(session: Session, item_id: int) -> list[ReviewDecision]:
    """Every decision on an item, oldest first."""
    return list(
        session.scalars(
            select(ReviewDecision).where(ReviewDecision.item_id == item_id).order_by(ReviewDecision.id)
        )
    )


def _sample_decision_ids() -> Select[Any]:
    return select(ReviewSample.second_decision_id).where(ReviewSample.second_decision_id.is_not(None))


def effective_decision(session: Session, item_id: int) -> ReviewDecision | None:
    """The decision in force on an item: the newest one that is not a blind second-review opinion."""
    return session.scalars(
        select(ReviewDecision)
        .where(ReviewDecision.item_id == item_id, ReviewDecision.id.not_in(_sample_decision_ids()))
        .order_by(ReviewDecision.id.desc())
        .limit(1)
    ).first()


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


def in_sample(item_id: int, share: float) -> bool:
    """Deterministic draw: the item's id hashed to [0, 1) falls below ``share``.

    A hash rather than a random generator keeps the draw reproducible and auditable (anyone can recompute
    which items should have been sampled) while spreading evenly over ids.
    """
    if share <= 0:
        return False
    digest = hashlib.sha256(f"review-sample:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


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


def raw_text_directions(session: Session, exchange_id: int) -> tuple[str, ...]:
    """Which sides of an exchange still have raw text kept (not erased); the text itself is not read."""
    return tuple(
        sorted(
            session.scalars(
                select(RawText.direction).where(RawText.exchange_id == exchange_id, RawText.erased_at.is_(None))
            )
        )
    )


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
    won = session.execute(
        update(ReviewSample)
        .where(ReviewSample.id == sample_id, ReviewSample.second_decision_id.is_(None))
        .values(second_decision_id=row.id)
        .execution_options(synchronize_session=False)
    ).rowcount == 1
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
        .where(ReviewDecision.id.not_in(_sample_decision_ids()))
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


def filter_values(session: Session) -> dict[str, list[str]]:
    """The distinct detectors, labels and model versions seen in queued items, for filter widgets."""
    return {
        "detector": list(session.scalars(select(Finding.detector).distinct().order_by(Finding.detector))),
        "label": list(session.scalars(select(Finding.label).distinct().order_by(Finding.label))),
        "model_version": list(
            session.scalars(
                select(Exchange.model_version)
                .where(Exchange.review_status != "none")
                .distinct()
                .order_by(Exchange.model_version)
            )
        ),
    }
