"""The queue as reviewers browse it: the filter, the ordered listing, the counters, the filter widgets' values.

Order everywhere is most severe first, then oldest first, then by id; :data:`QUEUE_ORDER` and
:func:`queue_key` state it once for SQL and for merging in Python.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session

from db.tables import ITEM_STATUSES, Exchange, Finding, ReviewItem
from db.types import utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueFilter:
    """What a reviewer narrowed the queue to; None means "any". Findings filters (detector, label, score) match a
    finding that triggered the item (see :data:`TRIGGER_ACTIONS`), as the queue's labels column shows them."""

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


QUEUE_ORDER = (ReviewItem.severity.desc(), ReviewItem.created_at, ReviewItem.id)
# Each finding is stored with the action the policy took on it (allow when its score was under the threshold that
# applied, redact, monitor:<action> for monitor-only rules): these two sent its exchange to the queue.
TRIGGER_ACTIONS: tuple[str, ...] = ("flag", "block")


def queue_key(item: ReviewItem) -> tuple[int, datetime, int]:
    """:data:`QUEUE_ORDER` as a sort key, to merge per-status result lists in Python."""
    return (-item.severity, item.created_at, item.id)


def apply_filter(stmt: Select[Any], f: QueueFilter) -> Select[Any]:
    """``stmt`` (a select over :class:`ReviewItem`) narrowed to the items ``f`` matches."""
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
        # Every message stores a score for each toxicity label: only a finding that flagged or blocked counts.
        finding_terms.append(Finding.action.in_(TRIGGER_ACTIONS))
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
        stmt = apply_filter(select(ReviewItem), replace(f, statuses=tuple(statuses_))).order_by(*QUEUE_ORDER)
        return list(session.scalars(stmt.limit(limit).offset(offset)))
    # "status IN (a, b) ORDER BY severity, age" makes SQLite sort every match; one index-ordered probe per
    # status, each stopping after offset + limit rows, merged here, reads only what the page needs.
    per_status = [
        session.scalars(
            apply_filter(select(ReviewItem), replace(f, statuses=(status,)))
            .order_by(*QUEUE_ORDER)
            .limit(offset + limit)
        )
        for status in statuses_
    ]
    merged = heapq.merge(*per_status, key=queue_key)
    return list(itertools.islice(merged, offset, offset + limit))


def triggered_findings(session: Session, exchange_ids: Iterable[int]) -> dict[int, list[Finding]]:
    """Per exchange, the findings that made the policy flag or block it (score at or above the threshold that
    applied), in stored order; one query for a page of the queue. Exchanges without any map to an empty list."""
    ids = sorted(set(exchange_ids))
    out: dict[int, list[Finding]] = {i: [] for i in ids}
    if ids:
        stmt = (select(Finding)
                .where(Finding.exchange_id.in_(ids), Finding.action.in_(TRIGGER_ACTIONS))
                .order_by(Finding.id))
        for finding in session.scalars(stmt):
            out[finding.exchange_id].append(finding)
    return out


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


def filter_values(session: Session) -> dict[str, list[str]]:
    """The distinct detectors and labels of findings that flagged or blocked, and the model versions seen in queued
    items, for filter widgets."""
    triggered = Finding.action.in_(TRIGGER_ACTIONS)
    return {
        "detector": list(session.scalars(
            select(Finding.detector).where(triggered).distinct().order_by(Finding.detector))),
        "label": list(session.scalars(select(Finding.label).where(triggered).distinct().order_by(Finding.label))),
        "model_version": list(
            session.scalars(
                select(Exchange.model_version)
                .where(Exchange.review_status != "none")
                .distinct()
                .order_by(Exchange.model_version)
            )
        ),
    }
