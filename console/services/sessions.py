"""Signed-in browser sessions that survive a reload, a new tab and a deep link.

At sign-in the console records a server-side session (``db.sessions``) and hands the page a one-time ticket
(valid :data:`TICKET_SECONDS`, stored hashed). The browser exchanges it at ``/auth/session`` (console/server.py)
for an HttpOnly cookie holding a random 32-byte token, of which the table keeps only the SHA-256. Each page run
checks the session (not ended, not past its absolute life, not idle, the account enabled and its session epoch
unchanged) and restores the signed-in user from it. Sessions end at sign-out, idle or absolute timeout, password
reset, disabling, a role change, or by an admin on the Users page; every start and end is audited.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import NotFound, SessionEnded
from db import sessions as sessions_q
from db import users as users_q
from db.tables import BrowserSession

# The cookie's name: with the __Host- prefix a browser keeps it only if it is Secure, for Path=/ and without a
# Domain, so no sibling subdomain (or a plain-http man in the middle) can plant or overwrite it. Where the console
# cannot mark it Secure (plain http to a host other than this machine, LLM_CONSOLE_COOKIE_SECURE=false) it is set
# under the plain name instead: a browser would refuse a __Host- cookie there.
COOKIE_NAME = "__Host-llm_console_session"
PLAIN_COOKIE_NAME = "llm_console_session"
COOKIE_NAMES = (COOKIE_NAME, PLAIN_COOKIE_NAME)
TICKET_SECONDS = 60
TOKEN_BYTES = 32
MAX_SECRET_CHARS = 100  # a token or ticket longer than this is not ours: refused before hashing
TOUCH_EVERY = timedelta(minutes=1)  # last_seen_at is written at most this often


@dataclass(frozen=True)
class SessionView:
    """A session as the Users page lists it."""

    id: int
    user_id: int
    method: str
    started: datetime
    last_seen: datetime
    expires: datetime
    ended: datetime | None
    end_reason: str | None
    client: str | None
    user_agent: str | None
    cookie_issued: bool

    @property
    def active(self) -> bool:
        return self.ended is None


@dataclass(frozen=True)
class Started:
    """What sign-in gets: the session's id (kept in the browser session) and the one-time ticket for the cookie."""

    session_id: int
    ticket: str


def cookie_name(secure: bool) -> str:
    """The session cookie's name when it is (or is not) marked Secure."""
    return COOKIE_NAME if secure else PLAIN_COOKIE_NAME


def cookie_token(cookies: Mapping[str, str]) -> str | None:
    """The session token among a request's cookies (the __Host- one first), or None."""
    for name in COOKIE_NAMES:
        value = cookies.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _idle(ctx: AppContext) -> timedelta:
    return timedelta(minutes=ctx.settings.session_idle_minutes)


def message(ctx: AppContext, reason: str) -> str:
    """What the person is told when their session ended for ``reason`` (a ``db.sessions`` reason)."""
    return {
        sessions_q.LOGOUT: "You are signed out.",
        sessions_q.IDLE: f"You were signed out after {ctx.settings.session_idle_minutes} minutes without activity.",
        sessions_q.EXPIRED: f"Your sign-in lasted its {ctx.settings.session_max_hours} hours. Please sign in again.",
        sessions_q.PASSWORD_RESET: "Your password was reset, which ends every open session. Please sign in again.",
        sessions_q.DISABLED: "Your account is no longer active. Please sign in again.",
        sessions_q.ACCOUNT_GONE: "Your account is no longer active. Please sign in again.",
        sessions_q.ROLES_CHANGED: "Your roles were changed, which ends your open sessions. Please sign in again.",
        sessions_q.ENDED_BY_ADMIN: "An admin ended your session. Please sign in again.",
    }.get(reason, "Your session has ended. Please sign in again.")


def start(ctx: AppContext, principal: Principal, *, method: str = "password", client: str | None = None,
          user_agent: str | None = None) -> Started:
    """Record the session of a user who just signed in (audited ``auth.session_start``); return its ticket.

    Also closes (and audits) the sessions that expired or went idle since nobody presented them."""
    now = ctx.now()
    ticket = secrets.token_urlsafe(TOKEN_BYTES)
    with ctx.db.session() as s:
        sessions_q.end_stale(s, now, _idle(ctx))
        user = users_q.get_user(s, principal.user_id)
        if user is None or user.disabled:
            raise SessionEnded(message(ctx, sessions_q.DISABLED))
        row = sessions_q.start(
            s, user, ticket_hash=sessions_q.digest(ticket), ticket_expires_at=now + timedelta(seconds=TICKET_SECONDS),
            expires_at=now + timedelta(hours=ctx.settings.session_max_hours), now=now, method=method,
            client=client, user_agent=user_agent)
        return Started(row.id, ticket)


def redeem(ctx: AppContext, ticket: str) -> tuple[str, datetime] | None:
    """Exchange a one-time ticket for a new cookie token; returns (token, session expiry) or None when the ticket
    is unknown, used, older than :data:`TICKET_SECONDS` or its session ended. Only the token's digest is stored."""
    if not ticket or len(ticket) > MAX_SECRET_CHARS:
        return None
    ticket_hash = sessions_q.digest(ticket)
    # Looked up in a read session first: anyone can post a ticket, and an unknown one must not take the write
    # lock (on SQLite every sign-in and answer would queue behind a stream of them).
    with ctx.db.session(readonly=True) as s:
        if not sessions_q.has_ticket(s, ticket_hash):
            return None
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with ctx.db.session() as s:
        row = sessions_q.redeem_ticket(s, ticket_hash, sessions_q.digest(token), ctx.now())
        if row is None:
            return None
        return token, row.expires_at


def _validate(ctx: AppContext, row: BrowserSession | None) -> Principal:
    """The principal of a valid session (touching ``last_seen_at``), or :class:`SessionEnded` (the session is
    ended and audited the first time it is found invalid)."""
    if row is None:
        raise SessionEnded("Your sign-in is no longer valid. Please sign in again.")
    now = ctx.now()
    with ctx.db.session(readonly=True) as s:
        fresh = sessions_q.get(s, row.id)
        user = users_q.get_user(s, row.user_id)
        reason = sessions_q.why_ended(fresh, user, now, _idle(ctx)) if fresh is not None else sessions_q.ACCOUNT_GONE
        stale = fresh is not None and now - fresh.last_seen_at >= TOUCH_EVERY
        principal = None if user is None else Principal(user.id, user.username, frozenset(user.roles),
                                                        user.session_epoch)
    if reason is not None:
        if fresh is not None and fresh.revoked_at is None:
            with ctx.db.session() as s:
                live = sessions_q.get(s, row.id)
                if live is not None:
                    sessions_q.end(s, live, reason, now, actor=principal.username if principal else "system",
                                   actor_id=principal.user_id if principal else None)
        raise SessionEnded(message(ctx, reason))
    if stale:  # a write at most once a minute per session
        with ctx.db.session() as s:
            live = sessions_q.get(s, row.id)
            if live is not None:
                sessions_q.touch(s, live, now, every=TOUCH_EVERY)
    assert principal is not None
    return principal


def resume(ctx: AppContext, token: str) -> tuple[Principal, int]:
    """The signed-in user and session id behind a cookie token; :class:`SessionEnded` (with the reason to show)
    when it is unknown or no longer valid."""
    row = None
    if token and len(token) <= MAX_SECRET_CHARS:
        with ctx.db.session(readonly=True) as s:
            row = sessions_q.get_by_token(s, sessions_q.digest(token))
    principal = _validate(ctx, row)
    assert row is not None
    return principal, row.id


def check(ctx: AppContext, session_id: int) -> Principal:
    """Check the session this browser signed in with (every page run); :class:`SessionEnded` if it ended."""
    with ctx.db.session(readonly=True) as s:
        row = sessions_q.get(s, session_id)
    return _validate(ctx, row)


def close(ctx: AppContext, session_id: int, reason: str = sessions_q.LOGOUT) -> None:
    """End this browser's own session (sign-out, or the page found it ended): audited, no-op if already ended.

    When the session is already invalid for a reason of its own (idle, password reset...), that reason is
    recorded instead of ``reason``."""
    now = ctx.now()
    with ctx.db.session() as s:
        row = sessions_q.get(s, session_id)
        if row is None or row.revoked_at is not None:
            return
        user = users_q.get_user(s, row.user_id)
        why = sessions_q.why_ended(row, user, now, _idle(ctx)) or reason
        sessions_q.end(s, row, why, now, actor=user.username if user else "system",
                       actor_id=user.id if user else None)


def close_by_token(ctx: AppContext, token: str) -> None:
    """End the session behind a cookie token (``/auth/logout``); nothing happens for an unknown token."""
    if not token or len(token) > MAX_SECRET_CHARS:
        return
    with ctx.db.session(readonly=True) as s:
        row = sessions_q.get_by_token(s, sessions_q.digest(token))
        session_id = row.id if row is not None else None
    if session_id is not None:
        close(ctx, session_id, sessions_q.LOGOUT)


def _view(row: BrowserSession) -> SessionView:
    return SessionView(row.id, row.user_id, row.method, row.created_at, row.last_seen_at, row.expires_at,
                       row.revoked_at, row.revoked_reason, row.client, row.user_agent, row.token_hash is not None)


@requires("users.manage")
def list_sessions(ctx: AppContext, actor: Principal, user_id: int, *, include_ended: bool = False,
                  limit: int = 50) -> list[SessionView]:
    """A user's sessions, newest first (first closing, with an audit event, those that expired or went idle)."""
    with ctx.db.session() as s:
        sessions_q.end_stale(s, ctx.now(), _idle(ctx))
    with ctx.db.session(readonly=True) as s:
        if users_q.get_user(s, user_id) is None:
            raise NotFound(f"No user with id {user_id}.")
        return [_view(r) for r in sessions_q.list_sessions(s, user_id, open_only=not include_ended, limit=limit)]


@requires("users.manage")
def end_session(ctx: AppContext, actor: Principal, session_id: int) -> SessionView:
    """End another browser's session (the user is signed out at their next click); audited as
    ``auth.session_end`` with reason "ended by an admin" and the admin as actor."""
    with ctx.db.session() as s:
        row = sessions_q.get(s, session_id)
        if row is None:
            raise NotFound(f"No session with id {session_id}.")
        sessions_q.end(s, row, sessions_q.ENDED_BY_ADMIN, ctx.now(), actor=actor.username, actor_id=actor.user_id)
        return _view(row)
