"""Conversations and their exchanges (one prompt, one answer, its metrics)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.audit import append_event
from db.models import EXCHANGE_STATUSES, Conversation, Exchange
from db.types import utcnow

logger = logging.getLogger(__name__)


def create_conversation(
    session: Session,
    *,
    user_id: int,
    actor: str,
    title: str = "",
    system_prompt: str | None = None,
) -> Conversation:
    """Start a conversation for ``user_id``; audited (without the system prompt text)."""
    conversation = Conversation(user_id=user_id, title=title, system_prompt=system_prompt)
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


def record_exchange(
    session: Session,
    *,
    conversation_id: int,
    user_id: int,
    prompt: str,
    response: str,
    model_version: str,
    actor: str,
    status: str = "ok",
    request_id: str | None = None,
    model_version_id: int | None = None,
    sampling: Mapping[str, Any] | None = None,
    error: str | None = None,
    prompt_tokens: int | None = None,
    output_tokens: int | None = None,
    queue_ms: float | None = None,
    ttft_ms: float | None = None,
    itl_ms: float | None = None,
    e2e_ms: float | None = None,
    tokens_per_s: float | None = None,
    created_at: datetime | None = None,
    finished_at: datetime | None = None,
    prompt_action: str | None = None,
    output_action: str | None = None,
    policy_version: int | None = None,
) -> Exchange:
    """Store one finished exchange with its metrics and write its ``chat.exchange`` audit event.

    ``prompt``/``response`` are the texts as they should be stored (redacted where the policy says so;
    raw text goes through ``db.safety.store_raw_text``). The audit event carries ids, status, model,
    actions and timings, never the text. Add findings and review items in the same session so the
    whole turn commits as one.
    """
    if status not in EXCHANGE_STATUSES:
        raise ValueError(f"status must be one of {EXCHANGE_STATUSES}, got {status!r}")
    now = utcnow()
    exchange = Exchange(
        conversation_id=conversation_id,
        user_id=user_id,
        request_id=request_id,
        model_version=model_version,
        model_version_id=model_version_id,
        prompt=prompt,
        response=response,
        sampling=dict(sampling or {}),
        status=status,
        error=error,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        queue_ms=queue_ms,
        ttft_ms=ttft_ms,
        itl_ms=itl_ms,
        e2e_ms=e2e_ms,
        tokens_per_s=tokens_per_s,
        created_at=created_at or now,
        finished_at=finished_at or now,
        prompt_action=prompt_action,
        output_action=output_action,
        policy_version=policy_version,
    )
    session.add(exchange)
    conversation = session.get(Conversation, conversation_id)
    if conversation is not None:
        conversation.updated_at = now
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=user_id,
        action="chat.exchange",
        object_type="exchange",
        object_id=exchange.id,
        details={
            "conversation_id": conversation_id,
            "request_id": request_id,
            "status": status,
            "error": error,
            "model_version": model_version,
            "model_version_id": model_version_id,
            "prompt_action": prompt_action,
            "output_action": output_action,
            "policy_version": policy_version,
            "prompt_tokens": prompt_tokens,
            "output_tokens": output_tokens,
            "queue_ms": queue_ms,
            "ttft_ms": ttft_ms,
            "itl_ms": itl_ms,
            "e2e_ms": e2e_ms,
            "tokens_per_s": tokens_per_s,
        },
    )
    logger.debug("exchange %s stored request_id=%s status=%s", exchange.id, request_id, status)
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
