"""Conversations and their exchanges (one prompt, one answer, its metrics), and storing a whole chat turn."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import safety as safety_q
from db.audit import append_event
from db.review import items as review_items
from db.review.items import ReviewItemRecord
from db.safety import FindingRecord, RawTextRecord
from db.tables import EXCHANGE_STATUSES, Conversation, Exchange
from db.types import utcnow

logger = logging.getLogger(__name__)

# PostgreSQL refuses NUL in text, and C code reading SQLite text stops at one. Replaced, not removed, so finding
# spans computed on the text still point at the same characters.
_NUL = "\x00"
_NUL_STANDIN = "\ufffd"


def storable(text: str) -> str:
    """``text`` as it can be stored in every database: each NUL replaced by U+FFFD (the length is kept)."""
    return text.replace(_NUL, _NUL_STANDIN) if _NUL in text else text


def _storable_or_none(text: str | None) -> str | None:
    return None if text is None else storable(text)


def create_conversation(
    session: Session,
    *,
    user_id: int,
    actor: str,
    title: str = "",
    system_prompt: str | None = None,
) -> Conversation:
    """Start a conversation for ``user_id``; audited (without the system prompt text)."""
    conversation = Conversation(user_id=user_id, title=storable(title), system_prompt=_storable_or_none(system_prompt))
    session.add(conversation)
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=user_id,
        action="chat.conversation",
        object_type="conversation",
        object_id=conversation.id,
        details={"has_system_prompt": bool(system_prompt)},
    )
    return conversation


def get_conversation(session: Session, conversation_id: int) -> Conversation | None:
    """The conversation with this id, or None."""
    return session.get(Conversation, conversation_id)


def list_conversations(session: Session, user_id: int, *, limit: int = 100) -> list[Conversation]:
    """A user's conversations, most recently active first."""
    stmt = (
        select(Conversation)
        .where(Conversation.user_id == user_id)
        .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


def list_exchanges(session: Session, conversation_id: int) -> list[Exchange]:
    """A conversation's exchanges, oldest first (the order to replay them as chat history)."""
    stmt = select(Exchange).where(Exchange.conversation_id == conversation_id).order_by(Exchange.id)
    return list(session.scalars(stmt))


def get_exchange(session: Session, exchange_id: int) -> Exchange | None:
    """The exchange with this id, or None."""
    return session.get(Exchange, exchange_id)


@dataclass(frozen=True)
class ExchangeTimings:
    """vLLM's token counts and latencies for one request, as stored on the exchange and in its audit event.

    Every field is None when the request never reached that point (blocked, failed before the first token).
    """

    prompt_tokens: int | None = None
    output_tokens: int | None = None
    queue_ms: float | None = None
    ttft_ms: float | None = None
    itl_ms: float | None = None
    e2e_ms: float | None = None
    tokens_per_s: float | None = None


@dataclass(frozen=True)
class TurnRecord:
    """One finished chat turn, everything worked out, ready to store in one transaction.

    ``prompt``/``response`` are the texts as they should be stored (redacted where the policy says so);
    the unredacted texts the policy keeps go in ``raw_texts``. ``review`` is set when the turn enters the
    review queue.
    """

    conversation_id: int
    user_id: int
    actor: str
    model_version: str
    prompt: str
    response: str = ""
    status: str = "ok"
    error: str | None = None
    request_id: str | None = None
    model_version_id: int | None = None
    sampling: Mapping[str, Any] = field(default_factory=dict)
    timings: ExchangeTimings = field(default_factory=ExchangeTimings)
    prompt_action: str | None = None
    output_action: str | None = None
    policy_version: int | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    findings: tuple[FindingRecord, ...] = ()
    raw_texts: tuple[RawTextRecord, ...] = ()
    review: ReviewItemRecord | None = None


def store_turn(session: Session, turn: TurnRecord) -> Exchange:
    """Store a turn: the exchange with its timings, its findings, the raw texts kept, its review item.

    Each part writes its own audit event (``chat.exchange``, ``safety.findings``, ``review.item``); the
    ``chat.exchange`` event carries ids, status, model, actions and timings, never the text. Everything
    goes into the caller's session, so the turn commits whole or not at all. NUL characters in the texts are
    stored as U+FFFD (see :func:`storable`).
    """
    if turn.status not in EXCHANGE_STATUSES:
        raise ValueError(f"status must be one of {EXCHANGE_STATUSES}, got {turn.status!r}")
    now = utcnow()
    timings = asdict(turn.timings)
    exchange = Exchange(
        conversation_id=turn.conversation_id,
        user_id=turn.user_id,
        request_id=turn.request_id,
        model_version=turn.model_version,
        model_version_id=turn.model_version_id,
        prompt=storable(turn.prompt),
        response=storable(turn.response),
        sampling=dict(turn.sampling),
        status=turn.status,
        error=_storable_or_none(turn.error),
        created_at=turn.created_at or now,
        finished_at=turn.finished_at or now,
        prompt_action=turn.prompt_action,
        output_action=turn.output_action,
        policy_version=turn.policy_version,
        **timings,
    )
    session.add(exchange)
    conversation = session.get(Conversation, turn.conversation_id)
    if conversation is not None:
        conversation.updated_at = now
    session.flush()
    append_event(
        session,
        actor=turn.actor,
        actor_id=turn.user_id,
        action="chat.exchange",
        object_type="exchange",
        object_id=exchange.id,
        details={
            "conversation_id": turn.conversation_id,
            "request_id": turn.request_id,
            "status": turn.status,
            "error": _storable_or_none(turn.error),
            "model_version": turn.model_version,
            "model_version_id": turn.model_version_id,
            "prompt_action": turn.prompt_action,
            "output_action": turn.output_action,
            "policy_version": turn.policy_version,
            **timings,
        },
    )
    safety_q.add_findings(session, exchange.id, turn.findings, actor=turn.actor, actor_id=turn.user_id)
    for raw in turn.raw_texts:
        safety_q.store_raw_text(session, exchange.id, raw.direction, storable(raw.text))
    if turn.review is not None:
        review_items.create_review_item(
            session,
            exchange_id=exchange.id,
            reason=turn.review.reason,
            direction=turn.review.direction,
            severity=turn.review.severity,
            due_at=turn.review.due_at,
            note=turn.review.note,
            actor=turn.actor,
            # The detectors put it in the queue, not the user: no creator.
            created_by_id=None,
        )
    logger.debug("exchange %s stored request_id=%s status=%s", exchange.id, turn.request_id, turn.status)
    return exchange


def list_recent_exchanges(
    session: Session,
    *,
    since: datetime | None = None,
    model_version: str | None = None,
    limit: int = 1000,
) -> list[Exchange]:
    """Recent exchanges across users, newest first, e.g. for latency dashboards."""
    stmt = select(Exchange).order_by(Exchange.created_at.desc(), Exchange.id.desc()).limit(limit)
    if since is not None:
        stmt = stmt.where(Exchange.created_at >= since)
    if model_version is not None:
        stmt = stmt.where(Exchange.model_version == model_version)
    return list(session.scalars(stmt))
