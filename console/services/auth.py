"""Signing in and out of local accounts: argon2 hashes, lockout, idle timeout; every outcome is audited."""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from console.services.access import Principal
from console.services.context import AppContext
from console.services.errors import InvalidInput, LoginFailed, SessionEnded
from db import audit as audit_q
from db import users as users_q

logger = logging.getLogger(__name__)

_hasher = PasswordHasher()
# Verifying against a fixed hash when the user does not exist keeps the timing of both failures alike.
_DUMMY_HASH = _hasher.hash("not-a-real-password-" + secrets.token_hex(8))
GENERIC_FAILURE = "Wrong username or password."


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password_rules(password: str, min_length: int) -> None:
    """Raise :class:`InvalidInput` if ``password`` is too short or blank."""
    if not password or not password.strip():
        raise InvalidInput("The password must not be empty.")
    if len(password) < min_length:
        raise InvalidInput(f"The password must have at least {min_length} characters.")


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def _audit_failure(session, who: str, user_id: int | None, reason: str, **details: object) -> None:  # noqa: ANN001
    """One ``auth.login_failed`` event; the object is the account if known, else the name that was tried."""
    audit_q.append_event(session, actor=who, actor_id=user_id, action="auth.login_failed", object_type="user",
                         object_id=str(user_id) if user_id is not None else who,
                         details={"reason": reason, **details})


def login(ctx: AppContext, username: str, password: str) -> Principal:
    """Return the principal for correct credentials; raise :class:`LoginFailed` otherwise.

    Failed attempts are counted; after ``lockout_threshold`` in a row the account is locked for
    ``lockout_minutes``. Every outcome is an audit event (its transaction is committed before raising).
    """
    username = (username or "").strip().lower()
    if not username or not password:
        raise LoginFailed("Enter a username and a password.")
    now = ctx.now()
    settings = ctx.settings
    failure: str | None = None
    principal: Principal | None = None
    with ctx.db.session() as s:
        user = users_q.get_user_by_username(s, username)
        if user is None:
            _verify(None, password)
            _audit_failure(s, username, None, "unknown user")
            failure = GENERIC_FAILURE
        elif user.disabled:
            _audit_failure(s, username, user.id, "disabled")
            failure = "This account is disabled. Ask an admin."
        elif user.locked_until is not None and user.locked_until > now:
            _audit_failure(s, username, user.id, "locked")
            failure = f"This account is locked until {user.locked_until:%H:%M} UTC after too many failed sign-ins."
        elif not _verify(user.password_hash, password):
            # Counts the failure, locks at the threshold, and audits both (auth.login_failed, auth.locked).
            _count, locked_until = users_q.record_failed_login(
                s, user.id, threshold=settings.lockout_threshold, lock_minutes=settings.lockout_minutes, now=now
            )
            if locked_until is not None and locked_until > now:
                failure = f"Too many failed sign-ins: the account is locked for {settings.lockout_minutes} minutes."
            else:
                failure = GENERIC_FAILURE
        else:
            users_q.record_successful_login(s, user.id, now=now, method="password")  # audited as auth.login
            principal = Principal(user.id, user.username, frozenset(user.roles))
    if principal is None:
        logger.info("login failed for %s: %s", username, failure)
        raise LoginFailed(failure or GENERIC_FAILURE)
    return principal


def login_sso(ctx: AppContext, email: str, issuer: str | None = None) -> Principal:
    """Sign in an identity already verified by the OIDC provider (``st.login``), matched by email.

    Roles come from the console's own user table: an unknown or disabled email is refused and audited.
    """
    email = (email or "").strip().lower()
    if not email:
        raise LoginFailed("The identity provider did not give an email address.")
    with ctx.db.session() as s:
        user = users_q.get_user_by_email(s, email)
        if user is None or user.disabled:
            _audit_failure(s, email, None, "sso email not registered or disabled", issuer=issuer)
            principal = None
        else:
            users_q.record_successful_login(s, user.id, now=ctx.now(), method="sso")
            principal = Principal(user.id, user.username, frozenset(user.roles))
    if principal is None:
        raise LoginFailed(f"{email} has no active account in this console. Ask an admin to add it.")
    return principal


def logout(ctx: AppContext, principal: Principal, *, reason: str = "logout") -> None:
    """Record the end of a session (``reason``: logout, idle timeout)."""
    action = "auth.logout" if reason == "logout" else "auth.session_expired"
    with ctx.db.session() as s:
        audit_q.append_event(s, actor=principal.username, actor_id=principal.user_id, action=action,
                             object_type="user", object_id=str(principal.user_id), details={"reason": reason})


def check_idle(ctx: AppContext, principal: Principal, last_activity: datetime | None) -> datetime:
    """Raise :class:`SessionEnded` (and audit it) if the session was idle too long; return the new activity time."""
    now = ctx.now()
    limit = timedelta(minutes=ctx.settings.session_idle_minutes)
    if last_activity is not None and now - last_activity > limit:
        logout(ctx, principal, reason="idle timeout")
        raise SessionEnded(
            f"You were signed out after {ctx.settings.session_idle_minutes} minutes without activity."
        )
    return now
