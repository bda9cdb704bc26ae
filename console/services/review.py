"""The review queue's use cases: list and filter, claim, look, reveal, decide (one or many), second review, escalations.

Reviewers see redacted text; raw text is revealed per item with a typed reason and audited. Nobody decides on
their own conversation (duty rule ``review.decide``). Decisions are immutable: corrections are new decisions
that supersede the old one, and a share of decided items goes blind to a second reviewer for the quality loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import exists, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from console.services import review_stats
from console.services.access import DutyRule, Principal, ensure_separation, register_duty_rule, requires
from console.services.context import AppContext
from console.services.errors import ConsoleError, InvalidInput, NotFound, StorageUnavailable
from console.services.moderation import FindingView, redact_pii
from console.services.text import optional_text, required_text
from db import audit as audit_q
from db import chat as chat_q
from db import safety as safety_q
from db import users as users_q
from db.review import claims as claims_q
from db.review import decisions as decisions_q
from db.review import items as items_q
from db.review import quality as quality_q
from db.review import queue as queue_q
from db.review import samples as samples_q
from db.review.items import ReviewStateError
from db.review.queue import QueueFilter as QueueFilter  # re-exported: the Review page builds one
from db.review.queue import QueueSummary
from db.tables import AuditEvent, ReviewItem

logger = logging.getLogger(__name__)

# Defaults the lead may wire to settings (read with getattr so a missing setting falls back here).
CLAIM_MINUTES = 15
SECOND_REVIEW_SHARE = 0.10
PAGE_SIZE = 50
CONTEXT_EXCHANGES = 3

CATEGORIES: dict[str, str] = {
    "harassment": "Harassment",
    "hate_or_identity_attack": "Hate or identity attack",
    "sexual": "Sexual",
    "violence_or_threat": "Violence or threat",
    "self_harm": "Self-harm",
    "pii_leak": "PII leak",
    "prompt_injection": "Prompt injection or jailbreak",
    "wrong_answer": "Wrong answer",  # what an operator most often sends a message to review for by hand
    "other": "Other",
}
DECISION_LABELS: dict[str, str] = {
    "violation": "Confirm violation",
    # "No violation", not "False positive": a spot check (nothing was flagged) is decided with the same words as a
    # flagged item, so the wording does not tell a reviewer which one they hold.
    "false_positive": "No violation",
    "escalate": "Escalate to admins",
}
# Spot checks are blind (console.services.spot_checks): items the policy flagged and spot checks show alike, with the
# reason "check", without the policy's actions and without the side that triggered. Blocked items keep theirs: their
# answer is a refusal anyway, and a spot check (an answered, unflagged exchange) never looks like one.
BLIND_REASONS = ("flagged", "spot_check")
BLIND_REASON_SHOWN = "check"


def shown_reason(reason: str) -> str:
    """The reason a person is shown for an item: "check" for every item a flag or a spot check opened."""
    return BLIND_REASON_SHOWN if reason in BLIND_REASONS else reason


class ClaimLost(ConsoleError):
    """Someone else holds this item (or it was decided meanwhile)."""


def _owner_of_item(session: Session, item_id: str) -> int | None:
    item = items_q.get_review_item(session, int(item_id))
    if item is None:
        return None
    exchange = chat_q.get_exchange(session, item.exchange_id)
    return None if exchange is None else exchange.user_id


DECIDE_RULE = register_duty_rule(
    DutyRule("review.decide", "nobody reviews their own conversation", owner_of=_owner_of_item)
)


def _ensure_not_own(ctx: AppContext, actor: Principal, *item_ids: int) -> None:
    # Checked in a read-only unit of work before any write transaction opens: the refusal is audited in its
    # own transaction, which on SQLite would wait forever behind a write lock held by the caller.
    # An item's owner never changes, so checking first leaves no gap.
    with ctx.db.session(readonly=True) as s:
        for item_id in item_ids:
            ensure_separation(ctx, s, actor, DECIDE_RULE.name, str(item_id))


def claim_minutes(ctx: AppContext) -> int:
    return ctx.settings.review_claim_minutes


def second_review_share(ctx: AppContext) -> float:
    return ctx.settings.review_second_share


# --- views ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    item_id: int
    exchange_id: int
    severity: int
    status: str
    reason: str
    direction: str | None
    created_at: datetime
    due_at: datetime | None
    overdue: bool
    assignee: str | None
    claim_active: bool
    labels: str  # the labels whose finding triggered the flag or block, not every label scanned
    max_score: float  # the highest of those findings' scores (0.0 for an item sent by hand without one)
    model_version: str


@dataclass(frozen=True)
class QueuePage:
    rows: tuple[QueueRow, ...]
    summary: QueueSummary
    oldest_open_age: timedelta | None
    mine: int | None  # the item this reviewer holds a live claim on, if any


@dataclass(frozen=True)
class TurnView:
    exchange_id: int
    prompt: str
    response: str


@dataclass(frozen=True)
class DecisionRow:
    id: int
    decision: str
    category: str | None
    note: str | None
    reviewer: str
    supersedes_id: int | None
    created_at: datetime


@dataclass(frozen=True)
class ItemView:
    """One item as a reviewer sees it: redacted texts, findings, versions, actions; never raw text."""

    item_id: int
    exchange_id: int
    status: str
    reason: str
    direction: str | None
    severity: int
    due_at: datetime | None
    overdue: bool
    operator_note: str | None  # what the operator who sent it to review asked a reviewer to look at
    prompt: str
    response: str
    model_version: str
    policy_version: int | None
    prompt_action: str | None
    output_action: str | None
    context: tuple[TurnView, ...]
    findings: tuple[FindingView, ...]
    raw_kept: tuple[str, ...]  # directions whose raw text can be revealed
    decisions: tuple[DecisionRow, ...]  # empty for a blind second review
    sample_id: int | None = None
    system_prompt: str | None = None  # the conversation's system prompt, as stored (redacted)
    text_erased: bool = False  # the exchange's text was erased (retention or a person's erasure): nothing to show


@dataclass(frozen=True)
class DecisionResult:
    decision_id: int
    item_id: int
    sampled: bool


@dataclass(frozen=True)
class QualityReport:
    kappa: float | None
    pairs: int
    open_samples: int
    weekly: tuple[review_stats.PrecisionPoint, ...]
    overall: tuple[review_stats.PrecisionPoint, ...]
    suggestions: tuple[review_stats.ThresholdSuggestion, ...]


def _rows(ctx: AppContext, s: Session, items: Sequence[ReviewItem]) -> tuple[QueueRow, ...]:
    now = ctx.now()
    names: dict[int, str] = {}
    rows = []
    # Only the findings that triggered the flag or block: every toxicity label is stored for every message.
    triggered = queue_q.triggered_findings(s, [item.exchange_id for item in items])
    for item in items:
        findings = triggered[item.exchange_id]
        if item.reason == "spot_check":
            # Nothing triggered: show its highest-scoring finding, as a flagged item shows what flagged it.
            findings = sorted(safety_q.list_findings(s, item.exchange_id), key=lambda f: -f.score)[:1]
        exchange = chat_q.get_exchange(s, item.exchange_id)
        if item.claimed_by_id is not None and item.claimed_by_id not in names:
            user = users_q.get_user(s, item.claimed_by_id)
            names[item.claimed_by_id] = user.username if user else "?"
        live = item.status == "claimed" and item.claim_expires_at is not None and item.claim_expires_at > now
        blind = item.reason in BLIND_REASONS
        rows.append(QueueRow(
            item.id, item.exchange_id, item.severity, item.status, shown_reason(item.reason),
            None if blind else item.direction, item.created_at,
            item.due_at, item.status in ("open", "claimed") and item.due_at is not None and item.due_at < now,
            names.get(item.claimed_by_id) if item.claimed_by_id and item.status != "open" else None, live,
            ", ".join(sorted({f.label for f in findings})), max((f.score for f in findings), default=0.0),
            exchange.model_version if exchange else "",
        ))
    return tuple(rows)


def _redact_note(ctx: AppContext, note: str | None) -> str | None:
    """A note or reason as it may be stored: personal data cut, like every stored text (see moderation)."""
    return redact_pii(ctx, note) if note else note


def _validate(decision: str, category: str | None, note: str | None) -> tuple[str | None, str | None]:
    if decision not in DECISION_LABELS:
        raise InvalidInput(f"Choose a decision: {', '.join(DECISION_LABELS.values())}.")
    note = optional_text(note, "the note", MAX_NOTE_CHARS)
    if decision == "violation":
        if category not in CATEGORIES:
            raise InvalidInput("A confirmed violation needs a category.")
    else:
        category = None
    if decision == "escalate" and note is None:
        raise InvalidInput("Say why you escalate: a note is required.")
    return category, note


# --- queue ----------------------------------------------------------------------------------------------------


@requires("review.work")
def list_queue(ctx: AppContext, actor: Principal, filters: QueueFilter | None = None, *,
               limit: int = PAGE_SIZE, offset: int = 0) -> QueuePage:
    """A page of the queue (never the reviewer's own conversations) with the queue's counters."""
    f = replace(filters or QueueFilter(), exclude_owner_id=actor.user_id)
    now = ctx.now()
    with ctx.db.session(readonly=True) as s:
        rows = _rows(ctx, s, queue_q.list_queue(s, f, limit=limit, offset=offset))
        summary = queue_q.queue_summary(s, now=now)
        mine = queue_q.list_queue(s, QueueFilter(statuses=("claimed",), assignee_id=actor.user_id), limit=5)
    live = [i.id for i in mine if i.claim_expires_at is not None and i.claim_expires_at > now]
    age = now - summary.oldest_open_at if summary.oldest_open_at else None
    return QueuePage(rows, summary, age, live[0] if live else None)


@requires("review.work")
def filter_options(ctx: AppContext, actor: Principal) -> dict[str, list[str]]:
    """Values for the filter widgets: detectors, labels, model versions, and reviewers (usernames)."""
    with ctx.db.session(readonly=True) as s:
        values = queue_q.filter_values(s)
        values["assignee"] = sorted(u.username for u in users_q.list_users(s) if "reviewer" in u.roles)
    return values


@requires("review.work")
def user_id_of(ctx: AppContext, actor: Principal, username: str) -> int | None:
    """The id of a user by name (for the assignee filter), or None."""
    with ctx.db.session(readonly=True) as s:
        user = users_q.get_user_by_username(s, username)
        return None if user is None else user.id


@requires("review.work")
def claim_next(ctx: AppContext, actor: Principal, filters: QueueFilter | None = None) -> int | None:
    """Claim the most urgent claimable item (within ``filters``) that is not the reviewer's own; its id or None."""
    f = replace(filters or QueueFilter(), exclude_owner_id=actor.user_id)
    with ctx.db.session() as s:
        item = claims_q.claim_next(s, actor.user_id, actor=actor.username, filters=f,
                                   claim_minutes=claim_minutes(ctx), now=ctx.now())
    logger.info("claim next: user=%s item=%s", actor.username, item.id if item else None)
    return None if item is None else item.id


@requires("review.work")
def claim(ctx: AppContext, actor: Principal, item_id: int) -> int:
    """Claim a chosen item; raises :class:`ClaimLost` if someone else holds it or it is closed."""
    _ensure_not_own(ctx, actor, item_id)
    with ctx.db.session() as s:
        if not claims_q.claim_item(s, item_id, actor.user_id, actor=actor.username,
                                   claim_minutes=claim_minutes(ctx), now=ctx.now()):
            raise ClaimLost(f"Item {item_id} is taken by someone else or already decided.")
    return item_id


@requires("review.work")
def release(ctx: AppContext, actor: Principal, item_id: int) -> bool:
    """Give a claimed item back to the queue."""
    with ctx.db.session() as s:
        return claims_q.release_item(s, item_id, actor.user_id, actor=actor.username)


def _item_view(ctx: AppContext, s: Session, item: ReviewItem, *, blind: bool = False,
               sample_id: int | None = None) -> ItemView:
    exchange = chat_q.get_exchange(s, item.exchange_id)
    if exchange is None:
        raise NotFound(f"Exchange {item.exchange_id} is gone.")
    conversation = chat_q.get_conversation(s, exchange.conversation_id)
    earlier = [e for e in chat_q.list_exchanges(s, exchange.conversation_id) if e.id < exchange.id]
    context = tuple(TurnView(e.id, e.prompt, e.response) for e in earlier[-CONTEXT_EXCHANGES:])
    masked = item.reason in BLIND_REASONS  # the policy's actions would tell a spot check from a flagged item
    findings = tuple(FindingView(f.direction, f.detector, f.label, f.score, f.start, f.end, "" if masked else f.action)
                     for f in safety_q.list_findings(s, exchange.id))
    raw_kept = safety_q.raw_text_directions(s, exchange.id)
    decisions: tuple[DecisionRow, ...] = ()
    if not blind:
        rows = []
        for d in decisions_q.list_decisions(s, item.id):
            user = users_q.get_user(s, d.reviewer_id)
            rows.append(DecisionRow(d.id, d.decision, d.category, d.note, user.username if user else "?",
                                    d.supersedes_id, d.created_at))
        decisions = tuple(rows)
    now = ctx.now()
    return ItemView(
        item_id=item.id, exchange_id=exchange.id, status=item.status, reason=shown_reason(item.reason),
        direction=None if masked else item.direction, severity=item.severity, due_at=item.due_at,
        overdue=item.status in ("open", "claimed") and item.due_at is not None and item.due_at < now,
        # Only manual items carry a note: the operator's reason for sending the exchange to review.
        operator_note=item.note,
        prompt=exchange.prompt, response=exchange.response, model_version=exchange.model_version,
        policy_version=exchange.policy_version, prompt_action=None if masked else exchange.prompt_action,
        output_action=None if masked else exchange.output_action, context=context, findings=findings, raw_kept=raw_kept,
        decisions=decisions, sample_id=sample_id,
        system_prompt=conversation.system_prompt if conversation is not None else None,
        text_erased=exchange.text_erased_at is not None,
    )


# --- read auditing: who saw which item and whose conversation ---------------------------------------------------
# Showing an item shows another person's conversation (the exchange, earlier turns, the system prompt). The first
# time a person is shown an item after they signed in, that is audited: ``review.view`` about the item and, when
# the conversation is someone else's, ``chat.conversation_view`` about the conversation (ids only, never text).
# Pages show the item again on every click; those repeats are not recorded again until the next sign-in.

VIEW_ACTION = "review.view"
CONVERSATION_VIEW_ACTION = "chat.conversation_view"
SIGN_IN_ACTION = "auth.login"


@dataclass(frozen=True)
class _Shown:
    """What one item view showed, for its audit events."""

    item_id: int
    exchange_id: int
    conversation_id: int
    owner_id: int
    exchange_ids: tuple[int, ...]  # the item's exchange and the earlier turns shown with it
    system_prompt: bool


def _shown(s: Session, view: ItemView) -> _Shown:
    exchange = chat_q.get_exchange(s, view.exchange_id)
    if exchange is None:  # _item_view found it in this same session
        raise NotFound(f"Exchange {view.exchange_id} is gone.")
    return _Shown(view.item_id, exchange.id, exchange.conversation_id, exchange.user_id,
                  (*(t.exchange_id for t in view.context), exchange.id), view.system_prompt is not None)


def _seen_since_sign_in(s: Session, actor: Principal, item_id: int) -> bool:
    """True when ``actor`` was already shown this item since they last signed in (their view is on record)."""
    # By id (the order events were written), not seq: on PostgreSQL an event may still wait to be chained.
    last_view = s.scalar(
        select(AuditEvent.id)
        .where(AuditEvent.object_type == "review_item", AuditEvent.object_id == str(item_id),
               AuditEvent.action == VIEW_ACTION, AuditEvent.actor_id == actor.user_id)
        .order_by(AuditEvent.id.desc())
        .limit(1)
    )
    if last_view is None:
        return False
    signed_in_since = s.scalar(select(exists().where(
        AuditEvent.id > last_view, AuditEvent.action == SIGN_IN_ACTION, AuditEvent.actor_id == actor.user_id)))
    return not signed_in_since


def _record_view(ctx: AppContext, actor: Principal, shown: _Shown, via: str, *, blind: bool = False) -> None:
    """Audit that ``actor`` was shown the item (and whose conversation), in one write transaction.

    If the database cannot take it, the item is not shown (:class:`StorageUnavailable`)."""
    try:
        _append_views(ctx, actor, shown, via, blind)
    except OperationalError as exc:
        logger.error("could not audit a review item view: user=%s item=%s: %s", actor.username, shown.item_id, exc)
        raise StorageUnavailable("The database is busy or full: the item cannot be shown right now, because "
                                 "opening it must be recorded. Try again in a moment.") from exc
    logger.info("review item shown: user=%s item=%s via=%s", actor.username, shown.item_id, via)


def _append_views(ctx: AppContext, actor: Principal, shown: _Shown, via: str, blind: bool) -> None:
    with ctx.db.session() as s:
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action=VIEW_ACTION,
                             object_type="review_item", object_id=shown.item_id,
                             details={"exchange_id": shown.exchange_id, "conversation_id": shown.conversation_id,
                                      "via": via, "blind": blind})
        if shown.owner_id != actor.user_id:
            audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action=CONVERSATION_VIEW_ACTION,
                                 object_type="conversation", object_id=shown.conversation_id,
                                 details={"owner_id": shown.owner_id, "exchange_ids": list(shown.exchange_ids),
                                          "system_prompt": shown.system_prompt, "item_id": shown.item_id,
                                          "via": via})


def _to_record(s: Session, actor: Principal, view: ItemView) -> _Shown | None:
    """What to audit about showing ``view`` to ``actor``; None when their view is on record since they signed in.

    The caller records it (:func:`_record_view`) after its read-only session and before returning the view."""
    return None if _seen_since_sign_in(s, actor, view.item_id) else _shown(s, view)


@requires("review.work")
def item_view(ctx: AppContext, actor: Principal, item_id: int) -> ItemView:
    """The item, its conversation context, findings (redacted) and the operator's note, if they sent it to review.

    Refused for the reviewer's own conversation. The first view since the reviewer signed in is audited
    (``review.view`` and ``chat.conversation_view``).
    """
    with ctx.db.session(readonly=True) as s:
        ensure_separation(ctx, s, actor, DECIDE_RULE.name, str(item_id))
        item = items_q.get_review_item(s, item_id)
        if item is None:
            raise NotFound(f"Review item {item_id} does not exist.")
        view = _item_view(ctx, s, item)
        shown = _to_record(s, actor, view)
    if shown is not None:
        _record_view(ctx, actor, shown, "review")
    return view


@requires("review.reveal_raw")
def reveal_raw(ctx: AppContext, actor: Principal, item_id: int, direction: str, reason: str) -> str | None:
    """The raw text of one side of the item's exchange, for this call only; the reason and the view are audited."""
    reason = required_text(reason, "the reason to reveal the raw text", MAX_NOTE_CHARS)
    if direction not in ("prompt", "output"):
        raise InvalidInput("Choose the prompt or the output.")
    reason = redact_pii(ctx, reason)
    _ensure_not_own(ctx, actor, item_id)
    with ctx.db.session() as s:
        item = items_q.get_review_item(s, item_id)
        if item is None:
            raise NotFound(f"Review item {item_id} does not exist.")
        # The reason goes in its own event beside db.safety's view event, in the same transaction.
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="review.reveal_reason",
                             object_type="review_item", object_id=item_id,
                             details={"exchange_id": item.exchange_id, "direction": direction, "reason": reason})
        text = safety_q.reveal_raw_text(s, item.exchange_id, direction, actor=actor.username,
                                        actor_id=actor.user_id)
    logger.info("raw text revealed: user=%s item=%s direction=%s", actor.username, item_id, direction)
    return text


# --- decisions ------------------------------------------------------------------------------------------------


def _decide_one(ctx: AppContext, s: Session, actor: Principal, item_id: int, decision: str, category: str | None,
                note: str | None, share: float) -> DecisionResult:
    # The row is locked (and re-read) first, so two reviewers deciding one item cannot both succeed.
    item = decisions_q.lock_items(s, [item_id]).get(item_id)
    if item is None:
        raise NotFound(f"Review item {item_id} does not exist.")
    if item.status not in ("open", "claimed"):
        raise ClaimLost(f"Item {item_id} is already {item.status}.")
    held_by_other = (item.status == "claimed" and item.claimed_by_id != actor.user_id
                     and item.claim_expires_at is not None and item.claim_expires_at > ctx.now())
    if held_by_other:
        raise ClaimLost(f"Item {item_id} is claimed by another reviewer.")
    try:
        row = decisions_q.record_decision(s, item_id=item_id, reviewer_id=actor.user_id, decision=decision,
                                          actor=actor.username, category=category, note=note, now=ctx.now())
    except ReviewStateError as exc:
        raise ClaimLost(str(exc)) from exc
    sampled = decision != "escalate" and samples_q.in_sample(item_id, share)
    if sampled:
        samples_q.create_sample(s, row, actor=actor.username)
    return DecisionResult(row.id, item_id, sampled)


@requires("review.work")
def decide(ctx: AppContext, actor: Principal, item_id: int, decision: str, *, category: str | None = None,
           note: str | None = None, share: float | None = None) -> DecisionResult:
    """Decide an open item or one the reviewer holds; a share of decided items is drawn for a blind second review."""
    category, note = _validate(decision, category, note)
    note = _redact_note(ctx, note)
    _ensure_not_own(ctx, actor, item_id)
    with ctx.db.session() as s:
        return _decide_one(ctx, s, actor, item_id, decision, category, note,
                           second_review_share(ctx) if share is None else share)


@requires("review.work")
def decide_bulk(ctx: AppContext, actor: Principal, item_ids: Sequence[int], decision: str, *,
                category: str | None = None, note: str | None = None,
                share: float | None = None) -> list[DecisionResult]:
    """Decide several items alike, all or none (one transaction, one decision and audit event per item)."""
    if not item_ids:
        raise InvalidInput("Select at least one item.")
    category, note = _validate(decision, category, note)
    note = _redact_note(ctx, note)
    share = second_review_share(ctx) if share is None else share
    _ensure_not_own(ctx, actor, *item_ids)
    with ctx.db.session() as s:
        # Every row locked up front, in ascending id order (as claims take them): no deadlock with a claim.
        decisions_q.lock_items(s, item_ids)
        return [_decide_one(ctx, s, actor, i, decision, category, note, share) for i in dict.fromkeys(item_ids)]


@requires("review.work")
def correct(ctx: AppContext, actor: Principal, item_id: int, decision: str, *, category: str | None = None,
            note: str | None = None) -> int:
    """Correct a decided item with a new decision that supersedes (never edits) the one in force; note required."""
    category, note = _validate(decision, category, note)
    note = _redact_note(ctx, note)
    if note is None:
        raise InvalidInput("Say why you correct the decision: a note is required.")
    _ensure_not_own(ctx, actor, item_id)
    with ctx.db.session() as s:
        item = items_q.get_review_item(s, item_id)
        if item is None or item.status != "decided":
            raise InvalidInput("Only decided items can be corrected.")
        try:
            return decisions_q.record_decision(s, item_id=item_id, reviewer_id=actor.user_id, decision=decision,
                                               actor=actor.username, category=category, note=note,
                                               correction=True).id
        except ReviewStateError as exc:
            raise ClaimLost(str(exc)) from exc


# --- second review (blind) ------------------------------------------------------------------------------------


@requires("review.work")
def next_second_review(ctx: AppContext, actor: Principal) -> ItemView | None:
    """The next sampled item for this reviewer, without the first decision (blind); None if none waits."""
    with ctx.db.session(readonly=True) as s:
        sample = samples_q.next_sample(s, actor.user_id)
        if sample is None:
            return None
        item = items_q.get_review_item(s, sample.item_id)
        assert item is not None  # a sample always points at an item (foreign key)
        view = _item_view(ctx, s, item, blind=True, sample_id=sample.id)
        shown = _to_record(s, actor, view)
    if shown is not None:
        _record_view(ctx, actor, shown, "second_review", blind=True)
    return view


@requires("review.work")
def decide_second_review(ctx: AppContext, actor: Principal, sample_id: int, decision: str, *,
                         category: str | None = None) -> int:
    """Record the blind second opinion (violation / false positive / escalate); it feeds agreement statistics."""
    category, _ = _validate(decision, category, "second opinion")
    with ctx.db.session(readonly=True) as s:
        sample = samples_q.get_sample(s, sample_id)
        if sample is None:
            raise NotFound(f"Sample {sample_id} does not exist.")
    _ensure_not_own(ctx, actor, sample.item_id)
    with ctx.db.session() as s:
        try:
            return samples_q.record_sample_decision(s, sample_id=sample_id, reviewer_id=actor.user_id,
                                                    decision=decision, actor=actor.username,
                                                    category=category).id
        except ReviewStateError as exc:
            raise ClaimLost(str(exc)) from exc


@requires("review.work")
def quality_report(ctx: AppContext, actor: Principal, *, weeks: int = 12) -> QualityReport:
    """Agreement (Cohen's kappa), precision per detector/label by week, and threshold suggestions."""
    with ctx.db.session(readonly=True) as s:
        pairs = quality_q.agreement_pairs(s)
        rows = quality_q.decided_findings(s, since=ctx.now() - timedelta(weeks=weeks))
        waiting = samples_q.open_sample_count(s)
    outcomes = [review_stats.Outcome(i, at, det, lab, score, dec == "violation") for i, at, det, lab, score, dec in rows]
    return QualityReport(review_stats.cohen_kappa(pairs), len(pairs), waiting,
                         tuple(review_stats.precision_by_week(outcomes)),
                         tuple(review_stats.precision_overall(outcomes)),
                         tuple(review_stats.suggest_thresholds(outcomes)))


# --- escalations (admins) -------------------------------------------------------------------------------------

MAX_NOTE_CHARS = 2000


def _escalator_of_item(session: Session, item_id: str) -> int | None:
    # The escalation in force is the item's newest decision that is not a blind second opinion.
    decision = decisions_q.effective_decision(session, int(item_id))
    return decision.reviewer_id if decision is not None and decision.decision == "escalate" else None


ESCALATION_RULE = register_duty_rule(
    DutyRule("review.decide_escalation", "the person who escalated an item never decides it",
             owner_of=_escalator_of_item)
)


@requires("review.escalations")
def list_escalations(ctx: AppContext, actor: Principal, *, limit: int = PAGE_SIZE) -> tuple[QueueRow, ...]:
    """Escalated items, most severe and oldest first (admins' own conversations excluded)."""
    with ctx.db.session(readonly=True) as s:
        items = queue_q.list_queue(s, QueueFilter(statuses=("escalated",), exclude_owner_id=actor.user_id),
                                   limit=limit)
        return _rows(ctx, s, items)


@requires("review.escalations")
def escalation_view(ctx: AppContext, actor: Principal, item_id: int) -> ItemView:
    """An escalated item with its decisions so far (the escalation note included) and the operator's note.

    The first view since the admin signed in is audited (``review.view`` and ``chat.conversation_view``)."""
    with ctx.db.session(readonly=True) as s:
        ensure_separation(ctx, s, actor, DECIDE_RULE.name, str(item_id))
        item = items_q.get_review_item(s, item_id)
        if item is None or item.status != "escalated":
            raise NotFound(f"Item {item_id} is not escalated.")
        view = _item_view(ctx, s, item)
        shown = _to_record(s, actor, view)
    if shown is not None:
        _record_view(ctx, actor, shown, "escalations")
    return view


@requires("review.escalations")
def decide_escalation(ctx: AppContext, actor: Principal, item_id: int, decision: str, *,
                      category: str | None = None, note: str | None = None) -> int:
    """An admin's final decision on an escalated item (violation or false positive); supersedes the escalation.

    Refused (duty rule ``review.decide_escalation``) to the person who escalated it, as to the conversation's owner.
    """
    if decision == "escalate":
        raise InvalidInput("An escalated item needs a final decision: violation or no violation.")
    category, note = _validate(decision, category, note)
    note = _redact_note(ctx, note)
    _ensure_not_own(ctx, actor, item_id)
    with ctx.db.session(readonly=True) as s:  # before the write transaction, as in _ensure_not_own
        ensure_separation(ctx, s, actor, ESCALATION_RULE.name, str(item_id))
    with ctx.db.session() as s:
        item = items_q.get_review_item(s, item_id)
        if item is None or item.status != "escalated":
            raise ClaimLost(f"Item {item_id} is not escalated (any more).")
        try:
            return decisions_q.record_decision(s, item_id=item_id, reviewer_id=actor.user_id, decision=decision,
                                               actor=actor.username, category=category, note=note,
                                               second_review=True).id
        except ReviewStateError as exc:
            raise ClaimLost(str(exc)) from exc
