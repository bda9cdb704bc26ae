"""Conversations and their exchanges (one prompt, one answer, its metrics): a prompt stored as a pending exchange
before the model sees it and completed when the answer ends, a turn stored whole, interrupted ones closed."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import latency as latency_q
from db import safety as safety_q
from db.audit import append_event
from db.review import items as review_items
from db.review.items import ReviewItemRecord
from db.safety import FindingRecord, RawTextRecord
from db.tables import Conversation, Exchange
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


# An exchange is stored when its prompt is submitted (``pending``, before the model sees it) and completed when the
# answer ends; ``interrupted`` marks one still pending when its console process stopped (see mark_interrupted).
FINISHED_STATUSES = ("ok", "error", "aborted", "blocked")
INTERRUPTED_ERROR = "The console stopped while the model was answering."


def process_owner() -> str:
    """``<host>:<pid>`` of this process: stored with each pending exchange, so that a console starting up closes
    only what a process that is gone left pending (see :func:`owner_gone`)."""
    return f"{socket.gethostname()[:240]}:{os.getpid()}"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # it runs, as another user (or the check is not possible: assume it runs)
        return True
    return True


def owner_gone(owner: str | None, created_at: datetime, now: datetime, other_hosts_after: timedelta | None) -> bool:
    """Whether the process that stored a pending exchange can no longer complete it.

    No owner (stored before 0018): gone. On this host: gone when that process id no longer runs, or is this
    process's own (a restarted container gets the same pid; this process's exchanges are never older than its
    start, which the caller checks). On another host, which cannot be asked: gone once older than
    ``other_hosts_after`` (None: never).
    """
    if not owner:
        return True
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname()[:240]:
        return other_hosts_after is not None and created_at < now - other_hosts_after
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    return pid == os.getpid() or pid <= 0 or not _pid_running(pid)


class ExchangeNotPending(RuntimeError):
    """The exchange to complete is not pending: already completed, or marked interrupted meanwhile."""


@dataclass(frozen=True)
class PendingRecord:
    """A submitted prompt, everything worked out, ready to store before the model is asked.

    ``prompt`` is the text as it should be stored (redacted where the policy says so); the unredacted text the
    policy keeps goes in ``raw_texts``; ``findings`` are the prompt's (and the system prompt's). ``synthetic``
    marks load-test traffic.
    """

    conversation_id: int
    user_id: int
    actor: str
    model_version: str
    prompt: str
    request_id: str | None = None
    model_version_id: int | None = None
    sampling: Mapping[str, Any] = field(default_factory=dict)
    prompt_action: str | None = None
    policy_version: int | None = None
    created_at: datetime | None = None
    findings: tuple[FindingRecord, ...] = ()
    raw_texts: tuple[RawTextRecord, ...] = ()
    synthetic: bool = False


@dataclass(frozen=True)
class TurnRecord(PendingRecord):
    """One finished chat turn, everything worked out, ready to store in one transaction.

    ``prompt``/``response`` are the texts as they should be stored (redacted where the policy says so);
    the unredacted texts the policy keeps go in ``raw_texts``. ``review`` is set when the turn enters the
    review queue. Given to :func:`complete_exchange`, ``findings`` and ``raw_texts`` are only those not stored
    with the pending exchange (the answer's). ``engine_server`` (the vLLM server that answered, server backends)
    is stored on the exchange and named in its ``chat.exchange`` event.
    """

    response: str = ""
    status: str = "ok"
    error: str | None = None
    timings: ExchangeTimings = field(default_factory=ExchangeTimings)
    output_action: str | None = None
    finished_at: datetime | None = None
    review: ReviewItemRecord | None = None
    # The console's own time around the engine's, in ms (scan_before_ms, scan_after_ms, store_ms), for the Latency page.
    overhead: Mapping[str, float] = field(default_factory=dict)
    # The base URL of the vLLM server that answered (``GenerationResult.server``); None in-process or unanswered.
    engine_server: str | None = None


def _check_finished(status: str) -> None:
    if status not in FINISHED_STATUSES:
        raise ValueError(f"status must be one of {FINISHED_STATUSES}, got {status!r}")


def _touch(session: Session, conversation_id: int, now: datetime) -> None:
    conversation = session.get(Conversation, conversation_id)
    if conversation is not None:
        conversation.updated_at = now


def _store_side(session: Session, exchange_id: int, record: PendingRecord) -> None:
    """The findings (one ``safety.findings`` event) and the raw texts of one record."""
    safety_q.add_findings(session, exchange_id, record.findings, actor=record.actor, actor_id=record.user_id)
    for raw in record.raw_texts:
        safety_q.store_raw_text(session, exchange_id, raw.direction, storable(raw.text))


def _finish(session: Session, exchange: Exchange, turn: TurnRecord) -> None:
    """The answer's part: the ``chat.exchange`` event, findings, raw texts and review item (exchange flushed)."""
    timings = asdict(turn.timings)
    append_event(
        session,
        actor=turn.actor,
        actor_id=turn.user_id,
        action="chat.exchange",
        object_type="exchange",
        object_id=exchange.id,
        details={
            "conversation_id": exchange.conversation_id,
            "request_id": exchange.request_id,
            "status": turn.status,
            "error": _storable_or_none(turn.error),
            "model_version": exchange.model_version,
            "model_version_id": exchange.model_version_id,
            "prompt_action": exchange.prompt_action,
            "output_action": turn.output_action,
            "policy_version": exchange.policy_version,
            "synthetic": exchange.synthetic,
            **timings,
            **({"engine_server": turn.engine_server} if turn.engine_server else {}),
        },
    )
    _store_side(session, exchange.id, turn)
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
    # The latency buckets, in the same transaction (after the audit head's lock, as every writer takes it).
    latency_q.record_exchange_row(session, exchange, overhead=turn.overhead)


def store_turn(session: Session, turn: TurnRecord) -> Exchange:
    """Store a whole turn at once: the exchange with its timings, its findings, the raw texts kept, its review item.

    For turns that never reach the model (a blocked prompt); a turn the model answers goes through
    :func:`begin_exchange` and :func:`complete_exchange`. Each part writes its own audit event (``chat.exchange``,
    ``safety.findings``, ``review.item``); the ``chat.exchange`` event carries ids, status, model, actions and
    timings, never the text. Everything goes into the caller's session, so the turn commits whole or not at all.
    NUL characters in the texts are stored as U+FFFD (see :func:`storable`).
    """
    _check_finished(turn.status)
    now = utcnow()
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
        synthetic=turn.synthetic,
        engine_server=turn.engine_server,
        **asdict(turn.timings),
    )
    session.add(exchange)
    _touch(session, turn.conversation_id, now)
    session.flush()
    _finish(session, exchange, turn)
    logger.debug("exchange %s stored request_id=%s status=%s", exchange.id, turn.request_id, turn.status)
    return exchange


def begin_exchange(session: Session, record: PendingRecord) -> Exchange:
    """Store a submitted prompt as a ``pending`` exchange, before the model is asked.

    The exchange row (stored prompt, model version, sampling, time), the prompt's findings and its raw text if
    kept, and a ``chat.prompt`` audit event (ids, model version, prompt action; never the text) go into the
    caller's session: commit it before the engine sees the prompt. :func:`complete_exchange` finishes it.
    """
    now = utcnow()
    exchange = Exchange(
        conversation_id=record.conversation_id,
        user_id=record.user_id,
        request_id=record.request_id,
        model_version=record.model_version,
        model_version_id=record.model_version_id,
        prompt=storable(record.prompt),
        response="",
        sampling=dict(record.sampling),
        status="pending",
        owner=process_owner(),
        created_at=record.created_at or now,
        prompt_action=record.prompt_action,
        policy_version=record.policy_version,
        synthetic=record.synthetic,
    )
    session.add(exchange)
    _touch(session, record.conversation_id, now)
    session.flush()
    append_event(
        session,
        actor=record.actor,
        actor_id=record.user_id,
        action="chat.prompt",
        object_type="exchange",
        object_id=exchange.id,
        details={
            "conversation_id": record.conversation_id,
            "request_id": record.request_id,
            "model_version": record.model_version,
            "model_version_id": record.model_version_id,
            "prompt_action": record.prompt_action,
            "policy_version": record.policy_version,
            "synthetic": record.synthetic,
        },
    )
    _store_side(session, exchange.id, record)
    logger.debug("exchange %s pending request_id=%s", exchange.id, record.request_id)
    return exchange


def complete_exchange(session: Session, exchange_id: int, turn: TurnRecord) -> Exchange:
    """Complete a pending exchange with its answer: response, status, timings, the answer's findings and raw text,
    its review item, and the ``chat.exchange`` audit event, all in the caller's session.

    ``turn`` describes the same exchange (its conversation and user must match); its prompt-side fields are
    ignored, except ``model_version``/``model_version_id`` (the version that actually answered). Raises
    :class:`ExchangeNotPending` if the exchange is not pending (completed already, or marked interrupted).
    """
    _check_finished(turn.status)
    exchange = session.get(Exchange, exchange_id, with_for_update=True, populate_existing=True)
    if exchange is None:
        raise ExchangeNotPending(f"exchange {exchange_id} does not exist")
    if exchange.status != "pending":
        raise ExchangeNotPending(f"exchange {exchange_id} is {exchange.status}, not pending")
    if (exchange.conversation_id, exchange.user_id) != (turn.conversation_id, turn.user_id):
        raise ValueError(f"the record is not for exchange {exchange_id}'s conversation and user")
    now = utcnow()
    if exchange.text_erased_at is not None:
        # The person's content was erased while the model answered: the answer's text must not come back.
        turn = replace(turn, response="", raw_texts=())
    exchange.response = storable(turn.response)
    exchange.status = turn.status
    exchange.error = _storable_or_none(turn.error)
    exchange.finished_at = turn.finished_at or now
    exchange.output_action = turn.output_action
    if turn.model_version and turn.model_version != "none":
        exchange.model_version = turn.model_version
    if turn.model_version_id is not None:
        exchange.model_version_id = turn.model_version_id
    for name, value in asdict(turn.timings).items():
        setattr(exchange, name, value)
    exchange.engine_server = turn.engine_server
    _touch(session, exchange.conversation_id, now)
    session.flush()
    _finish(session, exchange, turn)
    logger.debug("exchange %s completed request_id=%s status=%s", exchange.id, exchange.request_id, turn.status)
    return exchange


def mark_interrupted(session: Session, before: datetime, *, actor: str = "system",
                     other_hosts_after: timedelta | None = None) -> list[int]:
    """Mark every exchange still ``pending`` that was submitted before ``before`` by a process that is gone
    (:func:`owner_gone`) as ``interrupted``.

    Called when a console process starts, with its start time: what another console process on the same database
    is still answering stays pending (it completes it); what a stopped process left is closed. Audited as one
    ``chat.interrupted`` event listing the ids (none is written when there are none). Returns the ids, ascending.
    """
    stmt = (
        select(Exchange)
        .where(Exchange.status == "pending", Exchange.created_at < before)
        .order_by(Exchange.id)
        .with_for_update()
    )
    now = utcnow()
    candidates = list(session.scalars(stmt))
    exchanges = [e for e in candidates if owner_gone(e.owner, _aware(e.created_at), now, other_hosts_after)]
    live = len(candidates) - len(exchanges)
    if live:
        logger.info("%d exchange(s) pending from before this start belong to a console still running: kept", live)
    if not exchanges:
        return []
    for exchange in exchanges:
        exchange.status = "interrupted"
        exchange.error = INTERRUPTED_ERROR
        exchange.finished_at = now
    session.flush()
    ids = [e.id for e in exchanges]
    append_event(
        session,
        actor=actor,
        action="chat.interrupted",
        object_type="exchange",
        details={"exchange_ids": ids, "before": before.isoformat(), "count": len(ids),
                 "kept_pending_of_live_consoles": live},
    )
    for exchange in exchanges:
        latency_q.record_exchange_row(session, exchange)
    logger.warning("marked %d exchange(s) interrupted: %s", len(ids), ids)
    return ids


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


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
