"""Audit log for analysts and admins: search it (keyset pages, newest first), open one event, verify the hash chain.

Every search and every opened event is itself an audit event. Exports live in ``console.services.exports``.
"""

from __future__ import annotations

import json
import logging
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from console.services import exports as exports_svc
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import ConsoleError, InvalidInput, NotFound, StorageUnavailable
from console.services.periodic import PeriodicTask
from console.services.text import clean_text
from db import audit as audit_q
from db import audit_queries as audit_search

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

    def to_query(self) -> audit_search.EventQuery:
        """The database query for this (validated) filter."""
        return audit_search.EventQuery(**{f.name: getattr(self, f.name) for f in fields(self)})

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
        events = audit_search.search_events(s, flt.to_query(), before_seq=before_seq, limit=limit + 1)
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
        return audit_search.distinct_actions(s)


@requires("audit.search")
def event_detail(ctx: AppContext, actor: Principal, seq: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One event in full and the events around it (``AROUND`` before and after, itself included, in seq order).

    Audited as "audit.view_event"."""
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise InvalidInput("An event number is a positive whole number.")
    with ctx.db.session(readonly=True) as s:
        event = audit_search.get_event(s, seq)
        if event is None:
            raise NotFound(f"There is no audit event {seq}.")
        found = audit_q.event_to_dict(event)
        around = [audit_q.event_to_dict(e) for e in audit_search.events_around(s, seq, AROUND)]
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


# ---- the anchor: signed checkpoints ----

_ANCHORS: dict[tuple[Path, Path], audit_q.AuditAnchor] = {}
_ANCHOR_LOCK = threading.Lock()


class AuditKeyMissing(StorageUnavailable):
    """The audit key file is gone while checkpoints signed with it exist: restore it or rotate the key."""


def _signed_key_ids(ctx: AppContext) -> set[str]:
    with ctx.db.session(readonly=True) as s:
        ids = {c.key_id for c in audit_q.stored_checkpoints(s)}
    path = ctx.settings.audit_checkpoint_file
    if path.exists():
        ids |= {c.key_id for c in audit_q.read_checkpoint_file(path)[0]}
    return ids


def anchor(ctx: AppContext) -> audit_q.AuditAnchor:
    """The anchor that signs this console's checkpoints.

    Its key file is created (owner-only) only while nothing was signed yet (a new installation). When checkpoints exist and the file is missing, :class:`AuditKeyMissing` says which file
    and how to go on: a silently new key would sign over the old ones, and verification would no longer check them.
    """
    key = (ctx.settings.audit_key_file, ctx.settings.audit_checkpoint_file)
    with _ANCHOR_LOCK:
        found = _ANCHORS.get(key)
        if found is None:
            created = not key[0].exists()
            if created:
                signed = _signed_key_ids(ctx)
                if signed:
                    raise AuditKeyMissing(
                        f"The audit key file {key[0]} is missing, but {len(signed)} key(s) signed the audit "
                        f"checkpoints ({', '.join(sorted(signed))}). Restore the file from your backup (chmod 600), "
                        "or start a new key with `llm-console audit rotate-key --reason TEXT` (recorded in the audit "
                        "log). The console does not start without it.")
            try:
                found = audit_q.AuditAnchor.load(*key)
            except (OSError, ValueError) as exc:
                raise StorageUnavailable(f"The audit key cannot be used: {exc}") from None
            _ANCHORS[key] = found
        return found


def check_key(ctx: AppContext) -> None:
    """At start-up: raise :class:`AuditKeyMissing` (or :class:`StorageUnavailable`) if the audit key cannot sign."""
    with _ANCHOR_LOCK:
        _ANCHORS.pop((ctx.settings.audit_key_file, ctx.settings.audit_checkpoint_file), None)  # look at the file now
    anchor(ctx)


def rotate_key_cli(ctx: AppContext, reason: str) -> dict[str, Any]:
    """Start a new audit key from the shell (actor ``cli``); the rotation is an ``audit.key_rotated`` event.

    The old key, when still there, is kept beside it so its checkpoints still verify; a lost one is recorded as
    lost. Returns the event's details."""
    text = clean_text(reason if isinstance(reason, str) else "").strip()
    if len(text) < 10:
        raise InvalidInput("Say why the key is rotated (at least 10 characters); it is recorded in the audit log.")
    key = (ctx.settings.audit_key_file, ctx.settings.audit_checkpoint_file)
    with _ANCHOR_LOCK:
        try:
            new, details = audit_q.rotate_key(ctx.db, key[0], key[1], actor="cli", reason=text[:2000])
        except (OSError, ValueError) as exc:
            raise StorageUnavailable(f"The audit key cannot be rotated: {exc}") from None
        _ANCHORS[key] = new
    return details


def checkpoint(ctx: AppContext, reason: str) -> audit_q.Checkpoint:
    """Sign the chain's current head now (at export, shutdown, on the schedule, or when asked)."""
    try:
        return anchor(ctx).checkpoint(ctx.db, reason)
    except OperationalError:
        raise StorageUnavailable("The database is busy or unavailable; the checkpoint was not written.") from None


class Checkpointer(PeriodicTask):
    """Signs a checkpoint every ``audit_checkpoint_seconds`` when the chain grew, and one more when it stops."""

    def __init__(self, ctx: AppContext) -> None:
        super().__init__(ctx.settings.audit_checkpoint_seconds, name="audit-checkpointer")
        self.ctx = ctx
        self.last_seq: int | None = None

    def run_once(self) -> audit_q.Checkpoint | None:
        with self.ctx.db.session(readonly=True) as s:
            head = audit_q.head_seq(s)
        if self.last_seq is None:
            self.last_seq = audit_q.last_checkpoint_seq(self.ctx.db)
        if head == self.last_seq:
            return None
        cp = checkpoint(self.ctx, "periodic")
        self.last_seq = cp.seq
        return cp

    def stop(self) -> None:
        super().stop()
        try:
            checkpoint(self.ctx, "shutdown")
        except ConsoleError:
            logger.exception("could not sign the audit checkpoint at shutdown")


@requires("audit.verify")
def checkpoints_file(ctx: AppContext, actor: Principal) -> bytes:
    """Every signed checkpoint as JSON Lines, after signing one for the chain as it is now; audited."""
    cp = checkpoint(ctx, "download")
    rows = checkpoints_cli(ctx)
    with ctx.db.session() as s:
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="audit.checkpoints_download",
                             details={"checkpoints": len(rows), "head_seq": cp.seq})
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def checkpoints_cli(ctx: AppContext) -> list[dict[str, Any]]:
    """Every signed checkpoint in the database (for keeping a copy elsewhere), oldest first."""
    with ctx.db.session(readonly=True) as s:
        return [c.to_dict() for c in audit_q.stored_checkpoints(s)]


def verify_cli(ctx: AppContext, checkpoint_files: Sequence[Path] = ()) -> audit_q.ChainReport:
    """Check the chain against every checkpoint (database, the checkpoint file, ``checkpoint_files``)."""
    for path in checkpoint_files:
        if not path.is_file():
            raise InvalidInput(f"{path} is not a file.")
    try:
        return audit_q.verify_chain(ctx.db, anchor(ctx), checkpoint_files)
    except OperationalError:
        raise StorageUnavailable("The database is busy or unavailable; try verifying again.") from None


@requires("audit.verify")
def verify(ctx: AppContext, actor: Principal) -> audit_q.ChainReport:
    """Verify the chain against the signed checkpoints; the verdict is itself an audit event."""
    report = verify_cli(ctx)
    with ctx.db.session() as s:
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="audit.verify",
                             details={"ok": report.ok, "checked": report.checked, "kind": report.kind,
                                      "first_bad_seq": report.first_bad_seq,
                                      "checkpoints_checked": report.checkpoints_checked,
                                      "anchored_seq": report.anchored_seq})
    return report
