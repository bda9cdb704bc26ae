"""Four-eyes policy changes: an admin proposes a policy text with a reason and a backtest; another admin approves.

Like a promotion request (:mod:`console.services.promotion`): the request freezes what it compares against (the
policy version in force, ``base_version``) and its evidence (the backtest of the last N days, run when it is
proposed: :mod:`console.services.backtest`). Somebody else approves or rejects it; the requester never can, whatever
roles they hold (duty rule ``policy.decide``), and may cancel it. Only approval stores the new ``policy_versions``
row, which every console then puts in force (:func:`console.services.policy.follow`). A request whose base
version is no longer the newest is stale: it cannot be approved (its backtest compared with another policy).

Audited in the transaction of each change: ``policy.change_requested`` / ``approved`` / ``rejected`` /
``cancelled``, with the SHA-256 of the old and new texts and the backtest's summary; approval also writes
``policy.version`` for the stored version.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from console.services import backtest as backtest_svc
from console.services import four_eyes
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import ConsoleError, InvalidInput, NotFound
from console.services.policy import follow, validate
from console.services.text import optional_text, required_text
from db import policy_changes as changes_q
from db import safety as safety_q
from db.tables import POLICY_CHANGE_STATUSES, PolicyChangeRequest, PolicyVersion

logger = logging.getLogger(__name__)

MAX_REASON_CHARS = 1000
MAX_POLICY_CHARS = 100_000
EXAMPLE_CHARS = 300  # of each stored text shown beside an example


DECIDE_RULE = four_eyes.decide_rule("policy.decide", "nobody approves or rejects their own policy change request",
                                     changes_q.get_request)


@dataclass(frozen=True)
class ChangeView:
    id: int
    status: str
    base_version: int
    file_version: str
    content: str
    sha256: str
    reason: str
    days: int
    backtest: dict[str, Any]
    requested_by: str
    requested_by_id: int
    created_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    decision_note: str | None
    applied_version: int | None
    stale: bool  # pending, but the policy in force is no longer base_version: cannot be approved
    diff: str  # unified diff of the base version's text against the proposed one


def _view(s: Session, r: PolicyChangeRequest, newest: int | None, base_text: str | None = None) -> ChangeView:
    if base_text is None:
        base = s.scalars(_version_stmt(r.base_version)).first()
        base_text = "" if base is None else base.content
    diff = "".join(difflib.unified_diff(base_text.splitlines(keepends=True), r.content.splitlines(keepends=True),
                                        f"revision {r.base_version}", "proposed", n=2))
    return ChangeView(r.id, r.status, r.base_version, r.file_version, r.content, r.sha256, r.reason, r.days,
                      r.backtest, four_eyes.username(s, r.requested_by_id) or "?", r.requested_by_id, r.created_at,
                      four_eyes.username(s, r.decided_by_id), r.decided_at, r.decision_note, r.applied_version,
                      r.status == "pending" and newest != r.base_version, diff)


def _version_stmt(version: int) -> Select[PolicyVersion]:
    return select(PolicyVersion).where(PolicyVersion.version == version)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@requires("policy.manage")
def propose(ctx: AppContext, actor: Principal, content: str, reason: str, days: int) -> ChangeView:
    """Validate ``content``, backtest it over the last ``days`` days against the policy in force, and store the
    request (pending) with its backtest. Nothing changes in force until another admin approves it."""
    if isinstance(content, str) and len(content) > MAX_POLICY_CHARS:
        raise InvalidInput(f"The policy is {len(content):,} characters; at most {MAX_POLICY_CHARS:,} are allowed.")
    proposed = validate(content)
    reason = required_text(reason, "the reason", MAX_REASON_CHARS)
    days = backtest_svc.check_days(days)
    now = ctx.now()
    with ctx.db.session(readonly=True) as s:  # the replay reads only: no write lock while it runs
        base = safety_q.latest_policy_version(s)
        if base is None:
            raise InvalidInput("No policy is stored yet: start the console once so the policy file seeds it.")
        if base.sha256 == proposed.sha256:
            raise InvalidInput(f"The proposed policy is the one in force (revision {base.version}); change it first.")
        base_version, base_text, base_sha = base.version, base.content, base.sha256
        current = validate(base_text)
        result = backtest_svc.run(s, current, proposed, days=days, now=now)
    summary = result.summary()
    with ctx.db.session() as s:
        pending = [r for r in changes_q.list_requests(s, status="pending") if r.sha256 == proposed.sha256]
        if pending:
            raise InvalidInput(f"Request #{pending[0].id} already proposes this exact policy; approve, reject or "
                               "cancel it first.")
        row = changes_q.create_request(
            s, base_version=base_version, content=proposed.source_text, sha256=proposed.sha256,
            file_version=proposed.version, reason=reason, days=days, backtest=result.to_dict(),
            requested_by_id=actor.user_id, actor=actor.username,
            details={"base_version": base_version, "old_sha256": base_sha, "new_sha256": proposed.sha256,
                     "file_version": proposed.version, "backtest": summary})
        logger.info("policy change #%s proposed by %s: %s", row.id, actor.username, summary)
        return _view(s, row, base_version, base_text)


def _locked_pending(s: Session, request_id: int) -> PolicyChangeRequest:
    return four_eyes.ensure_pending(changes_q.lock_request(s, request_id), request_id, "policy change request",
                                    "Policy change request")


def _check_id(request_id: object) -> int:
    if isinstance(request_id, bool) or not isinstance(request_id, int) or request_id < 1:
        raise InvalidInput(f"The request id must be a positive whole number, got {request_id!r}.")
    return request_id


@requires("policy.manage")
def approve(ctx: AppContext, actor: Principal, request_id: int, note: str | None = None) -> ChangeView:
    """Approve someone else's request: store its policy as the next version and put it in force here (every other
    console follows within its reconcile interval). Refused when the request is stale."""
    request_id = _check_id(request_id)
    four_eyes.ensure_not_own(ctx, actor, DECIDE_RULE, request_id)
    note = optional_text(note, "the note", MAX_REASON_CHARS)
    try:
        with ctx.db.session() as s:
            request = _locked_pending(s, request_id)
            latest = changes_q.lock_latest_policy_version(s)
            if latest is None or latest.version != request.base_version:
                raise InvalidInput(
                    f"Request #{request_id} is stale: it was backtested against policy revision "
                    f"{request.base_version}, but revision {latest.version if latest else '?'} is in force now. "
                    "Reject or cancel it and propose the change again.")
            stored = safety_q.store_policy_version(s, request.content, actor.user_id, actor=actor.username)
            changes_q.decide(s, request, status="approved", actor=actor.username, actor_id=actor.user_id, note=note,
                             applied_version=stored.version,
                             details={"base_version": request.base_version, "version": stored.version,
                                      "old_sha256": latest.sha256, "new_sha256": request.sha256,
                                      "backtest": _summary(request.backtest)})
            view = _view(s, request, stored.version)
    except IntegrityError:  # another approval stored the same revision number first (PostgreSQL)
        raise InvalidInput(f"Request #{request_id} is stale: another policy change was approved at the same "
                           "moment. Reject or cancel it and propose the change again.") from None
    try:
        follow(ctx)  # in force here now; the other consoles follow on their next round
    except ConsoleError as exc:  # the scanners failed to load here: the approval stands, the follower retries
        logger.warning("policy change #%s approved, not yet in force in this process: %s", request_id, exc)
    logger.info("policy change #%s approved by %s: revision %s in force", request_id, actor.username,
                view.applied_version)
    return view


def _summary(backtest: dict[str, Any]) -> dict[str, Any]:
    keys = ("days", "exchanges", "items_before", "items_after", "changed")
    return {k: backtest.get(k) for k in keys}


@requires("policy.manage")
def reject(ctx: AppContext, actor: Principal, request_id: int, note: str) -> ChangeView:
    """Reject someone else's request, saying why."""
    request_id = _check_id(request_id)
    four_eyes.ensure_not_own(ctx, actor, DECIDE_RULE, request_id)
    note = required_text(note, "the note saying why", MAX_REASON_CHARS)
    with ctx.db.session() as s:
        request = _locked_pending(s, request_id)
        latest = safety_q.latest_policy_version(s)
        changes_q.decide(s, request, status="rejected", actor=actor.username, actor_id=actor.user_id, note=note,
                         details=_hashes(s, request))
        return _view(s, request, None if latest is None else latest.version)


def _hashes(s: Session, request: PolicyChangeRequest) -> dict[str, Any]:
    base = s.scalars(_version_stmt(request.base_version)).first()
    return {"base_version": request.base_version, "old_sha256": None if base is None else base.sha256,
            "new_sha256": request.sha256, "backtest": _summary(request.backtest)}


@requires("policy.manage")
def cancel(ctx: AppContext, actor: Principal, request_id: int, note: str | None = None) -> ChangeView:
    """Withdraw one's own pending request (only the requester may)."""
    request_id = _check_id(request_id)
    note = optional_text(note, "the note", MAX_REASON_CHARS)
    with ctx.db.session() as s:
        request = _locked_pending(s, request_id)
        four_eyes.ensure_requester(request, actor, "the admin who proposed a policy change")
        latest = safety_q.latest_policy_version(s)
        changes_q.decide(s, request, status="cancelled", actor=actor.username, actor_id=actor.user_id, note=note,
                         details=_hashes(s, request))
        return _view(s, request, None if latest is None else latest.version)


@requires("policy.view")
def list_changes(ctx: AppContext, actor: Principal, status: str | None = None, limit: int = 50) -> list[ChangeView]:
    """Policy change requests, newest first (``status``: one of pending, approved, rejected, cancelled)."""
    if status is not None and status not in POLICY_CHANGE_STATUSES:
        raise InvalidInput(f"The status must be one of {', '.join(POLICY_CHANGE_STATUSES)}, got {status!r}.")
    with ctx.db.session(readonly=True) as s:
        newest = changes_q.latest_version_number(s)
        return [_view(s, r, newest) for r in changes_q.list_requests(s, status=status, limit=limit)]


@dataclass(frozen=True)
class Example:
    """An exchange whose verdict the proposed policy changes, with its stored (redacted) text, shortened."""

    id: int
    created_at: str
    before: str  # "prompt flag, output allow"
    after: str
    labels: str
    prompt: str
    answer: str


def _verdict(v: dict[str, str]) -> str:
    return ", ".join(f"{d} {v.get(d, 'allow')}" for d in ("prompt", "output"))


def _short(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…"


@requires("policy.view")
def examples(ctx: AppContext, actor: Principal, request_id: int) -> list[Example]:
    """The backtest's example exchanges (at most :data:`console.services.backtest.MAX_EXAMPLES`), with their stored
    redacted text as it is now (erased text reads as erased)."""
    request_id = _check_id(request_id)
    with ctx.db.session(readonly=True) as s:
        request = changes_q.get_request(s, request_id)
        if request is None:
            raise NotFound(f"There is no policy change request #{request_id}.")
        rows = request.backtest.get("examples") or []
        texts = changes_q.exchange_texts(s, [int(r["id"]) for r in rows])
    out = []
    for r in rows:
        t = texts.get(int(r["id"]))
        gone = t is None or t.erased
        out.append(Example(int(r["id"]), str(r.get("created_at", ""))[:16].replace("T", " "),
                           _verdict(r["before"]), _verdict(r["after"]), ", ".join(r.get("labels", [])),
                           "(erased)" if gone or t is None else _short(t.prompt),
                           "(erased)" if gone or t is None else _short(t.response)))
    return out
