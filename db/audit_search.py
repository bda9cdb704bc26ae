"""Searching the audit log: filtered, newest-first pages with keyset pagination, the events around one event.

Pages are cut by ``seq`` (``seq < before_seq ORDER BY seq DESC LIMIT n``), never by OFFSET: events appended
between two page fetches get higher seqs, so they never shift a later page (nothing is skipped or shown twice),
and a deep page costs the same as the first. Every filter is a bound parameter; LIKE patterns escape their
wildcards, so ``%`` or ``_`` typed into a filter match themselves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, String, Text, and_, cast, func, or_, select
from sqlalchemy.orm import Session

from db.tables import AuditEvent, ModelVersion

LIKE_ESCAPE = "\\"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class EventQuery:
    """What to look for; every field is optional and the given ones must all match.

    ``since`` is inclusive and ``until`` exclusive (timezone-aware). ``action`` is an exact action and
    ``action_prefix`` a start of one (``"auth."``). ``model_version`` is a version name: it matches events whose
    details' ``model_version`` equals it (chat exchanges) and events about that version (``object_type``
    ``model_version``, whose ``object_id`` is the version's id, or the given text itself). ``text`` is a
    case-insensitive substring of the details' JSON text.
    """

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None
    action_prefix: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    model_version: str | None = None
    text: str | None = None


def escape_like(value: str) -> str:
    """``value`` with LIKE's wildcards (and the escape character itself) escaped for ``ESCAPE '\\'``."""
    return value.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2).replace("%", LIKE_ESCAPE + "%").replace("_", LIKE_ESCAPE + "_")


def _text_needles(text: str) -> list[str]:
    """Lower-case forms of ``text`` as they can appear in stored JSON text.

    The details column holds JSON as its writer rendered it: non-ASCII characters either as written or as
    ``\\uXXXX`` escapes (the standard library's default), quotes and backslashes escaped. So the needle is tried
    both as typed and JSON-escaped, each in lower and upper case with only ASCII folded: SQLite's ``lower()`` (and
    PostgreSQL's under the C locale) folds only ASCII, and an escape's hex digits do not fold at all.
    """
    needles: list[str] = []
    for variant in (text.lower(), text.upper()):
        for form in (variant, json.dumps(variant, ensure_ascii=True)[1:-1],
                     json.dumps(variant, ensure_ascii=False)[1:-1]):
            lowered = form.translate(_ASCII_LOWER)  # as SQL's lower() folds (at least) ASCII
            if lowered not in needles:
                needles.append(lowered)
    return needles


def conditions(flt: EventQuery) -> list[ColumnElement[bool]]:
    """The WHERE clauses of ``flt`` (shared by the page's search and the events export)."""
    where: list[ColumnElement[bool]] = []
    if flt.since is not None:
        where.append(AuditEvent.ts >= flt.since)
    if flt.until is not None:
        where.append(AuditEvent.ts < flt.until)
    if flt.actor is not None:
        where.append(AuditEvent.actor == flt.actor)
    if flt.action is not None:
        where.append(AuditEvent.action == flt.action)
    if flt.action_prefix is not None:
        where.append(AuditEvent.action.like(escape_like(flt.action_prefix) + "%", escape=LIKE_ESCAPE))
    if flt.object_type is not None:
        where.append(AuditEvent.object_type == flt.object_type)
    if flt.object_id is not None:
        where.append(AuditEvent.object_id == flt.object_id)
    if flt.model_version is not None:
        version_id = cast(select(ModelVersion.id).where(ModelVersion.name == flt.model_version)
                          .scalar_subquery(), String)
        where.append(or_(
            AuditEvent.details["model_version"].as_string() == flt.model_version,
            and_(AuditEvent.object_type == "model_version",
                 or_(AuditEvent.object_id == flt.model_version, AuditEvent.object_id == version_id)),
        ))
    if flt.text is not None:
        details_text = func.lower(cast(AuditEvent.details, Text))
        where.append(or_(*(details_text.like("%" + escape_like(n) + "%", escape=LIKE_ESCAPE)
                           for n in _text_needles(flt.text))))
    return where


def search_events(session: Session, flt: EventQuery, *, before_seq: int | None, limit: int) -> list[AuditEvent]:
    """The newest ``limit`` events matching ``flt`` with ``seq < before_seq`` (all when None), newest first.

    The next page is ``before_seq=<the last returned seq>``; fetch ``limit + 1`` to learn whether there is one.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    # Chained events only: on PostgreSQL a new event waits (milliseconds) to be chained before it has a seq.
    stmt = select(AuditEvent).where(AuditEvent.seq.is_not(None), *conditions(flt))
    if before_seq is not None:
        stmt = stmt.where(AuditEvent.seq < before_seq)
    return list(session.scalars(stmt.order_by(AuditEvent.seq.desc()).limit(limit)))


def get_event(session: Session, seq: int) -> AuditEvent | None:
    """The event with this seq, or None."""
    return session.scalars(select(AuditEvent).where(AuditEvent.seq == seq)).one_or_none()


def events_around(session: Session, seq: int, n: int = 5) -> list[AuditEvent]:
    """Up to ``n`` events before ``seq``, the event itself (when it exists) and up to ``n`` after, in seq order.

    Unfiltered: the neighbours are whatever happened just before and after, which is the context a reader needs.
    """
    if n < 0:
        raise ValueError("n must not be negative")
    before = list(session.scalars(select(AuditEvent).where(AuditEvent.seq < seq)
                                  .order_by(AuditEvent.seq.desc()).limit(n)))
    rest = list(session.scalars(select(AuditEvent).where(AuditEvent.seq >= seq)
                                .order_by(AuditEvent.seq).limit(n + 1)))
    if rest and rest[0].seq != seq:  # no event with this seq: the n after are all that follow
        rest = rest[:n]
    return before[::-1] + rest


def distinct_actions(session: Session) -> list[str]:
    """Every action that occurs in the log, sorted (for a picker)."""
    return list(session.scalars(select(AuditEvent.action).distinct().order_by(AuditEvent.action)))
