"""Users, roles and login bookkeeping. Password hashing and permission checks live in the console."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.audit import append_event
from db.tables import ROLES, User, UserRole
from db.types import utcnow

logger = logging.getLogger(__name__)


# Actor names the console writes for itself in the audit log (db.audit.append_event's ``actor``): never a username,
# compared case-insensitively, so no account shares its name with the system's own entries.
RESERVED_USERNAMES: frozenset[str] = frozenset({"system", "cli", "watch", "anonymous"})


class UnknownRoleError(ValueError):
    """A role name that is not one of ``db.tables.ROLES``."""


class ReservedUsernameError(ValueError):
    """A username that is one of the console's own actor names (``RESERVED_USERNAMES``)."""


def is_reserved_username(username: str) -> bool:
    return username.strip().casefold() in RESERVED_USERNAMES


def _check_roles(roles: Iterable[str]) -> list[str]:
    wanted = sorted(set(roles))
    unknown = [r for r in wanted if r not in ROLES]
    if unknown:
        raise UnknownRoleError(f"unknown role(s) {unknown}; known: {list(ROLES)}")
    return wanted


def create_user(
    session: Session,
    username: str,
    password_hash: str | None,
    roles: Iterable[str],
    display_name: str | None = None,
    email: str | None = None,
    *,
    actor: str = "system",
    actor_id: int | None = None,
) -> User:
    """Create a user with the given roles (``password_hash`` None for SSO-only accounts); audited.

    Raises :class:`ReservedUsernameError` for one of the console's own actor names (``RESERVED_USERNAMES``).
    """
    if is_reserved_username(username):
        raise ReservedUsernameError(f"{username!r} is reserved for the console's own audit entries")
    wanted = _check_roles(roles)
    user = User(
        username=username,
        password_hash=password_hash,
        display_name=display_name,
        email=email,
        role_rows=[UserRole(role=r) for r in wanted],
    )
    session.add(user)
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=actor_id,
        action="user.create",
        object_type="user",
        object_id=user.id,
        details={"username": username, "roles": wanted, "email": email, "sso_only": password_hash is None},
    )
    return user


def get_user(session: Session, user_id: int) -> User | None:
    """The user with this id, or None."""
    return session.get(User, user_id)


def get_user_by_username(session: Session, username: str) -> User | None:
    """The user with this exact username, or None."""
    return session.scalars(select(User).where(User.username == username)).one_or_none()


def get_user_by_email(session: Session, email: str) -> User | None:
    """The user with this exact email, or None."""
    return session.scalars(select(User).where(User.email == email)).one_or_none()


def get_user_by_sso(session: Session, issuer: str, subject: str) -> User | None:
    """The user bound to this single sign-on identity (OIDC issuer and subject), or None."""
    return session.scalars(select(User).where(User.sso_issuer == issuer, User.sso_subject == subject)).one_or_none()


def list_users(session: Session, *, include_disabled: bool = True) -> list[User]:
    """All users ordered by username."""
    stmt = select(User).order_by(User.username)
    if not include_disabled:
        stmt = stmt.where(User.disabled.is_(False))
    return list(session.scalars(stmt))


def _locked_user(session: Session, user_id: int) -> User:
    user = session.scalars(select(User).where(User.id == user_id).with_for_update()).one_or_none()
    if user is None:
        raise LookupError(f"no user with id {user_id}")
    return user


def set_roles(
    session: Session, user_id: int, roles: Iterable[str], *, actor: str, actor_id: int | None = None
) -> User:
    """Replace the user's roles; audited with the before and after sets."""
    wanted = _check_roles(roles)
    user = _locked_user(session, user_id)
    before = sorted(user.roles)
    keep = [row for row in user.role_rows if row.role in wanted]
    have = {row.role for row in keep}
    user.role_rows = keep + [UserRole(role=r) for r in wanted if r not in have]
    user.updated_at = utcnow()
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=actor_id,
        action="user.roles",
        object_type="user",
        object_id=user.id,
        details={"username": user.username, "before": before, "after": wanted},
    )
    return user


def set_disabled(
    session: Session, user_id: int, disabled: bool, *, actor: str, actor_id: int | None = None
) -> User:
    """Disable or re-enable an account; audited."""
    user = _locked_user(session, user_id)
    user.disabled = disabled
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=actor_id,
        action="user.disable" if disabled else "user.enable",
        object_type="user",
        object_id=user.id,
        details={"username": user.username},
    )
    return user


def set_password_hash(
    session: Session, user_id: int, password_hash: str | None, *, actor: str, actor_id: int | None = None
) -> User:
    """Store a new password hash (never the password), clear any lockout and end the user's open sessions
    (``session_epoch`` is bumped); audited without the hash."""
    user = _locked_user(session, user_id)
    user.password_hash = password_hash
    user.failed_login_count = 0
    user.locked_until = None
    user.session_epoch += 1
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=actor_id,
        action="user.password",
        object_type="user",
        object_id=user.id,
        details={"username": user.username, "cleared": password_hash is None},
    )
    return user


def unlock(session: Session, user_id: int, *, actor: str, actor_id: int | None = None) -> User:
    """Clear the failure count and any lock; audited as ``user.unlock`` with what was cleared."""
    user = _locked_user(session, user_id)
    before = {"failed_login_count": user.failed_login_count, "locked_until": user.locked_until}
    user.failed_login_count = 0
    user.locked_until = None
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=actor_id,
        action="user.unlock",
        object_type="user",
        object_id=user.id,
        details={"username": user.username, **before},
    )
    return user


def bind_sso(session: Session, user_id: int, issuer: str, subject: str) -> User:
    """Bind the account to a single sign-on identity (at its first SSO sign-in); audited as ``user.sso_bound``."""
    user = _locked_user(session, user_id)
    user.sso_issuer = issuer
    user.sso_subject = subject
    session.flush()
    append_event(
        session,
        actor=user.username,
        actor_id=user.id,
        action="user.sso_bound",
        object_type="user",
        object_id=user.id,
        details={"issuer": issuer, "subject": subject},
    )
    return user


def record_failed_login(
    session: Session,
    user_id: int,
    *,
    threshold: int,
    lock_minutes: int,
    now: datetime | None = None,
    actor: str | None = None,
) -> tuple[int, datetime | None]:
    """Count a failed login; at ``threshold`` failures in a row lock the account for ``lock_minutes``.

    A lock that has expired starts the count again from zero, so one failure after the lock ends does not lock
    the account again at once. Returns (failures in a row, locked_until or None). Audited as
    ``auth.login_failed`` and, when the account becomes locked, ``auth.locked``.
    """
    now = now or utcnow()
    user = _locked_user(session, user_id)
    if user.locked_until is not None and user.locked_until <= now:
        user.failed_login_count = 0
        user.locked_until = None
    user.failed_login_count += 1
    locked_now = False
    if user.failed_login_count >= threshold and user.locked_until is None:
        user.locked_until = now + timedelta(minutes=lock_minutes)
        locked_now = True
    session.flush()
    who = actor or user.username
    append_event(
        session,
        actor=who,
        actor_id=user.id,
        action="auth.login_failed",
        object_type="user",
        object_id=user.id,
        details={"reason": "wrong password", "failed_login_count": user.failed_login_count},
    )
    if locked_now:
        logger.warning("account %s locked until %s", user.username, user.locked_until)
        append_event(
            session,
            actor=who,
            actor_id=user.id,
            action="auth.locked",
            object_type="user",
            object_id=user.id,
            details={"locked_until": user.locked_until, "failed_login_count": user.failed_login_count},
        )
    return user.failed_login_count, user.locked_until


def record_successful_login(
    session: Session, user_id: int, *, now: datetime | None = None, method: str = "password"
) -> User:
    """Reset the failure count and lockout, stamp ``last_login_at``; audited as ``auth.login``."""
    now = now or utcnow()
    user = _locked_user(session, user_id)
    user.failed_login_count = 0
    user.locked_until = None
    user.last_login_at = now
    session.flush()
    append_event(
        session,
        actor=user.username,
        actor_id=user.id,
        action="auth.login",
        object_type="user",
        object_id=user.id,
        details={"method": method},
    )
    return user


def usernames(session: Session, user_ids: Sequence[int | None]) -> dict[int, str]:
    """Usernames of the given user ids (unknown ids are left out)."""
    wanted = sorted({i for i in user_ids if i is not None})
    if not wanted:
        return {}
    return {uid: name for uid, name in session.execute(select(User.id, User.username).where(User.id.in_(wanted)))}
