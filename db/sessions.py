"""Browser sessions: the server-side records behind the console's session cookie (see ``BrowserSession``).

Only SHA-256 digests of the cookie's token and of the one-time sign-in ticket are stored: someone who reads the
database (or a backup of it) cannot take over a session. Every start and end is audited
(``auth.session_start``, ``auth.session_end`` with its reason) in the caller's transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.audit import append_event
from db.tables import BrowserSession, User

# Why a session ended (``revoked_reason``).
LOGOUT = "logout"
IDLE = "idle"
EXPIRED = "expired"
PASSWORD_RESET = "password reset"
DISABLED = "disabled"
ROLES_CHANGED = "roles changed"
ENDED_BY_ADMIN = "ended by an admin"
ACCOUNT_GONE = "account removed"

MAX_CLIENT_CHARS = 80
MAX_USER_AGENT_CHARS = 200


def digest(secret: str) -> str:
    """The SHA-256 (hex) of a token or ticket: what the table stores instead of the secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _bounded(value: str | None, limit: int) -> str | None:
    if not value:
        return None
    cleaned = "".join(ch for ch in value if ch.isprintable())
    return cleaned[:limit] or None


def start(
    session: Session,
    user: User,
    *,
    ticket_hash: str,
    ticket_expires_at: datetime,
    expires_at: datetime,
    now: datetime,
    method: str = "password",
    client: str | None = None,
    user_agent: str | None = None,
) -> BrowserSession:
    """Record a new session of ``user`` (its cookie is made when the ticket is redeemed); audited."""
    row = BrowserSession(
        user_id=user.id, user_epoch=user.session_epoch, method=method, ticket_hash=ticket_hash,
        ticket_expires_at=ticket_expires_at, created_at=now, last_seen_at=now, expires_at=expires_at,
        client=_bounded(client, MAX_CLIENT_CHARS), user_agent=_bounded(user_agent, MAX_USER_AGENT_CHARS),
    )
    session.add(row)
    session.flush()
    append_event(session, actor=user.username, actor_id=user.id, action="auth.session_start",
                 object_type="browser_session", object_id=str(row.id),
                 details={"method": method, "client": row.client, "expires_at": expires_at})
    return row


def redeem_ticket(session: Session, ticket_hash: str, token_hash: str, now: datetime) -> BrowserSession | None:
    """Exchange a one-time ticket for the session's token: the ticket is forgotten (it works once), the token's
    digest stored. None when no live session has this ticket, or it is past its short life."""
    row = session.scalars(
        select(BrowserSession).where(BrowserSession.ticket_hash == ticket_hash).with_for_update()
    ).one_or_none()
    if row is None:
        return None
    row.ticket_hash = None  # single use, even when it came too late
    expires = row.ticket_expires_at
    row.ticket_expires_at = None
    if row.revoked_at is not None or row.token_hash is not None or expires is None or expires < now:
        session.flush()
        return None
    row.token_hash = token_hash
    session.flush()
    return row


def has_ticket(session: Session, ticket_hash: str) -> bool:
    """Whether any session holds this one-time ticket's digest (a read: an unknown ticket needs no write)."""
    return session.scalars(
        select(BrowserSession.id).where(BrowserSession.ticket_hash == ticket_hash)
    ).first() is not None


def get(session: Session, session_id: int) -> BrowserSession | None:
    return session.get(BrowserSession, session_id)


def get_by_token(session: Session, token_hash: str) -> BrowserSession | None:
    """The session whose cookie token has this digest, or None."""
    return session.scalars(select(BrowserSession).where(BrowserSession.token_hash == token_hash)).one_or_none()


def why_ended(row: BrowserSession, user: User | None, now: datetime, idle: timedelta) -> str | None:
    """Why this session cannot be used at ``now`` (a ``revoked_reason``), or None when it is valid."""
    if row.revoked_at is not None:
        return row.revoked_reason or ENDED_BY_ADMIN
    if user is None:
        return ACCOUNT_GONE
    if user.disabled:
        return DISABLED
    if user.session_epoch != row.user_epoch:
        return PASSWORD_RESET
    if now >= row.expires_at:
        return EXPIRED
    if now - row.last_seen_at > idle:
        return IDLE
    return None


def touch(session: Session, row: BrowserSession, now: datetime, *, every: timedelta = timedelta(minutes=1)) -> bool:
    """Move ``last_seen_at`` to ``now`` if it is older than ``every``; True if it was written."""
    if now - row.last_seen_at < every:
        return False
    row.last_seen_at = now
    session.flush()
    return True


def end(session: Session, row: BrowserSession, reason: str, now: datetime, *, actor: str,
        actor_id: int | None) -> bool:
    """End a session (no-op if it already ended); audited as ``auth.session_end`` with ``reason``."""
    if row.revoked_at is not None:
        return False
    row.revoked_at = now
    row.revoked_reason = reason[:40]
    row.ticket_hash = None
    row.ticket_expires_at = None
    session.flush()
    append_event(session, actor=actor, actor_id=actor_id, action="auth.session_end",
                 object_type="browser_session", object_id=str(row.id),
                 details={"reason": reason, "user_id": row.user_id})
    return True


def end_user_sessions(session: Session, user_id: int, reason: str, now: datetime, *, actor: str,
                      actor_id: int | None) -> list[int]:
    """End every open session of a user; returns the ids ended."""
    rows = session.scalars(
        select(BrowserSession).where(BrowserSession.user_id == user_id, BrowserSession.revoked_at.is_(None))
        .order_by(BrowserSession.id).with_for_update()
    ).all()
    return [row.id for row in rows if end(session, row, reason, now, actor=actor, actor_id=actor_id)]


def end_stale(session: Session, now: datetime, idle: timedelta) -> list[int]:
    """Close (and audit) the open sessions that expired or went idle without anyone presenting them again."""
    rows = session.scalars(
        select(BrowserSession).where(
            BrowserSession.revoked_at.is_(None),
            (BrowserSession.expires_at <= now) | (BrowserSession.last_seen_at < now - idle),
        ).order_by(BrowserSession.id).with_for_update()
    ).all()
    ended = []
    for row in rows:
        reason = EXPIRED if now >= row.expires_at else IDLE
        if end(session, row, reason, now, actor="system", actor_id=None):
            ended.append(row.id)
    return ended


def list_sessions(session: Session, user_id: int | None = None, *, open_only: bool = False,
                  limit: int = 200) -> Sequence[BrowserSession]:
    """Sessions, newest first (of one user if ``user_id``; only those not ended if ``open_only``)."""
    stmt = select(BrowserSession).order_by(BrowserSession.id.desc()).limit(limit)
    if user_id is not None:
        stmt = stmt.where(BrowserSession.user_id == user_id)
    if open_only:
        stmt = stmt.where(BrowserSession.revoked_at.is_(None))
    return session.scalars(stmt).all()
