"""Who may do what: roles, the action table, page access and separation of duties.

Every service action is declared with :func:`requires`, which re-reads the user from the database on each call
(so a disabled user's open session stops at its next action and role changes apply at once) and records refusals
in the audit log. Pages use the same table to decide what to show, but showing is never the check.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

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
    "dashboard.view": (frozenset({Role.OPERATOR, Role.ANALYST, Role.ADMIN}), "viewing latency dashboards"),
    "slo.manage": (frozenset({Role.ADMIN}), "setting service-level objectives"),
    "loadtest.run": (frozenset({Role.OPERATOR, Role.ADMIN}), "running load tests"),
    "review.work": (frozenset({Role.REVIEWER}), "working the review queue"),
    "review.reveal_raw": (frozenset({Role.REVIEWER}), "revealing raw text"),
    "review.escalations": (frozenset({Role.ADMIN}), "deciding escalated review items"),
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
    "policy.manage": (frozenset({Role.ADMIN}), "changing the safety policy"),
    "policy.view": (frozenset({Role.ADMIN, Role.REVIEWER}), "viewing the safety policy"),
    "audit.search": (frozenset({Role.ANALYST, Role.ADMIN}), "searching the audit log"),
    "audit.export": (frozenset({Role.ANALYST, Role.ADMIN}), "exporting the audit log"),
    "audit.export_raw": (frozenset({Role.ADMIN}), "asking for an export with raw text"),
    "audit.approve_export": (frozenset({Role.ADMIN}), "approving an export with raw text"),
    "audit.verify": (frozenset({Role.ANALYST, Role.ADMIN}), "verifying the audit chain"),
}

# page key -> the action that opens it. The navigation shows a page only when the action is allowed.
PAGES: dict[str, str] = {
    "chat": "chat.use",
    "dashboard": "dashboard.view",
    "review": "review.work",
    "escalations": "review.escalations",
    "models": "models.view",
    "promotions": "promotion.view",
    "compare": "models.evaluate",
    "evaluations": "models.evaluate",
    "users": "users.manage",
    "policy": "policy.view",
    "audit": "audit.search",
}


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


def refresh_principal(ctx: AppContext, principal: Principal) -> Principal:
    """Re-read the user; raise :class:`SessionEnded` if they were deleted or disabled since signing in, or if
    their sessions were ended (password reset: the stored session epoch moved past the principal's).

    A read-only session: every guarded call runs this, and it must never wait for (or hold) the write lock."""
    with ctx.db.session(readonly=True) as s:
        user = users_q.get_user(s, principal.user_id)
        if user is None or user.disabled:
            raise SessionEnded("Your account is no longer active. Please sign in again.")
        if user.session_epoch != principal.epoch:
            raise SessionEnded("Your password was reset, which ends every open session. Please sign in again.")
        return Principal(user.id, user.username, frozenset(user.roles), user.session_epoch)


def authorize(ctx: AppContext, principal: Principal, action: str) -> Principal:
    """Check ``action`` for the user as they are now in the database; refusals are audited and raised."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")  # a bug in the caller, not a user error
    current = refresh_principal(ctx, principal)
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


def ensure_separation(ctx: AppContext, session: Session, actor: Principal, rule_name: str, object_id: str) -> None:
    """Raise :class:`SeparationOfDuties` (and audit it) if ``actor`` owns the object under ``rule_name``."""
    rule = DUTY_RULES[rule_name]
    owner = rule.owner_of(session, object_id)
    if owner is not None and owner == actor.user_id:
        _record_denial(ctx, actor, rule_name, "separation of duties", object_id)
        raise SeparationOfDuties(f"Separation of duties: {rule.description}.")
