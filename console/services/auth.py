"""Signing in and out: local accounts (argon2 hashes, lockout, throttling, idle timeout) and single sign-on
identities bound to their provider's issuer and subject. Every outcome is audited.

A failed sign-in tells the person only that it failed (one message whether the account is unknown, disabled,
locked or the password wrong); the audit log keeps the real reason.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import threading
import unicodedata
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Session

from console.services.access import Principal
from console.services.context import AppContext
from console.services.errors import InvalidInput, LoginFailed, SessionEnded
from console.services.text import clean_text, is_clean
from console.settings import Network
from db import audit as audit_q
from db import users as users_q

logger = logging.getLogger(__name__)

_hasher = PasswordHasher()
# Verifying against a fixed hash when the user does not exist keeps the timing of both failures alike.
_DUMMY_HASH = _hasher.hash("not-a-real-password-" + secrets.token_hex(8))
GENERIC_FAILURE = "Wrong username or password, or the account cannot sign in right now."
THROTTLED = "Too many sign-in attempts; wait a minute."
SSO_NO_ACCOUNT = "This identity has no active account in this console. Ask an admin to add it."

# Bounds on what a person may type (checked on the page with max_chars and here, in the service).
MAX_USERNAME_CHARS = 64
MAX_PASSWORD_CHARS = 1024
MAX_EMAIL_CHARS = 254  # RFC 5321's limit on a forward path
MAX_ISSUER_CHARS = 512
MAX_SUBJECT_CHARS = 255  # OIDC Core: sub "MUST NOT exceed 255 ASCII characters"
# What an audit event or a log line keeps of a name someone typed.
LOGGED_NAME_CHARS = 64

COOKIE_SECRET_PLACEHOLDER = "replace-with-a-long-random-string"  # the value in .streamlit/secrets.toml.example
MIN_COOKIE_SECRET_CHARS = 32


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password_rules(password: str, min_length: int) -> None:
    """Raise :class:`InvalidInput` if ``password`` is blank, too short or too long."""
    if not password or not password.strip():
        raise InvalidInput("The password must not be empty.")
    if len(password) < min_length:
        raise InvalidInput(f"The password must have at least {min_length} characters.")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidInput(f"The password must have at most {MAX_PASSWORD_CHARS:,} characters.")


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def truncated(text: str, limit: int = LOGGED_NAME_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying so (for audit events and log lines about typed input)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [truncated, {len(text):,} characters]"


def canonical_email(email: str | None) -> str:
    """The form emails are stored and compared in: Unicode NFKC, then ``casefold()``; "" for no email.

    Raises :class:`InvalidInput` for an address that normalisation would change other than by plain case
    (U+212A KELVIN SIGN becomes "K", "ß" folds to "ss", decomposed accents compose): such an address could be
    taken for another person's.
    """
    stripped = (email or "").strip()
    if len(stripped) > MAX_EMAIL_CHARS:
        raise InvalidInput(f"An email address has at most {MAX_EMAIL_CHARS} characters.")
    nfkc = unicodedata.normalize("NFKC", stripped)
    folded = nfkc.casefold()
    if nfkc != stripped or folded != nfkc.lower() or unicodedata.normalize("NFKC", folded) != folded:
        raise InvalidInput(
            "The email address contains characters that Unicode normalisation changes (such as the Kelvin sign "
            "for K); write it with ordinary letters."
        )
    return folded


def sso_config_problem(auth_config: Mapping[str, object] | None) -> str | None:
    """Why the console must not start with this ``[auth]`` section (Streamlit's OIDC settings), or None.

    Single sign-on signs the identity cookie with ``cookie_secret``: the example's placeholder, or a short secret,
    lets anyone forge a signed-in identity. No section (single sign-on not configured) is fine.
    """
    if not auth_config:
        return None
    secret = auth_config.get("cookie_secret")
    fix = ('set [auth] cookie_secret in .streamlit/secrets.toml to a random string of at least '
           f'{MIN_COOKIE_SECRET_CHARS} characters (python -c "import secrets; print(secrets.token_urlsafe(32))")')
    if not isinstance(secret, str) or not secret.strip():
        return f"Single sign-on is configured without a cookie_secret: {fix}."
    if secret.strip() == COOKIE_SECRET_PLACEHOLDER:
        return f"Single sign-on is configured with the example's placeholder cookie_secret: {fix}."
    if len(secret.strip()) < MIN_COOKIE_SECRET_CHARS:  # spaces around a short secret add nothing to guess
        return f"Single sign-on is configured with a cookie_secret shorter than {MIN_COOKIE_SECRET_CHARS} characters: {fix}."
    return None


# --- throttling ------------------------------------------------------------------------------------------------


class SlidingWindowLimiter:
    """At most ``limit`` attempts per ``window`` for each key (a sliding log of the allowed attempts' times).

    Thread-safe (browser sessions run on their own threads). Memory stays bounded: at ``max_keys`` keys the
    stale ones are dropped, then the oldest.
    """

    def __init__(self, window: timedelta = timedelta(minutes=1), max_keys: int = 10_000) -> None:
        self.window = window
        self.max_keys = max_keys
        self._log: dict[str, deque[datetime]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, now: datetime, limit: int) -> bool:
        """Count an attempt under ``key`` and return True, or return False if ``limit`` were already made."""
        start = now - self.window
        with self._lock:
            times = self._log.get(key)
            if times is None:
                if len(self._log) >= self.max_keys:
                    self._forget(start)
                times = self._log[key] = deque()
            while times and times[0] <= start:
                times.popleft()
            if len(times) >= limit:
                return False
            times.append(now)
            return True

    def _forget(self, start: datetime) -> None:
        for key in [k for k, times in self._log.items() if not times or times[-1] <= start]:
            del self._log[key]
        while len(self._log) >= self.max_keys:
            del self._log[next(iter(self._log))]


_limiters: dict[str, SlidingWindowLimiter] = {}
_limiters_lock = threading.Lock()


def login_limiter(ctx: AppContext) -> SlidingWindowLimiter:
    """The process's sign-in limiter for this console's accounts (one per database)."""
    with _limiters_lock:
        return _limiters.setdefault(ctx.settings.database_url, SlidingWindowLimiter())


def client_key(forwarded_for: str | None, remote_address: str | None, session_id: str | None,
               trusted_proxies: Sequence[Network] = ()) -> str:
    """The key sign-in attempts are counted under: the connection's address, else the browser session.

    ``X-Forwarded-For`` is read only when the connection comes from one of ``trusted_proxies``
    (``LLM_CONSOLE_TRUSTED_PROXIES``): then the right-most hop that is not a trusted proxy is the client (every hop
    left of it was written by the client and can be anything). Without trusted proxies the header is ignored:
    anyone could otherwise send a fresh value with every attempt and never be throttled.
    """
    if remote_address and trusted_proxies and _trusted(remote_address, trusted_proxies):
        hops = [h.strip() for h in (forwarded_for or "").split(",") if h.strip()]
        for hop in reversed(hops):
            if not _trusted(hop, trusted_proxies):
                return "ip:" + hop[:64]
        if hops:  # every hop a proxy of ours: the first one is as near the client as we know
            return "ip:" + hops[0][:64]
    if remote_address:
        return "ip:" + remote_address[:64]
    if session_id:
        return "session:" + session_id[:64]
    return "unknown"


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in networks)


# --- local accounts ---------------------------------------------------------------------------------------------


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def _audit_failure(session: Session, who: str, user_id: int | None, reason: str, **details: object) -> None:
    """One ``auth.login_failed`` event; the actor and object are the account if known.

    A name that matches no account (a typo, someone's email, a password typed in the wrong field) goes only into
    the details, under ``username``: details can be erased later, the chained columns cannot.
    """
    if user_id is not None:
        audit_q.append_event(session, actor=truncated(who), actor_id=user_id, action="auth.login_failed",
                             object_type="user", object_id=str(user_id), details={"reason": reason, **details})
        return
    audit_q.append_event(session, actor="anonymous", actor_id=None, action="auth.login_failed",
                         object_type="sign_in", object_id=None,
                         details={"reason": reason, "username": truncated(who), **details})


def _throttled(ctx: AppContext, username: str, client: str) -> None:
    with ctx.db.session() as s:
        audit_q.append_event(s, actor="anonymous", actor_id=None,
                             action="auth.login_throttled", object_type="client", object_id=truncated(client),
                             details={"limit_per_minute": ctx.settings.login_attempts_per_minute,
                                      "username": truncated(username)})
    logger.warning("sign-in throttled for client %s", truncated(client))
    raise LoginFailed(THROTTLED)


def login(ctx: AppContext, username: str, password: str, *, client: str | None = None) -> Principal:
    """Return the principal for correct credentials; raise :class:`LoginFailed` otherwise.

    ``client`` (see :func:`client_key`) is allowed ``login_attempts_per_minute`` attempts; more are refused and
    audited. Failed attempts are counted per account; after ``lockout_threshold`` in a row the account is locked
    for ``lockout_minutes``. Every failure gives the same message; the audit event (committed before raising)
    keeps the reason.
    """
    typed_cleanly = is_clean(username or "") and is_clean(password or "")
    username = clean_text(username or "").strip().lower()
    password = clean_text(password or "") if typed_cleanly else "\x00"  # a NUL never matches a stored hash
    now = ctx.now()
    settings = ctx.settings
    if client is not None and not login_limiter(ctx).allow(client, now, settings.login_attempts_per_minute):
        _throttled(ctx, username, client)
    if not username or not password:
        raise LoginFailed("Enter a username and a password.")
    if len(username) > MAX_USERNAME_CHARS or len(password) > MAX_PASSWORD_CHARS:
        with ctx.db.session() as s:
            _audit_failure(s, username, None, "too long", username_chars=len(username),
                           password_chars=len(password))
        raise LoginFailed(f"A username has at most {MAX_USERNAME_CHARS} characters and a password at most "
                          f"{MAX_PASSWORD_CHARS:,}.")
    principal: Principal | None = None
    reason = ""
    with ctx.db.session() as s:
        user = users_q.get_user_by_username(s, username)
        if user is None:
            _verify(None, password)
            reason = "unknown user"
            _audit_failure(s, username, None, reason)
        elif user.disabled:
            _verify(None, password)
            reason = "disabled"
            _audit_failure(s, username, user.id, reason)
        elif user.locked_until is not None and user.locked_until > now:
            _verify(None, password)
            reason = "locked"
            _audit_failure(s, username, user.id, reason, locked_until=user.locked_until)
        elif not _verify(user.password_hash, password):
            # Counts the failure, locks at the threshold, and audits both (auth.login_failed, auth.locked).
            reason = "wrong password"
            users_q.record_failed_login(
                s, user.id, threshold=settings.lockout_threshold, lock_minutes=settings.lockout_minutes, now=now
            )
        else:
            users_q.record_successful_login(s, user.id, now=now, method="password")  # audited as auth.login
            principal = Principal(user.id, user.username, frozenset(user.roles), user.session_epoch)
    if principal is None:
        logger.info("login failed for %s: %s", truncated(username), reason)
        raise LoginFailed(GENERIC_FAILURE)
    return principal


# --- single sign-on ---------------------------------------------------------------------------------------------


def _claim(claims: Mapping[str, object], name: str) -> str:
    value = claims.get(name)
    return value.strip() if isinstance(value, str) else ""


def _verified(value: object) -> bool:
    # A JSON boolean in the ID token; a few providers send the string "true".
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def login_sso(ctx: AppContext, claims: Mapping[str, object]) -> Principal:
    """Sign in an identity the OIDC provider verified (``st.login``; ``claims`` as in ``st.user``).

    The provider must say the email is verified (``email_verified``). At the first sign-in the account whose
    email matches (after NFKC and casefold, see :func:`canonical_email`) is bound to the identity's issuer and
    subject (``iss``, ``sub``); afterwards only that identity signs in to it, whatever its email becomes. Roles
    come from the console's own user table. Every refusal is audited with its reason.
    """
    issuer, subject, raw_email = _claim(claims, "iss"), _claim(claims, "sub"), _claim(claims, "email")
    who = raw_email or subject or "sso identity"
    failure: str | None = None
    reason = ""
    email = ""
    if not issuer or not subject:
        failure, reason = "The identity provider did not identify this identity (issuer and subject).", "no iss/sub"
    elif len(issuer) > MAX_ISSUER_CHARS or len(subject) > MAX_SUBJECT_CHARS:
        failure, reason = "The identity provider's issuer or subject is too long.", "iss/sub too long"
    elif not raw_email:
        failure, reason = "The identity provider did not give an email address.", "no email"
    elif not _verified(claims.get("email_verified")):
        failure = "The identity provider has not verified this email address; verify it there, then sign in again."
        reason = "email not verified"
    if failure is None:
        try:
            email = canonical_email(raw_email)
        except InvalidInput as exc:
            failure, reason = str(exc), "email changes under normalisation"
    principal: Principal | None = None
    with ctx.db.session() as s:
        if failure is None:
            user = users_q.get_user_by_sso(s, issuer, subject)
            if user is None:
                user = users_q.get_user_by_email(s, email)
                if user is None:
                    reason = "sso email not registered"
                elif user.sso_subject is not None:
                    reason, user = "account bound to another sso identity", None
                elif not user.disabled:
                    users_q.bind_sso(s, user.id, issuer, subject)
            if user is not None and user.disabled:
                reason, user = "disabled", None
            if user is None:
                failure = SSO_NO_ACCOUNT
            else:
                users_q.record_successful_login(s, user.id, now=ctx.now(), method="sso")
                principal = Principal(user.id, user.username, frozenset(user.roles), user.session_epoch)
        if principal is None:
            _audit_failure(s, who, None, f"sso: {reason}", issuer=truncated(issuer, MAX_ISSUER_CHARS),
                           subject=truncated(subject, MAX_SUBJECT_CHARS))
    if principal is None:
        logger.info("sso login failed for %s: %s", truncated(who), reason)
        raise LoginFailed(failure or SSO_NO_ACCOUNT)
    return principal


# --- sessions ---------------------------------------------------------------------------------------------------


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
