"""Exports with raw (unredacted) text, under four eyes: an admin asks with a reason, another admin approves or
rejects, and only the requester may run the approved export, once (``console.services.exports`` writes it).
Every step is an audit event; a refusal too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from console.services import exports as exports_svc
from console.services import four_eyes
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import AccessDenied, InvalidInput
from console.services.text import optional_text, required_text
from db import audit as audit_q
from db import export_approvals as approvals_q
from db import users as users_q
from db.exports import ExportFilter
from db.tables import ExportRequest

logger = logging.getLogger(__name__)

MIN_REASON_CHARS = 10
MAX_REASON_CHARS = 2000
MAX_NOTE_CHARS = 2000
WHAT = "export request"


@dataclass(frozen=True)
class ExportRequestView:
    id: int
    what: str
    format: str
    filter: ExportFilter
    reason: str
    requested_by: str
    requested_by_id: int
    status: str
    decided_by: str | None
    decision_note: str | None
    created_at: datetime
    decided_at: datetime | None
    used_at: datetime | None


DECIDE_RULE = four_eyes.decide_rule("audit.export_raw.decide",
                                    "nobody approves or rejects their own request for a raw-text export",
                                    approvals_q.get_export_request)


def _view(s: Session, r: ExportRequest) -> ExportRequestView:
    names = users_q.usernames(s, [r.requested_by_id, r.decided_by_id])
    return ExportRequestView(
        r.id, r.what, r.format, ExportFilter.from_dict(r.filters or {}), r.reason,
        names.get(r.requested_by_id, "?"), r.requested_by_id, r.status,
        None if r.decided_by_id is None else names.get(r.decided_by_id, "?"), r.decision_note, r.created_at,
        r.decided_at, r.used_at,
    )


def _redact(ctx: AppContext, text: str) -> str:
    from console.services.moderation import redact_pii

    return redact_pii(ctx, text)


def _deny(ctx: AppContext, actor: Principal, action: str, reason: str, request_id: int) -> None:
    with ctx.db.session() as s:
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="access.denied",
                             object_type="export_request", object_id=request_id,
                             details={"action": action, "reason": reason})
    logger.warning("access denied: user=%s action=%s request=%s reason=%s", actor.username, action, request_id,
                   reason)


def _ensure_requester(ctx: AppContext, actor: Principal, request_id: int, action: str, who: str, to: str) -> None:
    # A read-only unit of work first: the refusal is audited after it, in its own transaction. The requester never
    # changes.
    try:
        with ctx.db.session(readonly=True) as s:
            request = four_eyes.ensure_found(approvals_q.get_export_request(s, request_id), request_id, WHAT)
            four_eyes.ensure_requester(request, actor, who, to, otherwise=None)
    except AccessDenied:
        _deny(ctx, actor, action, "not the requester", request_id)
        raise


def _locked(s: Session, request_id: int) -> ExportRequest:
    return four_eyes.ensure_found(approvals_q.lock_export_request(s, request_id), request_id, WHAT)


def _request_id(value: object) -> int:
    return four_eyes.chosen_id(value, "an export request")


@requires("audit.export_raw")
def request_raw_export(ctx: AppContext, actor: Principal, spec: exports_svc.ExportSpec,
                       reason: str) -> ExportRequestView:
    """Ask for an export of exchanges with their raw text; another admin must approve it. Audited."""
    spec = exports_svc.validated_spec(spec)
    if spec.what != "exchanges":
        raise InvalidInput("Raw text exists only for exchanges: choose exchanges.")
    text = required_text(reason, "the reason for the raw text", MAX_REASON_CHARS, min_len=MIN_REASON_CHARS)
    text = _redact(ctx, text)
    with ctx.db.session() as s:
        request = approvals_q.create_export_request(
            s, what=spec.what, format=spec.format, filters=spec.filter.to_dict(), reason=text,
            requested_by_id=actor.user_id, created_at=ctx.now())
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="audit.export_raw_requested",
                             object_type="export_request", object_id=request.id,
                             details={"what": spec.what, "format": spec.format, "filters": spec.filter.to_dict(),
                                      "reason": text})
        return _view(s, request)


@requires("audit.approve_export")
def decide_raw_export(ctx: AppContext, actor: Principal, request_id: int, approve: bool,
                      note: str | None = None) -> ExportRequestView:
    """Approve or reject someone else's pending raw-text export request (never one's own). Audited."""
    request_id = _request_id(request_id)
    if not isinstance(approve, bool):
        raise InvalidInput("Choose approve or reject.")
    with ctx.db.session(readonly=True) as s:
        four_eyes.ensure_found(approvals_q.get_export_request(s, request_id), request_id, WHAT)
    four_eyes.ensure_not_own(ctx, actor, DECIDE_RULE, request_id)
    text = optional_text(note, "the note", MAX_NOTE_CHARS)
    if text is not None:
        text = _redact(ctx, text)
    status = "approved" if approve else "rejected"
    with ctx.db.session() as s:
        request = four_eyes.ensure_pending(approvals_q.lock_export_request(s, request_id), request_id, WHAT,
                                           "Export request")
        request.status = status
        request.decided_by_id = actor.user_id
        request.decision_note = text
        request.decided_at = ctx.now()
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action=f"audit.export_raw_{status}",
                             object_type="export_request", object_id=request_id,
                             details={"requested_by_id": request.requested_by_id, "note": text})
        return _view(s, request)


@requires("audit.export_raw")
def cancel_raw_export(ctx: AppContext, actor: Principal, request_id: int) -> ExportRequestView:
    """Withdraw one's own pending or approved (not yet used) raw-text export request. Audited."""
    request_id = _request_id(request_id)
    _ensure_requester(ctx, actor, request_id, "audit.export_raw.cancel", "the person who asked for an export",
                      "cancel it")
    with ctx.db.session() as s:
        request = four_eyes.ensure_pending(approvals_q.lock_export_request(s, request_id), request_id, WHAT,
                                           "Export request", still=("pending", "approved"))
        before = request.status
        request.status = "cancelled"
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="audit.export_raw_cancelled",
                             object_type="export_request", object_id=request_id, details={"before": before})
        return _view(s, request)


@requires("audit.export_raw")
def list_export_requests(ctx: AppContext, actor: Principal, status: str | None = None,
                         limit: int = 100) -> list[ExportRequestView]:
    """Raw-text export requests, newest first (``status``: pending, approved, rejected, cancelled or used)."""
    if status is not None and status not in ("pending", "approved", "rejected", "cancelled", "used"):
        raise InvalidInput(f"Unknown request status {status!r}.")
    with ctx.db.session(readonly=True) as s:
        rows = approvals_q.list_export_requests(s, status=status, limit=max(1, min(limit, 1000)))
        return [_view(s, r) for r in rows]


@requires("audit.export_raw")
def run_approved_raw_export(ctx: AppContext, actor: Principal, request_id: int,
                            out_path: Path) -> exports_svc.ExportResult:
    """Run one's own approved request, once: exchanges with their raw text. Audited.

    The approval is used up when the export starts; if the export fails (nothing is kept), it is approved again.
    """
    request_id = _request_id(request_id)
    _ensure_requester(ctx, actor, request_id, "audit.export_raw.run", "the person who asked for a raw-text export",
                      "run it")
    path = exports_svc.check_out_path(out_path)
    with ctx.db.session() as s:
        request = _locked(s, request_id)
        if request.status == "used":
            raise InvalidInput(f"Export request #{request_id} was already used; ask again for another export.")
        if request.status != "approved":
            raise InvalidInput(f"Export request #{request_id} is {request.status}, not approved.")
        spec = exports_svc.validated_spec(exports_svc.ExportSpec(request.what, request.format,
                                                                 ExportFilter.from_dict(request.filters or {})))
        request.status = "used"
        request.used_at = ctx.now()
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="audit.export_raw_run",
                             object_type="export_request", object_id=request_id, details={"file": path.name})
    try:
        return exports_svc.write_export(ctx, actor.username, actor.user_id, spec, path, include_raw=True,
                                        request_id=request_id)
    except BaseException:
        try:
            with ctx.db.session() as s:  # nothing left the store: the approval may be used again
                request = _locked(s, request_id)
                if request.status == "used":
                    request.status = "approved"
                    request.used_at = None
        except Exception:
            logger.exception("could not restore the approval of export request #%s", request_id)
        raise
