"""User feedback on exchanges: one current rating per (exchange, user), +1 or -1, with an optional reason.

A change updates the row in place (the rates count what people think now, and one row per answer keeps them one
count per person); the audit chain is the history: ``feedback.given`` (first rating), ``feedback.changed`` (the
rating or the reason changed), ``feedback.cleared`` (the row is deleted). Audit details never hold the reason's
text, only its length.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, case, delete, func, select, update
from sqlalchemy.orm import Session

from db.audit import append_event
from db.tables import FEEDBACK_RATINGS, Exchange, Feedback


@dataclass(frozen=True)
class FeedbackCounts:
    """Ratings of one model version's answers: thumbs up, thumbs down, and the answers they could rate."""

    up: int = 0
    down: int = 0
    answers: int = 0  # completed ("ok") non-synthetic answers in the window

    @property
    def rated(self) -> int:
        return self.up + self.down

    @property
    def up_share(self) -> float | None:
        """Thumbs up as a share of the rated answers (None when none was rated)."""
        return self.up / self.rated if self.rated else None

    @property
    def down_share(self) -> float | None:
        """Thumbs down as a share of the rated answers (None when none was rated)."""
        return self.down / self.rated if self.rated else None


def get_feedback(session: Session, exchange_id: int, user_id: int) -> Feedback | None:
    """The user's current rating of the exchange, or None."""
    return session.scalars(select(Feedback).where(Feedback.exchange_id == exchange_id,
                                                  Feedback.user_id == user_id)).first()


def feedback_by_exchange(session: Session, user_id: int, exchange_ids: Iterable[int]) -> dict[int, Feedback]:
    """The user's ratings of these exchanges, by exchange id (exchanges not rated are absent)."""
    ids = list(exchange_ids)
    if not ids:
        return {}
    rows = session.scalars(select(Feedback).where(Feedback.user_id == user_id, Feedback.exchange_id.in_(ids)))
    return {f.exchange_id: f for f in rows}


def set_feedback(session: Session, *, exchange: Exchange, user_id: int, actor: str, rating: int,
                 reason: str | None, now: datetime) -> tuple[Feedback, str]:
    """Record ``rating`` (+1 or -1) and ``reason`` (already cleaned and bounded) for the user's exchange, audited in
    the caller's transaction. Returns the row and the audit action (``feedback.given`` or ``feedback.changed``;
    ``""`` when nothing changed, which is not audited). ``model_version`` is the exchange's."""
    if rating not in FEEDBACK_RATINGS:
        raise ValueError(f"rating must be one of {FEEDBACK_RATINGS}, got {rating!r}")
    row = get_feedback(session, exchange.id, user_id)
    before: int | None = None
    if row is None:
        row = Feedback(exchange_id=exchange.id, user_id=user_id, rating=rating, reason=reason,
                       model_version=exchange.model_version, created_at=now, updated_at=now)
        session.add(row)
        action = "feedback.given"
    else:
        if row.rating == rating and row.reason == reason:
            return row, ""
        before = row.rating
        row.rating, row.reason, row.updated_at = rating, reason, now
        action = "feedback.changed"
    session.flush()
    details: dict[str, object] = {"exchange_id": exchange.id, "rating": rating, "model_version": row.model_version,
                                  "reason_chars": len(reason or "")}
    if before is not None:
        details["previous_rating"] = before
    append_event(session, actor=actor, actor_id=user_id, action=action, object_type="feedback", object_id=row.id,
                 details=details)
    return row, action


def clear_feedback(session: Session, *, exchange_id: int, user_id: int, actor: str) -> bool:
    """Delete the user's rating of the exchange (audited ``feedback.cleared``); False when there was none."""
    row = get_feedback(session, exchange_id, user_id)
    if row is None:
        return False
    append_event(session, actor=actor, actor_id=user_id, action="feedback.cleared", object_type="feedback",
                 object_id=row.id, details={"exchange_id": exchange_id, "previous_rating": row.rating,
                                            "model_version": row.model_version})
    session.execute(delete(Feedback).where(Feedback.id == row.id))
    return True


def erase_reasons(session: Session, exchange_ids: Sequence[int] | Select[Any]) -> int:
    """Blank the reasons of the feedback on these exchanges (a list or a select of ids): retention and erasure."""
    result = session.execute(update(Feedback).where(Feedback.exchange_id.in_(exchange_ids),
                                                    Feedback.reason.is_not(None))
                             .values(reason=None).execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0)


def feedback_counts(session: Session, *, since: datetime | None = None, until: datetime | None = None,
                    version: str | None = None) -> dict[str, FeedbackCounts]:
    """Per model version: thumbs up and down on the answers given in ``[since, until)`` (the exchange's time, so
    "the answers of this window, as rated so far"), and how many completed, non-synthetic answers there were."""
    conds: list[ColumnElement[bool]] = [Exchange.synthetic.is_(False)]
    if since is not None:
        conds.append(Exchange.created_at >= since)
    if until is not None:
        conds.append(Exchange.created_at < until)
    if version is not None:
        conds.append(Exchange.model_version == version)
    answers = dict(session.execute(
        select(Exchange.model_version, func.count()).where(*conds, Exchange.status == "ok")
        .group_by(Exchange.model_version)).tuples().all())
    ratings = session.execute(
        select(Exchange.model_version,
               func.sum(case((Feedback.rating > 0, 1), else_=0)),
               func.sum(case((Feedback.rating < 0, 1), else_=0)))
        .join(Feedback, Feedback.exchange_id == Exchange.id).where(*conds)
        .group_by(Exchange.model_version)).tuples().all()
    out = {v: FeedbackCounts(answers=int(n)) for v, n in answers.items()}
    for v, up, down in ratings:
        out[v] = FeedbackCounts(up=int(up or 0), down=int(down or 0), answers=out.get(v, FeedbackCounts()).answers)
    return out
