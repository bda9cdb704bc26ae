"""The checks every four-eyes request shares (promotion requests, :mod:`console.services.promotion`; policy change
requests, :mod:`console.services.policy_changes`; raw-text export requests, :mod:`console.services.export_approvals`;
erasure requests, :mod:`console.services.retention`): somebody else decides it, never the requester (a duty rule,
its refusals audited); only a pending request is decided or cancelled; only the requester cancels it.

Each kind keeps its own words: the functions take what to call the request, so every message reads as before.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol, TypeVar

from sqlalchemy.orm import Session

from console.services.access import DutyRule, Principal, ensure_separation, register_duty_rule
from console.services.context import AppContext
from console.services.errors import AccessDenied, InvalidInput, NotFound
from db import users as users_q


class Request(Protocol):
    """What the checks read of a stored request row."""

    @property
    def status(self) -> str: ...

    @property
    def requested_by_id(self) -> int | None: ...  # None: asked from the shell (erasure requests)


R = TypeVar("R", bound=Request)


def decide_rule(name: str, description: str, get_request: Callable[[Session, int], Request | None]) -> DutyRule:
    """Register the duty rule ``name``: nobody approves or rejects a request of theirs (found by ``get_request``)."""

    def requester_of(session: Session, request_id: str) -> int | None:
        request = get_request(session, int(request_id))
        return None if request is None else request.requested_by_id

    return register_duty_rule(DutyRule(name, description, owner_of=requester_of))


def ensure_not_own(ctx: AppContext, principal: Principal, rule: DutyRule, request_id: int) -> None:
    """Refuse (and audit) ``principal`` deciding a request of their own under ``rule`` (a check the services run
    after their ``@requires``, not a service itself: hence not ``actor``)."""
    # In a read-only unit of work before the write transaction: the refusal is audited in its own transaction,
    # which on SQLite would wait behind a write lock held by the caller. The requester never changes.
    with ctx.db.session(readonly=True) as s:
        ensure_separation(ctx, s, principal, rule.name, str(request_id))


def chosen_id(value: object, what: str) -> int:
    """``value`` if it is a request id (a positive int, not a bool): InvalidInput "Choose <what>." otherwise
    (``what``: "an export request")."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"Choose {what}.")
    return value


def ensure_found(request: R | None, request_id: int, what: str) -> R:
    """The request, if there is one: NotFound "There is no <what> #N." otherwise."""
    if request is None:
        raise NotFound(f"There is no {what} #{request_id}.")
    return request


def ensure_pending(request: R | None, request_id: int, what: str, named: str = "Request",
                   still: Collection[str] = ("pending",)) -> R:
    """The request, if there is one and it is still pending (or in another of the statuses ``still``): NotFound
    "There is no <what> #N." or InvalidInput "<named> #N is already <status>." otherwise."""
    request = ensure_found(request, request_id, what)
    if request.status not in still:
        raise InvalidInput(f"{named} #{request_id} is already {request.status}.")
    return request


def ensure_requester(request: Request, actor: Principal, who: str, to: str = "cancel it",
                     otherwise: str | None = "reject it instead") -> None:
    """Only the requester cancels a request (or does ``to`` with it); anybody else is refused: AccessDenied
    "Only <who> can <to>; <otherwise>." (``who``: "the person who asked for a promotion"; without ``otherwise``,
    "Only <who> can <to>.")."""
    if request.requested_by_id != actor.user_id:
        raise AccessDenied(f"Only {who} can {to}" + ("." if otherwise is None else f"; {otherwise}."))


def username(s: Session, user_id: int | None) -> str | None:
    """The requester's or decider's user name (None for no one, or a user that is gone)."""
    user = None if user_id is None else users_q.get_user(s, user_id)
    return None if user is None else user.username
