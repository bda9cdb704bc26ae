"""Audit log for analysts and admins: search, verify the hash chain, export (the export is itself audited)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput
from console.textsafe import csv_safe
from db import audit as audit_q

MAX_ROWS_ON_SCREEN = 1000
EXPORT_COLUMNS = ("seq", "ts", "actor", "actor_id", "action", "object_type", "object_id", "details", "prev_hash", "hash")


@dataclass(frozen=True)
class AuditFilter:
    since: date | None = None
    until: date | None = None  # inclusive day
    actor: str | None = None
    action_prefix: str | None = None

    def validated(self) -> AuditFilter:
        if self.since and self.until and self.since > self.until:
            raise InvalidInput("The start date is after the end date.")
        actor = (self.actor or "").strip() or None
        prefix = (self.action_prefix or "").strip() or None
        if prefix and len(prefix) > 100:
            raise InvalidInput("The action filter is too long.")
        return AuditFilter(self.since, self.until, actor, prefix)

    def query_args(self) -> dict:
        from datetime import UTC

        return {
            "since": datetime.combine(self.since, time.min, UTC) if self.since else None,
            "until": datetime.combine(self.until + timedelta(days=1), time.min, UTC) if self.until else None,
            "actor": self.actor,
            "action_prefix": self.action_prefix,
        }


def _rows(ctx: AppContext, flt: AuditFilter, limit: int | None) -> list[dict]:
    # Read-only: a long search or export must not hold the write lock every other click waits for.
    with ctx.db.session(readonly=True) as s:
        return [audit_q.event_to_dict(e) for e in audit_q.iter_events(s, limit=limit, **flt.query_args())]


@requires("audit.search")
def search(ctx: AppContext, actor: Principal, flt: AuditFilter) -> list[dict]:
    return _rows(ctx, flt.validated(), MAX_ROWS_ON_SCREEN)


@requires("audit.verify")
def verify(ctx: AppContext, actor: Principal):  # noqa: ANN201 - db.audit.ChainReport
    report = audit_q.verify_chain(ctx.db)
    with ctx.db.session() as s:
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="audit.verify",
                             details={"ok": report.ok, "checked": report.checked, "first_bad_seq": report.first_bad_seq})
    return report


@requires("audit.export")
def export_csv(ctx: AppContext, actor: Principal, flt: AuditFilter) -> bytes:
    """The matching events as CSV (cells neutralised against formula injection); the export is audited."""
    flt = flt.validated()
    rows = _rows(ctx, flt, None)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(EXPORT_COLUMNS)
    for r in rows:
        r = {**r, "details": json.dumps(r["details"], sort_keys=True, ensure_ascii=False)}
        writer.writerow([csv_safe(r[c]) for c in EXPORT_COLUMNS])
    with ctx.db.session() as s:
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="audit.export",
                             details={"rows": len(rows), "format": "csv",
                                      "filter": {k: str(v) for k, v in flt.__dict__.items() if v is not None}})
    return buf.getvalue().encode("utf-8")
