"""Searching the audit log, for analysts and admins: keyset pages newest first, one event with those around it,
and the export of what the page's filter shows (``console.services.exports`` writes it).

Every search and every opened event is itself an audit event. The chain's key, checkpoints and verification live
in ``console.services.audit``.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy.exc import OperationalError

from console.services import exports as exports_svc
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput, NotFound, StorageUnavailable
from db import audit as audit_q
from db import audit_search as audit_search_q

logger = logging.getLogger(__name__)

MAX_PAGE_ROWS = 500  # the most rows one search returns (the page shows 100 at a time)
AROUND = 5  # events shown before and after an opened event
# The longest value each text filter takes (the column sizes, or a sane bound for free text).
FILTER_LIMITS: dict[str, int] = {"actor": 200, "action_prefix": 100, "action": 100, "object_type": 100,
                                 "object_id": 200, "model_version": 200, "text": 200}
FILTER_LABELS: dict[str, str] = {"actor": "actor", "action_prefix": "action prefix", "action": "action",
                                 "object_type": "target type", "object_id": "target id",
                                 "model_version": "model version", "text": "text"}


def _minute(value: datetime | date | None, label: str) -> datetime | None:
    """A filter bound as an aware UTC datetime cut to the minute (a naive one is taken as UTC; a date as 00:00)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        if not isinstance(value, date):
            raise InvalidInput(f"The {label} must be a date and time.")
        value = datetime.combine(value, time.min)
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(second=0, microsecond=0)


def _text(value: object, field_name: str) -> str | None:
    label = FILTER_LABELS[field_name]
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"The {label} filter must be text.")
    value = value.strip()
    if not value:
        return None
    if len(value) > FILTER_LIMITS[field_name]:
        raise InvalidInput(f"The {label} filter is too long (at most {FILTER_LIMITS[field_name]} characters).")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise InvalidInput(f"The {label} filter contains control characters.")
    return value


@dataclass(frozen=True)
class AuditFilter:
    """What an analyst searches (and exports) by; every field is optional and the given ones must all match.

    ``since`` (inclusive) and ``until`` (exclusive) are datetimes taken at minute precision, in UTC (a naive value
    is UTC). ``action_prefix`` matches the start of an action (``"auth."``), ``action`` one exact action.
    ``object_type``/``object_id`` name the target; ``model_version`` a version name; ``text`` is a
    case-insensitive substring of the event's details. Call :meth:`validated` before use (the services do).
    """

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action_prefix: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    model_version: str | None = None
    text: str | None = None
    action: str | None = None

    def validated(self) -> AuditFilter:
        """The same filter, normalised (trimmed, empty as None, times in UTC to the minute), or InvalidInput."""
        since, until = _minute(self.since, "start"), _minute(self.until, "end")
        if since is not None and until is not None and since >= until:
            raise InvalidInput(f"The start ({since:%Y-%m-%d %H:%M} UTC) must be before the end "
                               f"({until:%Y-%m-%d %H:%M} UTC).")
        texts = {name: _text(getattr(self, name), name) for name in FILTER_LIMITS}
        return AuditFilter(since=since, until=until, **texts)

    def to_query(self) -> audit_search_q.EventQuery:
        """The database query for this (validated) filter."""
        return audit_search_q.EventQuery(**{f.name: getattr(self, f.name) for f in fields(self)})

    def to_dict(self) -> dict[str, str]:
        """The fields that are set, as text (times in ISO form): for audit details and stored export requests."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value.isoformat() if isinstance(value, datetime) else str(value)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> AuditFilter:
        """The filter :meth:`to_dict` wrote (validated); unknown keys or bad values raise InvalidInput."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise InvalidInput(f"Unknown audit filter fields: {', '.join(unknown)}.")
        values: dict[str, Any] = dict(raw)
        for key in ("since", "until"):
            if isinstance(values.get(key), str):
                try:
                    values[key] = datetime.fromisoformat(values[key])
                except ValueError as exc:
                    raise InvalidInput(f"The {key} time is not a date and time.") from exc
        return cls(**values).validated()


@dataclass(frozen=True)
class AuditPage:
    """One page of search results, newest first; ``next_before_seq`` is the cursor of the next (older) page, None
    on the last page."""

    rows: list[dict[str, Any]]
    next_before_seq: int | None


def _check_cursor(before_seq: object, limit: object) -> tuple[int | None, int]:
    if before_seq is not None and (not isinstance(before_seq, int) or isinstance(before_seq, bool) or before_seq < 1):
        raise InvalidInput("The page cursor must be a positive event number.")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE_ROWS:
        raise InvalidInput(f"A page holds 1 to {MAX_PAGE_ROWS} events.")
    return before_seq, limit


def _read_page(ctx: AppContext, flt: AuditFilter, before_seq: int | None, limit: int) -> AuditPage:
    # Read-only: a search must not hold the write lock every other click waits for.
    with ctx.db.session(readonly=True) as s:
        events = audit_search_q.search_events(s, flt.to_query(), before_seq=before_seq, limit=limit + 1)
        rows = [audit_q.event_to_dict(e) for e in events[:limit]]
    more = len(events) > limit
    return AuditPage(rows=rows, next_before_seq=rows[-1]["seq"] if more and rows else None)


def _record(ctx: AppContext, actor: Principal, what: str, **event: Any) -> None:
    """Append the audit event of a read; a database too busy to take it refuses the read (StorageUnavailable)."""
    try:
        with ctx.db.session() as s:
            audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, **event)
    except OperationalError as exc:
        logger.error("recording %s in the audit log failed: %s", what, exc.orig if exc.orig is not None else exc)
        raise StorageUnavailable(f"The audit log could not record this {what} (the database is busy or full); "
                                 "nothing is shown without that record. Try again in a moment.") from exc


@requires("audit.search")
def search(ctx: AppContext, actor: Principal, flt: AuditFilter, *, before_seq: int | None = None,
           limit: int = 100) -> AuditPage:
    """One page of events matching ``flt``, newest first, older than ``before_seq`` (keyset paging).

    Each call is audited ("audit.search" with the filter and cursor): call it when the filter or page changes,
    not on every rerun of a page.
    """
    flt = flt.validated()
    before_seq, limit = _check_cursor(before_seq, limit)
    page = _read_page(ctx, flt, before_seq, limit)
    _record(ctx, actor, "search", action="audit.search",
            details={"filter": flt.to_dict(), "before_seq": before_seq, "limit": limit, "rows": len(page.rows)})
    return page


@requires("audit.search")
def actions(ctx: AppContext, actor: Principal) -> list[str]:
    """Every action that occurs in the log (for the page's picker)."""
    with ctx.db.session(readonly=True) as s:
        return audit_search_q.distinct_actions(s)


@requires("audit.search")
def event_detail(ctx: AppContext, actor: Principal, seq: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One event in full and the events around it (``AROUND`` before and after, itself included, in seq order).

    Audited as "audit.view_event"."""
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise InvalidInput("An event number is a positive whole number.")
    with ctx.db.session(readonly=True) as s:
        event = audit_search_q.get_event(s, seq)
        if event is None:
            raise NotFound(f"There is no audit event {seq}.")
        found = audit_q.event_to_dict(event)
        around = [audit_q.event_to_dict(e) for e in audit_search_q.events_around(s, seq, AROUND)]
    _record(ctx, actor, "view", action="audit.view_event", object_type="audit_event", object_id=seq,
            details={"action": found["action"]})
    return found, around


# What an export of the page's filter keeps: exports filter by time, actor, action prefix (events) and model version.
_NOT_EXPORTED = ("action", "object_type", "object_id", "text")


def export_spec(flt: AuditFilter, what: str, fmt: str) -> exports_svc.ExportSpec:
    """The export (``what``: events, exchanges or decisions; ``fmt``: csv, jsonl or parquet) of the page's filter.

    An events export applies every filter of the page; exchanges and decisions apply the time range, the user and
    the model version (see :func:`not_exported`). Raises InvalidInput for a bad filter, kind or format.
    """
    flt = flt.validated()
    events = what == "events"
    spec = exports_svc.ExportSpec(what, fmt, exports_svc.ExportFilter(
        since=flt.since, until=flt.until, actor=flt.actor, model_version=flt.model_version,
        action_prefix=flt.action_prefix if events else None, action=flt.action if events else None,
        object_type=flt.object_type if events else None, object_id=flt.object_id if events else None,
        text=flt.text if events else None))
    return exports_svc.validated_spec(spec)


def not_exported(flt: AuditFilter, what: str) -> list[str]:
    """The labels of the filters set in ``flt`` that an export of ``what`` does not apply."""
    names = [] if what == "events" else [*_NOT_EXPORTED, "action_prefix"]
    return [FILTER_LABELS[n] for n in names if getattr(flt, n) not in (None, "")]
