"""Spot checks in the database: which exchanges may be drawn, the draw's bookkeeping, and the verdicts on them.

An exchange may be drawn (:func:`candidates`) when it is *unflagged* (``db.flags``: the policy neither flagged nor
blocked its prompt or output, and no stored finding's action is ``flag`` or ``block``), answered (status ``ok``),
real traffic (not a load test), still has its text, and was never in review nor drawn before. For a label family the
exchange must also have no finding of that family's detectors that the policy acted on in any way (flag, block,
redact, or a monitor-only hit): for that family the scanners found nothing.

The draw itself (who is picked, severity) is worked out in ``console.services.spot_checks``; this module stores it:
a review item with reason ``spot_check`` and a :class:`db.tables.SpotCheck` row, whose unique ``exchange_id`` keeps
two drawers (replicas whose leases overlapped) from drawing one exchange twice.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.flags import flagged_sql
from db.review.items import create_review_item
from db.review.queue import TRIGGER_ACTIONS
from db.review.samples import second_opinion_ids
from db.tables import Exchange, Finding, ReviewDecision, ReviewItem, SpotCheck

logger = logging.getLogger(__name__)

REASON = "spot_check"
# A system prompt's findings are stored under "system prompt/<detector>" (console.services.moderation).
SYSTEM_PROMPT_PREFIX = "system prompt/"


@dataclass(frozen=True)
class Candidate:
    exchange_id: int
    model_version: str


def _detector_in(detectors: Collection[str]) -> ColumnElement[bool]:
    names = sorted({*detectors, *(SYSTEM_PROMPT_PREFIX + d for d in detectors)})
    return Finding.detector.in_(names)


def _found_by(detectors: Collection[str]) -> ColumnElement[bool]:
    """The exchange has a finding of one of ``detectors`` that the policy acted on (anything but ``allow``)."""
    return exists().where(Finding.exchange_id == Exchange.id, _detector_in(detectors), Finding.action != "allow")


def candidates(session: Session, *, start: datetime, end: datetime, model_version: str | None = None,
               detectors: Collection[str] | None = None) -> list[Candidate]:
    """Exchanges created in [start, end) that may be drawn (see the module's docstring), oldest first."""
    stmt = (
        select(Exchange.id, Exchange.model_version)
        .where(Exchange.created_at >= start, Exchange.created_at < end, Exchange.status == "ok",
               Exchange.synthetic.is_(False), Exchange.text_erased_at.is_(None), ~flagged_sql(),
               ~exists().where(ReviewItem.exchange_id == Exchange.id),
               ~exists().where(SpotCheck.exchange_id == Exchange.id),
               ~exists().where(Finding.exchange_id == Exchange.id, Finding.action.in_(TRIGGER_ACTIONS)))
        .order_by(Exchange.id)
    )
    if model_version is not None:
        stmt = stmt.where(Exchange.model_version == model_version)
    if detectors:
        stmt = stmt.where(~_found_by(detectors))
    return [Candidate(i, v) for i, v in session.execute(stmt)]


def unflagged_count(session: Session, *, start: datetime, end: datetime) -> int:
    """Unflagged, answered, real exchanges created in [start, end), whether or not they were drawn since (the
    volume a miss rate applies to)."""
    return int(session.scalar(
        select(func.count()).select_from(Exchange)
        .where(Exchange.created_at >= start, Exchange.created_at < end, Exchange.status == "ok",
               Exchange.synthetic.is_(False), ~flagged_sql(),
               ~exists().where(Finding.exchange_id == Exchange.id, Finding.action.in_(TRIGGER_ACTIONS)),
               # Items opened by the policy or by hand are not unflagged; spot checks and feedback items are.
               ~exists().where(ReviewItem.exchange_id == Exchange.id,
                               ReviewItem.reason.in_(("flagged", "blocked", "manual"))))
    ) or 0)


def drawn_count(session: Session, *, day: str, rule: str) -> int:
    """How many exchanges ``rule`` drew on ``day`` (its daily cap counts these)."""
    return int(session.scalar(
        select(func.count()).select_from(SpotCheck).where(SpotCheck.day == day, SpotCheck.rule == rule)) or 0)


def recent_severities(session: Session, *, since: datetime) -> list[int]:
    """The severities of items the policy flagged (not blocked) since ``since``, to draw spot checks' from: the
    items a spot check must look like."""
    return [int(s) for s in session.scalars(
        select(ReviewItem.severity).where(ReviewItem.reason == "flagged",
                                          ReviewItem.created_at >= since).order_by(ReviewItem.id))]


def open_spot_check(session: Session, *, exchange_id: int, rule: str, day: str, severity: int,
                    due_at: datetime | None, actor: str, now: datetime) -> int | None:
    """Open a spot-check item on the exchange and record the draw, in the caller's transaction; the item's id, or
    None when another drawer took the exchange meanwhile (or it entered review another way) and nothing changed."""
    try:
        with session.begin_nested():
            item = create_review_item(session, exchange_id=exchange_id, reason=REASON, actor=actor,
                                      severity=severity, due_at=due_at)
            # The item's creation time is the draw's (the caller's clock); a flagged item's is the exchange's.
            item.created_at = now
            session.add(SpotCheck(exchange_id=exchange_id, item_id=item.id, rule=rule, day=day, created_at=now))
            session.flush()
            return item.id
    except IntegrityError:
        logger.info("spot check: exchange %s was taken meanwhile", exchange_id)
        return None


@dataclass(frozen=True)
class Verdict:
    """The decision in force on one spot check: ``violation`` (with its category) or ``false_positive`` ("no
    violation"), and the detectors that acted on its exchange (redactions, monitor-only hits)."""

    item_id: int
    exchange_id: int
    decided_at: datetime
    decision: str
    category: str | None
    acted_detectors: frozenset[str]


def verdicts(session: Session, *, since: datetime | None = None) -> list[Verdict]:
    """The decision in force on each decided spot check (corrections replace, blind second opinions do not)."""
    latest = (
        select(ReviewDecision.item_id, func.max(ReviewDecision.id).label("decision_id"))
        .where(ReviewDecision.id.not_in(second_opinion_ids()))
        .group_by(ReviewDecision.item_id)
        .subquery()
    )
    stmt = (
        select(ReviewItem.id, ReviewItem.exchange_id, ReviewDecision.created_at, ReviewDecision.decision,
               ReviewDecision.category)
        .select_from(latest)
        .join(ReviewDecision, ReviewDecision.id == latest.c.decision_id)
        .join(ReviewItem, ReviewItem.id == latest.c.item_id)
        .where(ReviewItem.reason == REASON, ReviewDecision.decision.in_(("violation", "false_positive")))
        .order_by(ReviewItem.id)
    )
    if since is not None:
        stmt = stmt.where(ReviewDecision.created_at >= since)
    rows = list(session.execute(stmt))
    acted = _acted_detectors(session, [r[1] for r in rows])
    return [Verdict(i, e, at, d, c, acted.get(e, frozenset())) for i, e, at, d, c in rows]


def _acted_detectors(session: Session, exchange_ids: Iterable[int]) -> dict[int, frozenset[str]]:
    ids = sorted(set(exchange_ids))
    out: dict[int, set[str]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for exchange_id, detector in session.execute(
                select(Finding.exchange_id, Finding.detector)
                .where(Finding.exchange_id.in_(chunk), or_(Finding.action != "allow"))):
            out.setdefault(exchange_id, set()).add(detector.removeprefix(SYSTEM_PROMPT_PREFIX))
    return {k: frozenset(v) for k, v in out.items()}


def is_spot_check(session: Session, item_id: int) -> bool:
    """Whether the item was opened by a spot check."""
    return bool(session.scalar(select(exists().where(ReviewItem.id == item_id, ReviewItem.reason == REASON))))
