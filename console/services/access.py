"""Who may do what: roles, the action table, page access and separation of duties.

Every service action is declared with :func:`requires`, which re-reads the user from the database on each call
(so a disabled user's open session stops at its next action and role changes apply at once) and records refusals
in the audit log. Pages use the same table to decide what to show, but showing is never the check.

The command line goes through the same services as :meth:`Principal.shell`, the users row ``shell:<OS user>``;
separation of duties compares people (:func:`same_person`), so ``alice`` never checks what ``shell:alice`` did.
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from sqlalchemy.exc import IntegrityError

from console.services.errors import AccessDenied, SeparationOfDuties, SessionEnded
from db import audit as audit_q
from db import users as users_q
from db.tables import ROLES, Role

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from console.services.context import AppContext

logger = logging.getLogger(__name__)


ALL_ROLES: tuple[str, ...] = ROLES

# action -> (roles allowed, what it means in a refusal message)
ACTIONS: dict[str, tuple[frozenset[Role], str]] = {
    "chat.use": (frozenset({Role.OPERATOR}), "chatting with the served model"),
    "chat.send_to_review": (frozenset({Role.OPERATOR}), "sending a message to review"),
    "chat.feedback": (frozenset({Role.OPERATOR}), "rating answers (thumbs up or down)"),
    "dashboard.view": (frozenset({Role.OPERATOR, Role.ANALYST, Role.ADMIN}), "viewing latency dashboards"),
    "slo.manage": (frozenset({Role.ADMIN}), "setting service-level objectives"),
    "latency.rebuild": (frozenset({Role.ADMIN}), "rebuilding the latency buckets"),
    "loadtest.run": (frozenset({Role.OPERATOR, Role.ADMIN}), "running load tests"),
    "review.work": (frozenset({Role.REVIEWER}), "working the review queue"),
    "review.reveal_raw": (frozenset({Role.REVIEWER}), "revealing raw text"),
    "review.escalations": (frozenset({Role.ADMIN}), "deciding escalated review items"),
    "review.spot_checks": (frozenset({Role.REVIEWER, Role.ADMIN}), "viewing spot checks and the miss rate"),
    "review.spot_check_rules": (frozenset({Role.ADMIN}), "changing the spot-check rules"),
    "promotion.approve": (frozenset({Role.REVIEWER, Role.ADMIN}), "approving or rejecting promotions"),
    "promotion.view": (frozenset({Role.REVIEWER, Role.ADMIN}), "viewing promotion requests and model history"),
    "models.evaluate": (frozenset({Role.ADMIN, Role.REVIEWER}), "evaluating model versions"),
    "models.view": (frozenset({Role.ADMIN}), "viewing model versions"),
    "models.register": (frozenset({Role.ADMIN}), "registering model versions"),
    "models.switch": (frozenset({Role.ADMIN}), "switching the served model"),
    "models.protect": (frozenset({Role.ADMIN}), "protecting a model alias"),
    "models.emergency_rollback": (frozenset({Role.ADMIN}), "rolling production back in an emergency"),
    "models.acknowledge_emergency": (frozenset({Role.ADMIN}), "acknowledging an emergency production move"),
    "promotion.request": (frozenset({Role.ADMIN}), "requesting promotions"),
    "users.manage": (frozenset({Role.ADMIN}), "managing users"),
    "users.erase": (frozenset({Role.ADMIN}), "asking for the erasure of a person's content"),
    "users.erase_approve": (frozenset({Role.ADMIN}), "approving the erasure of a person's content"),
    "retention.apply": (frozenset({Role.ADMIN}), "applying the retention limits now"),
    "policy.manage": (frozenset({Role.ADMIN}), "changing the safety policy"),
    "policy.view": (frozenset({Role.ADMIN, Role.REVIEWER}), "viewing the safety policy"),
    "audit.search": (frozenset({Role.ANALYST, Role.ADMIN}), "searching the audit log"),
    "audit.export": (frozenset({Role.ANALYST, Role.ADMIN}), "exporting the audit log"),
    "audit.export_raw": (frozenset({Role.ADMIN}), "asking for an export with raw text"),
    "audit.approve_export": (frozenset({Role.ADMIN}), "approving an export with raw text"),
    "audit.verify": (frozenset({Role.ANALYST, Role.ADMIN}), "verifying the audit chain"),
    "audit.rotate_key": (frozenset({Role.ADMIN}), "rotating the audit signing key"),
    "alerts.manage": (frozenset({Role.ADMIN}), "managing alert webhooks and reading the delivery log"),
}

# page key -> the action that opens it. The navigation shows a page only when the action is allowed.
PAGES: dict[str, str] = {
    "chat": "chat.use",
    "dashboard": "dashboard.view",
    "review": "review.work",
    "escalations": "review.escalations",
    "review_quality": "review.spot_checks",
    "models": "models.view",
    "promotions": "promotion.view",
    "compare": "models.evaluate",
    "evaluations": "models.evaluate",
    "users": "users.manage",
    "policy": "policy.view",
    "audit": "audit.search",
    "alerts": "alerts.manage",
}


# --- the shell ---------------------------------------------------------------------------------------------------
# `llm-console` acts as a users row named "shell:<OS user>": created on first use with SHELL_ROLES, no password and
# no email (so it cannot sign in), shown on the Users page, where an admin can disable it (then every command from
# that OS user is refused, audited). A console username cannot hold ':' (services/users.py), so no account collides.

SHELL_PREFIX = "shell:"
# Every command of the CLI is an admin's action (users, model versions, audit key and exports, retention, erasure).
SHELL_ROLES: frozenset[str] = frozenset({Role.ADMIN.value})
MAX_OS_USER_CHARS = 64
# The actor of a refusal when no OS user could be named (a reserved name: no account holds it).
UNKNOWN_SHELL_ACTOR = "cli"


def os_user() -> str | None:
    """The name of the operating-system account this process runs as (its effective uid), or None.

    Read from the account database, not from ``$USER``/``$LOGNAME``, which anyone can set to another name."""
    try:
        import pwd
    except ImportError:  # not POSIX: the login name is all there is
        try:
            return getpass.getuser() or None
        except (OSError, KeyError, ImportError):
            return None
    try:
        return pwd.getpwuid(os.geteuid()).pw_name or None
    except KeyError:  # a uid with no account entry (a container started with --user 12345)
        return None


def shell_username(os_name: str) -> str:
    return SHELL_PREFIX + os_name


def shell_os_user(username: str) -> str | None:
    """The OS user of a shell principal's username (``shell:alice`` -> ``alice``); None for a console account."""
    return username[len(SHELL_PREFIX):] if username.startswith(SHELL_PREFIX) else None


def same_person(username: str, other: str) -> bool:
    """True when two actor names are one person: equal, or a console account and the shell principal of the OS
    account with the same name (``alice`` and ``shell:alice``). Four-eyes rules compare with this, so nobody acts in
    the shell and checks that act on the page under their own name."""
    def person(name: str) -> str:
        return (shell_os_user(name) or name).strip().casefold()

    return bool(username and other) and person(username) == person(other)


def _usable_os_user(name: str | None) -> bool:
    return name is not None and 0 < len(name) <= MAX_OS_USER_CHARS and name.isprintable() and name.strip() == name


def shell_disabled_message(username: str) -> str:
    return (f"The command line acts as {username}, which an admin disabled; every command but the set-up ones "
            f"(init) is refused. An admin re-enables it on the Users page (Edit: choose {username}, then "
            "'Enable account').")


@dataclass(frozen=True)
class Principal:
    """The signed-in user as the services see them; roles are re-read from the database on every action."""

    user_id: int
    username: str
    roles: frozenset[str]
    # The user's session epoch at sign-in: when the stored one moves on (a password reset), this session ends.
    epoch: int = 0

    def has_role(self, role: str) -> bool:
        return role in self.roles

    @property
    def is_shell(self) -> bool:
        """The trusted principal of ``llm-console`` (see :meth:`shell`), not a person signed in to the console."""
        return self.username.startswith(SHELL_PREFIX)

    @classmethod
    def shell(cls, ctx: AppContext, purpose: str = "shell") -> Principal:
        """The principal of the command line: the users row ``shell:<OS user>``, created on first use.

        Raises :class:`AccessDenied`, audited as ``access.denied`` for ``purpose`` (the command), when the OS user
        cannot be named or its shell user is disabled. Every guarded service checks it again (a command that runs
        on while an admin disables it stops at its next action)."""
        name = os_user()
        if not _usable_os_user(name):
            uid = os.geteuid() if hasattr(os, "geteuid") else None
            with ctx.db.session() as s:
                audit_q.append_event(s, actor=UNKNOWN_SHELL_ACTOR, action="access.denied", object_type="action",
                                     object_id=purpose, details={"action": purpose, "reason": "unknown OS user",
                                                                 "uid": uid})
            logger.warning("access denied: the command line's OS user (uid %s) has no usable name", uid)
            raise AccessDenied(
                f"Cannot tell which operating-system user runs this command (uid {uid} has no usable account name), "
                "so it is refused: the command line acts, and is audited, as that user. Run it from an account "
                "with a name in the system's user database (/etc/passwd).")
        assert name is not None
        username = shell_username(name)
        with ctx.db.session(readonly=True) as s:
            user = users_q.get_user_by_username(s, username)
            found = None if user is None else cls(user.id, user.username, frozenset(user.roles), user.session_epoch)
            disabled = user is not None and user.disabled
        if found is not None:
            if disabled:
                _record_denial(ctx, found, purpose, "shell user disabled", None)
                raise AccessDenied(shell_disabled_message(username))
            return found
        try:
            with ctx.db.session() as s:
                user = users_q.create_user(s, username, None, sorted(SHELL_ROLES),
                                           display_name=f"{name} on the command line", actor="system")
                logger.info("created the shell user %s", username)
                return cls(user.id, user.username, frozenset(user.roles), user.session_epoch)
        except IntegrityError:  # another command created it at the same moment
            with ctx.db.session(readonly=True) as s:
                user = users_q.get_user_by_username(s, username)
                if user is None:
                    raise
                return cls(user.id, user.username, frozenset(user.roles), user.session_epoch)


def allowed(roles: frozenset[str] | set[str], action: str) -> bool:
    """True if any of ``roles`` may perform ``action`` (unknown actions are never allowed)."""
    entry = ACTIONS.get(action)
    return entry is not None and any(r in entry[0] for r in roles)


def allowed_pages(roles: frozenset[str] | set[str]) -> list[str]:
    return [page for page, action in PAGES.items() if allowed(roles, action)]


def _record_denial(ctx: AppContext, principal: Principal, action: str, reason: str, object_id: str | None) -> None:
    # A separate unit of work: the refused action's own transaction (if any) rolls back, the refusal stays.
    with ctx.db.session() as s:
        audit_q.append_event(
            s,
            actor=principal.username,
            actor_id=principal.user_id,
            action="access.denied",
            object_type="action",
            object_id=object_id or action,
            details={"action": action, "reason": reason},
        )
    logger.warning("access denied: user=%s action=%s reason=%s", principal.username, action, reason)


def refresh_principal(ctx: AppContext, principal: Principal, action: str | None = None) -> Principal:
    """Re-read the user; raise :class:`SessionEnded` if they were deleted or disabled since signing in, or if
    their sessions were ended (password reset: the stored session epoch moved past the principal's).

    The shell principal has no session: a disabled (or missing) shell user is refused with :class:`AccessDenied`,
    audited as ``access.denied`` for ``action``, with the message that says how to re-enable it.

    A read-only session: every guarded call runs this, and it must never wait for (or hold) the write lock."""
    with ctx.db.session(readonly=True) as s:
        user = users_q.get_user(s, principal.user_id)
        active = user is not None and not user.disabled
        if active and user is not None and (principal.is_shell or user.session_epoch == principal.epoch):
            return Principal(user.id, user.username, frozenset(user.roles), user.session_epoch)
    if principal.is_shell:
        _record_denial(ctx, principal, action or "shell", "shell user disabled", None)
        raise AccessDenied(shell_disabled_message(principal.username))
    if not active:
        raise SessionEnded("Your account is no longer active. Please sign in again.")
    raise SessionEnded("Your password was reset, which ends every open session. Please sign in again.")


def authorize(ctx: AppContext, principal: Principal, action: str) -> Principal:
    """Check ``action`` for the user as they are now in the database; refusals are audited and raised."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")  # a bug in the caller, not a user error
    current = refresh_principal(ctx, principal, action)
    if not allowed(current.roles, action):
        roles = ", ".join(sorted(current.roles)) or "no roles"
        _record_denial(ctx, current, action, f"roles: {roles}", None)
        raise AccessDenied(f"Your roles ({roles}) do not allow {ACTIONS[action][1]}.")
    return current


def check_page(ctx: AppContext, principal: Principal, page: str) -> Principal:
    """Authorise opening ``page`` (a key of :data:`PAGES`)."""
    return authorize(ctx, principal, PAGES[page])


P = ParamSpec("P")
R = TypeVar("R")


def requires(action: str) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorate a service function ``fn(ctx, actor, ...)`` so it runs only for users allowed ``action``.

    The function receives the refreshed principal. The action is kept on the wrapper as ``required_action``
    so tests can enumerate every guarded service.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")

    def decorate(fn: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(fn)
        def wrapper(ctx: AppContext, actor: Principal, *args: Any, **kwargs: Any) -> R:
            current = authorize(ctx, actor, action)
            return fn(ctx, current, *args, **kwargs)

        wrapper.required_action = action  # type: ignore[attr-defined]
        return wrapper

    return decorate


# --- separation of duties -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DutyRule:
    """Nobody may act on an object whose owner (as found by ``owner_of``) is themselves."""

    name: str
    description: str
    owner_of: Callable[[Session, str], int | None]


DUTY_RULES: dict[str, DutyRule] = {}


def register_duty_rule(rule: DutyRule) -> DutyRule:
    DUTY_RULES[rule.name] = rule
    return rule


def _username_of(ctx: AppContext, user_id: int) -> str:
    # Its own read session: the caller's may hold the write lock, which the refusal's record then needs.
    with ctx.db.session(readonly=True) as s:
        user = users_q.get_user(s, user_id)
        return user.username if user is not None else ""


def ensure_separation(ctx: AppContext, session: Session, actor: Principal, rule_name: str, object_id: str) -> None:
    """Raise :class:`SeparationOfDuties` (and audit it) if ``actor`` owns the object under ``rule_name``.

    The owner is compared as a person (:func:`same_person`): what ``shell:alice`` did on the command line, the
    console account ``alice`` does not check, and the other way round."""
    rule = DUTY_RULES[rule_name]
    owner = rule.owner_of(session, object_id)
    if owner is None:
        return
    if owner == actor.user_id or same_person(_username_of(ctx, owner), actor.username):
        _record_denial(ctx, actor, rule_name, "separation of duties", object_id)
        raise SeparationOfDuties(f"Separation of duties: {rule.description}.")
