"""Quota limits and the per-user request counter (issue 25, part 4).

The counter is enforced by the database, not process memory, so several console replicas on one database enforce
one limit: :func:`take_request` raises a user's count for the current minute with one conditional UPDATE
(``... WHERE requests < limit``), which PostgreSQL re-checks on the newest row version after a concurrent
writer's commit, and which SQLite runs under its single write lock. The window is fixed (the wall-clock minute):
at a boundary a client can get up to twice the limit through within a few seconds (the end of one minute and the
start of the next). A replica whose clock lags never moves a newer stored window back.

Tokens per day are summed from the stored exchanges (prompt + answer tokens of the user's own chat turns, not
load tests' synthetic ones nor side-by-side comparisons), so a turn's tokens count once it has finished.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.tables import QUOTA_KINDS, Exchange, QuotaCounter, QuotaLimit, User, UserRole
from db.types import utcnow

# The request id prefix of a user's own chat turns (console/services/chat.py): comparisons use "cmp-...".
CHAT_REQUEST_PREFIX = "chat-"


def role_limits(s: Session) -> dict[tuple[str, str], int | None]:
    """Every role default an admin set: ``(role, kind) -> limit`` (None: no limit)."""
    rows = s.scalars(select(QuotaLimit).where(QuotaLimit.role.is_not(None)))
    return {(r.role, r.kind): r.limit_value for r in rows if r.role is not None}


def user_overrides(s: Session, user_ids: list[int] | None = None) -> dict[tuple[int, str], int | None]:
    """Users' overrides: ``(user_id, kind) -> limit`` (None: no limit), for ``user_ids`` or everybody."""
    query = select(QuotaLimit).where(QuotaLimit.user_id.is_not(None))
    if user_ids is not None:
        query = query.where(QuotaLimit.user_id.in_(user_ids))
    return {(r.user_id, r.kind): r.limit_value for r in s.scalars(query) if r.user_id is not None}


def limits_for(s: Session, user_id: int) -> tuple[frozenset[str], dict[tuple[str, str], int | None],
                                                  dict[str, int | None]] | None:
    """What a chat turn's check needs in two small Core queries: the user's roles, every role default an admin set,
    and the user's overrides (``kind -> limit``); None when the user does not exist."""
    roles = frozenset(s.scalars(select(UserRole.role).where(UserRole.user_id == user_id)))
    rows = s.execute(select(QuotaLimit.role, QuotaLimit.user_id, QuotaLimit.kind, QuotaLimit.limit_value)
                     .where(or_(QuotaLimit.role.is_not(None), QuotaLimit.user_id == user_id))).all()
    if not roles and s.scalar(select(User.id).where(User.id == user_id)) is None:
        return None
    defaults = {(role, kind): value for role, _, kind, value in rows if role is not None}
    overrides = {kind: value for role, _, kind, value in rows if role is None}
    return roles, defaults, overrides


def _limit_row(s: Session, *, role: str | None, user_id: int | None, kind: str) -> QuotaLimit | None:
    query = select(QuotaLimit).where(QuotaLimit.kind == kind)
    query = query.where(QuotaLimit.role == role) if role is not None else query.where(QuotaLimit.user_id == user_id)
    return s.scalars(query.with_for_update()).first()


def set_limit(s: Session, *, role: str | None = None, user_id: int | None = None, kind: str, value: int | None,
              by_id: int | None, now: datetime | None = None) -> tuple[bool, int | None]:
    """Set a role's default or a user's override of ``kind`` to ``value`` (None: no limit). Returns whether a row
    was there before and its value (the caller audits old and new)."""
    if kind not in QUOTA_KINDS or (role is None) == (user_id is None):
        raise ValueError("set_limit needs a known kind and exactly one of role and user_id")
    row = _limit_row(s, role=role, user_id=user_id, kind=kind)
    existed, old = (row is not None, row.limit_value if row is not None else None)
    if row is None:
        row = QuotaLimit(role=role, user_id=user_id, kind=kind)
        s.add(row)
    row.limit_value = value
    row.updated_at = now or utcnow()
    row.updated_by_id = by_id
    s.flush()
    return existed, old


def clear_limit(s: Session, *, role: str | None = None, user_id: int | None = None,
                kind: str) -> tuple[bool, int | None]:
    """Remove a role's default (back to the shipped one) or a user's override; returns (was there, its value)."""
    row = _limit_row(s, role=role, user_id=user_id, kind=kind)
    if row is None:
        return False, None
    old = row.limit_value
    s.delete(row)
    s.flush()
    return True, old


def _ensure_counter(s: Session, user_id: int, window_start: datetime) -> None:
    values = {"user_id": user_id, "window_start": window_start, "requests": 0}
    insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    s.execute(insert(QuotaCounter).values(**values).on_conflict_do_nothing(index_elements=["user_id"]))


def take_request(s: Session, user_id: int, window_start: datetime, limit: int | None) -> bool:
    """Count one request of ``user_id`` in the minute starting at ``window_start``, unless that would pass
    ``limit`` (None: count without a limit). True when counted (allowed). Atomic across processes and replicas:
    one conditional UPDATE of the user's counter row (created on first use)."""
    newer = QuotaCounter.window_start < window_start
    statement = (
        update(QuotaCounter)
        .where(QuotaCounter.user_id == user_id)
        .values(requests=case((newer, 1), else_=QuotaCounter.requests + 1),
                window_start=case((newer, window_start), else_=QuotaCounter.window_start))
        .execution_options(synchronize_session=False)
    )
    if limit is not None:
        if limit <= 0:
            return False
        statement = statement.where(or_(newer, QuotaCounter.requests < limit))
    for attempt in (1, 2):
        if s.execute(statement).rowcount == 1:  # type: ignore[attr-defined]
            return True
        if attempt == 1 and s.get(QuotaCounter, user_id, populate_existing=True) is None:
            _ensure_counter(s, user_id, window_start)
            continue
        break
    return False


def requests_in_window(s: Session, user_id: int, window_start: datetime) -> int:
    """The requests counted for ``user_id`` in the minute starting at ``window_start`` (0 for another minute)."""
    counter = s.get(QuotaCounter, user_id, populate_existing=True)
    if counter is None or counter.window_start < window_start:
        return 0
    return counter.requests


def requests_now(s: Session, window_start: datetime) -> dict[int, int]:
    """Every user's requests in the minute starting at ``window_start`` (users with none are left out)."""
    rows = s.execute(select(QuotaCounter.user_id, QuotaCounter.requests)
                     .where(QuotaCounter.window_start >= window_start))
    return {user_id: requests for user_id, requests in rows}


def _chat_tokens() -> tuple[ColumnElement[Any], tuple[ColumnElement[bool], ...]]:
    total = func.coalesce(func.sum(func.coalesce(Exchange.prompt_tokens, 0) + func.coalesce(Exchange.output_tokens, 0)),
                          0)
    filters = (Exchange.synthetic.is_(False), Exchange.request_id.like(CHAT_REQUEST_PREFIX + "%"))
    return total, filters


def tokens_since(s: Session, user_id: int, since: datetime) -> int:
    """Prompt plus answer tokens of ``user_id``'s own chat turns stored since ``since`` (not load tests, not
    comparisons); a turn still answering has none yet."""
    total, filters = _chat_tokens()
    return int(s.scalar(select(total).where(Exchange.user_id == user_id, Exchange.created_at >= since, *filters))
               or 0)


def tokens_by_user_since(s: Session, since: datetime) -> dict[int, int]:
    """:func:`tokens_since` for every user with tokens since ``since``."""
    total, filters = _chat_tokens()
    rows = s.execute(select(Exchange.user_id, total).where(Exchange.created_at >= since, *filters)
                     .group_by(Exchange.user_id))
    return {user_id: int(tokens) for user_id, tokens in rows}


def first_refusal(s: Session, user_id: int, kind: str, window_start: datetime) -> bool:
    """True once per user, ``kind`` and window: the caller audits that refusal, later ones in the same window are
    not (a hammering client does not flood the audit log). Atomic like :func:`take_request`."""
    column = QuotaCounter.rpm_refusal_audited if kind == "requests_per_minute" else QuotaCounter.tpd_refusal_audited
    statement = (update(QuotaCounter).where(QuotaCounter.user_id == user_id,
                                            or_(column.is_(None), column < window_start))
                 .values({column: window_start}).execution_options(synchronize_session=False))
    if s.execute(statement).rowcount == 1:  # type: ignore[attr-defined]
        return True
    if s.get(QuotaCounter, user_id, populate_existing=True) is not None:
        return False
    _ensure_counter(s, user_id, datetime.min.replace(tzinfo=window_start.tzinfo))
    return bool(s.execute(statement).rowcount == 1)  # type: ignore[attr-defined]
