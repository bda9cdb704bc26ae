"""User feedback: a thumbs up or down, with an optional reason, on the answers of one's own conversations.

One current rating per (answer, person), changeable; every change is audited in the same transaction
(``feedback.given`` / ``feedback.changed`` / ``feedback.cleared``, see :mod:`db.feedback`). A thumbs-down with a
reason opens a review item (reason ``feedback``, the reason as its note) when the policy in force says so
(``[feedback] thumbs_down_to_review``, default true); an exchange already waiting for a reviewer gets the reason
as one more note instead (one undecided item per exchange).

Only answers can be rated: an exchange that is blocked, failed, still pending or interrupted has no answer (its
prompt can still be sent to review by hand). Per-version rates for the Latency page, evaluations, the watch
window and canaries come from :func:`feedback_rates` / :func:`db.feedback.feedback_counts`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from console.services import moderation
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput, NotFound
from console.services.text import optional_text
from db import chat as chat_q
from db import feedback as feedback_q
from db import safety as safety_q
from db.feedback import FeedbackCounts
from db.review import items as review_items
from db.tables import Exchange, Feedback

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

MAX_REASON_CHARS = 1_000
# Exchanges with an answer the user saw (a partial one for "aborted": stopped, or cut by a switch).
RATEABLE_STATUSES = ("ok", "aborted")
# A feedback item's severity: like an item sent to review by hand (due in REVIEW_DEADLINE_HOURS[1] hours).
FEEDBACK_SEVERITY = 1
RATINGS = {1: "thumbs up", -1: "thumbs down"}
# C0 and C1 control characters other than tab and newline: invisible in the queue, removed from a reason.
_CONTROL = re.compile("[\x01-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class FeedbackView:
    """The user's current rating of one answer."""

    exchange_id: int
    rating: int  # +1 or -1
    reason: str | None
    updated_at: datetime


@dataclass(frozen=True)
class FeedbackResult:
    """What :func:`give_feedback` did: the rating stored, and the review item it opened or added a note to."""

    feedback: FeedbackView
    changed: bool  # False when the same rating and reason were already stored
    review_item_id: int | None = None


@dataclass(frozen=True)
class VersionFeedback(FeedbackCounts):
    """One model version's ratings over a window: ``up_share`` / ``down_share`` are shares of the rated answers."""

    model_version: str = ""


def _rating(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in RATINGS:
        raise InvalidInput(f"The rating must be 1 (thumbs up) or -1 (thumbs down), got {value!r}.")
    return value


def clean_reason(ctx: AppContext, reason: object) -> str | None:
    """The reason as stored: cleaned, control characters removed, at most :data:`MAX_REASON_CHARS` characters (else
    :class:`InvalidInput` naming the limit), personal data cut; None when nothing visible was typed."""
    if isinstance(reason, str):
        reason = _CONTROL.sub("", reason)
    text = optional_text(reason, "the reason", MAX_REASON_CHARS)
    return moderation.redact_pii(ctx, text) if text is not None else None


def to_review(ctx: AppContext, s: Session) -> bool:
    """Whether the policy in force sends a thumbs-down with a reason to review (the stored newest version when the
    scanners are not loaded here; true when there is none)."""
    stack = ctx.safety
    if stack is not None:
        return bool(stack.policy.feedback_to_review)
    from engine.safety.policy import Policy, PolicyError

    latest = safety_q.latest_policy_version(s)
    if latest is None:
        return True
    try:
        return Policy.from_toml(latest.content).feedback_to_review
    except PolicyError:
        return True


def _own_answer(s: Session, actor: Principal, exchange_id: object) -> Exchange:
    if isinstance(exchange_id, bool) or not isinstance(exchange_id, int):
        raise NotFound("That message does not exist or is not yours.")
    ex = chat_q.get_exchange(s, exchange_id)
    if ex is None or ex.user_id != actor.user_id:
        raise NotFound("That message does not exist or is not yours.")
    return ex


def _view(row: Feedback) -> FeedbackView:
    return FeedbackView(row.exchange_id, row.rating, row.reason, row.updated_at)


@requires("chat.feedback")
def give_feedback(ctx: AppContext, actor: Principal, exchange_id: int, rating: int,
                  reason: str | None = None) -> FeedbackResult:
    """Rate one answer of the user's own conversations (+1 / -1, an optional reason up to
    :data:`MAX_REASON_CHARS` characters); a second call replaces the first. A thumbs-down with a reason goes to
    review when the policy says so. :class:`NotFound` for someone else's exchange, :class:`InvalidInput` for a
    bad rating, a reason too long, or an exchange without an answer."""
    rating = _rating(rating)
    text = clean_reason(ctx, reason)
    with ctx.db.session() as s:
        ex = _own_answer(s, actor, exchange_id)
        if ex.status not in RATEABLE_STATUSES:
            raise InvalidInput(f"This message has no answer to rate (it is {ex.status}); use Send to review to "
                               "have a reviewer look at it.")
        row, action = feedback_q.set_feedback(s, exchange=ex, user_id=actor.user_id, actor=actor.username,
                                              rating=rating, reason=text, now=ctx.now())
        item_id = None
        if action and rating < 0 and text is not None and to_review(ctx, s):
            item, _ = review_items.request_review(
                s, exchange_id=ex.id, note=f"Thumbs down: {text}", actor=actor.username,
                created_by_id=actor.user_id, severity=FEEDBACK_SEVERITY, reason="feedback",
                due_at=ctx.now() + timedelta(hours=moderation.REVIEW_DEADLINE_HOURS[FEEDBACK_SEVERITY]))
            item_id = item.id
        return FeedbackResult(_view(row), changed=bool(action), review_item_id=item_id)


@requires("chat.feedback")
def clear_feedback(ctx: AppContext, actor: Principal, exchange_id: int) -> bool:
    """Take back the user's rating of one of their answers (audited); False when there was none. A review item it
    opened stays (a reviewer may already be on it)."""
    with ctx.db.session() as s:
        ex = _own_answer(s, actor, exchange_id)
        return feedback_q.clear_feedback(s, exchange_id=ex.id, user_id=actor.user_id, actor=actor.username)


@requires("chat.use")
def my_feedback(ctx: AppContext, actor: Principal, exchange_ids: list[int]) -> dict[int, FeedbackView]:
    """The user's own current ratings of these exchanges, by exchange id."""
    with ctx.db.session(readonly=True) as s:
        return {k: _view(v) for k, v in feedback_q.feedback_by_exchange(s, actor.user_id, exchange_ids).items()}


def rates(s: Session, *, since: datetime | None, until: datetime | None,
          version: str | None = None) -> list[VersionFeedback]:
    """Per-version ratings of the answers given in ``[since, until)`` (no access check: for services that made
    their own), sorted by version name."""
    counts: dict[str, FeedbackCounts] = feedback_q.feedback_counts(s, since=since, until=until, version=version)
    return [VersionFeedback(c.up, c.down, c.answers, model_version=v) for v, c in sorted(counts.items())]


@requires("dashboard.view")
def feedback_rates(ctx: AppContext, actor: Principal, *, since: datetime, until: datetime) -> list[VersionFeedback]:
    """Per-version thumbs up / down on the answers given in ``[since, until)`` (the Latency page)."""
    if until <= since:
        raise InvalidInput("The window's end must be after its start.")
    with ctx.db.session(readonly=True) as s:
        return rates(s, since=since, until=until)


def rate_rows(rows: list[VersionFeedback], versions: tuple[str, ...] = ()) -> list[dict[str, object]]:
    """The rates as a table (the Latency page and reports): one row per version (only ``versions`` when given),
    shares in percent of the rated answers."""
    out: list[dict[str, object]] = []
    for r in rows:
        if versions and r.model_version not in versions:
            continue
        out.append({
            "Model version": r.model_version,
            "Answers": r.answers,
            "Rated": r.rated,
            "Thumbs up (% of rated)": None if r.up_share is None else round(100 * r.up_share, 1),
            "Thumbs down (% of rated)": None if r.down_share is None else round(100 * r.down_share, 1),
        })
    return out
