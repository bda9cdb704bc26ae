"""Streamed exports of the audit log, the exchanges and the review decisions, as plain dicts.

Rows are read in keyset chunks (``WHERE key > :last ORDER BY key LIMIT n``; never OFFSET, never everything at
once), so an export of millions of rows holds one chunk in memory. Every value is a plain scalar (``str``,
``int``, ``float``, ``bool`` or ``None``): times are ISO 8601 text, JSON values (audit details, sampling, an
exchange's findings and decisions; :func:`json_columns`) are canonical JSON text (``db.audit.canonical_json``), so
the same row reads the same in CSV and Parquet; JSON Lines writes those columns as JSON values (objects, lists). Text is exported as stored, except that a NUL (which the store already
keeps as U+FFFD) or a lone surrogate is written as U+FFFD, so no format or reader can be broken by one.

Raw (unredacted) text is added to exchanges only with ``include_raw=True``, which only the console's approved
raw-export path passes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, String, Text, cast, false, func, select, type_coerce
from sqlalchemy.orm import Session

from db import audit_search
from db.audit import canonical_json, iso_utc
from db.tables import (
    AuditEvent,
    Exchange,
    Finding,
    RawText,
    ReviewDecision,
    ReviewItem,
    User,
)

CHUNK_ROWS = 2000
KINDS: tuple[str, ...] = ("events", "exchanges", "decisions")

# Column -> value type ("str", "int", "float", "bool"), in export order. Writers build fixed schemas from these.
EVENT_COLUMNS: dict[str, str] = {
    "seq": "int", "ts": "str", "actor": "str", "actor_id": "int", "action": "str", "object_type": "str",
    "object_id": "str", "details": "str", "details_hash": "str", "prev_hash": "str", "hash": "str",
    "erased_at": "str",
}
EXCHANGE_COLUMNS: dict[str, str] = {
    "id": "int", "conversation_id": "int", "user_id": "int", "username": "str", "request_id": "str",
    "model_version": "str", "model_version_id": "int", "prompt": "str", "response": "str", "sampling": "str",
    "status": "str", "error": "str", "prompt_tokens": "int", "output_tokens": "int", "queue_ms": "float",
    "ttft_ms": "float", "itl_ms": "float", "e2e_ms": "float", "tokens_per_s": "float", "created_at": "str",
    "finished_at": "str", "prompt_action": "str", "output_action": "str", "policy_version": "int",
    "review_status": "str", "text_erased_at": "str", "synthetic": "bool", "findings": "str", "decisions": "str",
}
RAW_COLUMNS: dict[str, str] = {"raw_prompt": "str", "raw_response": "str"}
# The "str" columns that hold canonical JSON text (an event's details_hash is the SHA-256 of that text).
JSON_COLUMNS: dict[str, frozenset[str]] = {
    "events": frozenset({"details"}),
    "exchanges": frozenset({"sampling", "findings", "decisions"}),
    "decisions": frozenset(),
}
DECISION_COLUMNS: dict[str, str] = {
    "id": "int", "item_id": "int", "exchange_id": "int", "reviewer_id": "int", "reviewer": "str",
    "decision": "str", "category": "str", "note": "str", "second_review": "bool", "supersedes_id": "int",
    "created_at": "str", "note_erased_at": "str",
}


def columns(what: str, *, include_raw: bool = False) -> dict[str, str]:
    """The columns (name -> value type) of an export of ``what``, in order."""
    if what == "events":
        return dict(EVENT_COLUMNS)
    if what == "exchanges":
        return {**EXCHANGE_COLUMNS, **RAW_COLUMNS} if include_raw else dict(EXCHANGE_COLUMNS)
    if what == "decisions":
        return dict(DECISION_COLUMNS)
    raise ValueError(f"unknown export kind {what!r}")


def json_columns(what: str) -> frozenset[str]:
    """The columns of an export of ``what`` whose text is canonical JSON (a format may write them as JSON)."""
    if what not in JSON_COLUMNS:
        raise ValueError(f"unknown export kind {what!r}")
    return JSON_COLUMNS[what]


@dataclass(frozen=True)
class ExportFilter:
    """Which rows to export; every field narrows (``since`` inclusive, ``until`` exclusive, both aware UTC).

    ``actor``: the audit actor (events), the exchange's user (exchanges) or the reviewer (decisions).
    ``action_prefix``: events only. ``model_version`` (a version name): the exchange's version; for events, the
    events whose details name it or whose object is that version; for decisions, their exchange's version.
    ``include_synthetic``: exchanges and decisions on exchanges from synthetic load (off by default).
    """

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action_prefix: str | None = None
    model_version: str | None = None
    include_synthetic: bool = False
    # Events only, as on the Audit page: one exact action, the target, a case-insensitive text in the details.
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    text: str | None = None

    EVENT_ONLY = ("action_prefix", "action", "object_type", "object_id", "text")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (times as ISO text); for manifests, audit details and stored export requests."""
        return {
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "actor": self.actor,
            "action_prefix": self.action_prefix,
            "model_version": self.model_version,
            "include_synthetic": self.include_synthetic,
            **{k: getattr(self, k) for k in ("action", "object_type", "object_id", "text") if getattr(self, k)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportFilter:
        def when(value: Any) -> datetime | None:
            return None if value in (None, "") else datetime.fromisoformat(str(value))

        return cls(
            since=when(data.get("since")),
            until=when(data.get("until")),
            actor=data.get("actor"),
            action_prefix=data.get("action_prefix"),
            model_version=data.get("model_version"),
            include_synthetic=bool(data.get("include_synthetic", False)),
            action=data.get("action"),
            object_type=data.get("object_type"),
            object_id=data.get("object_id"),
            text=data.get("text"),
        )


# ---- values ----

_UNSAFE_TEXT = re.compile("[\x00\ud800-\udfff]")


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    return _UNSAFE_TEXT.sub("\ufffd", value) if _UNSAFE_TEXT.search(value) else value


_EVENT_KEYS = ("seq", "ts", "actor", "actor_id", "action", "object_type", "object_id", "details", "details_hash",
               "prev_hash", "hash", "erased_at")
_EVENT_TEXT_COLUMNS = (2, 4, 5, 6, 7)
_EVENT_TEXT_KEYS = tuple(_EVENT_KEYS[i] for i in _EVENT_TEXT_COLUMNS)


def _has_unsafe_text(rows: Sequence[Any], columns: Sequence[int]) -> bool:
    """Whether any of these text columns of ``rows`` holds a NUL or a lone surrogate (one search per chunk)."""
    return bool(_UNSAFE_TEXT.search("\x01".join(row[i] for row in rows for i in columns if row[i] is not None)))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _json(value: Any) -> str:
    return canonical_json(value)


# ---- keyset chunks ----


def upper_bound(session: Session, what: str) -> int | None:
    """The key of the newest row of ``what`` now (seq for events, id otherwise), to fix an export's end."""
    key = {"events": AuditEvent.seq, "exchanges": Exchange.id, "decisions": ReviewDecision.id}[what]
    value: int | None = session.scalar(select(func.max(key)))
    return value


def iter_chunks(session: Session, what: str, flt: ExportFilter, *, chunk_size: int = CHUNK_ROWS,
                upto: int | None = None, include_raw: bool = False) -> Iterator[list[dict[str, Any]]]:
    """Lists of at most ``chunk_size`` rows of ``what`` matching ``flt``, in key order, up to key ``upto``."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if what == "events":
        return _event_chunks(session, flt, chunk_size, upto)
    if what == "exchanges":
        return _exchange_chunks(session, flt, chunk_size, upto, include_raw)
    if what == "decisions":
        return _decision_chunks(session, flt, chunk_size, upto)
    raise ValueError(f"unknown export kind {what!r}")


def iter_rows(session: Session, what: str, flt: ExportFilter, *, chunk_size: int = CHUNK_ROWS,
              upto: int | None = None, include_raw: bool = False) -> Iterator[dict[str, Any]]:
    """The rows of :func:`iter_chunks` one by one."""
    for chunk in iter_chunks(session, what, flt, chunk_size=chunk_size, upto=upto, include_raw=include_raw):
        yield from chunk


def _event_chunks(session: Session, flt: ExportFilter, size: int, upto: int | None
                  ) -> Iterator[list[dict[str, Any]]]:
    e = AuditEvent
    # Times and details as the database holds them (no datetime or JSON objects per row): the details are stored
    # as canonical JSON text already, and iso_utc renders a time as the chain hashed it.
    stmt = select(e.seq, type_coerce(e.ts, String).label("ts"), e.actor, e.actor_id, e.action, e.object_type,
                  e.object_id, cast(e.details, Text).label("details"), e.details_hash, e.prev_hash, e.hash,
                  e.erased_at)
    # The same conditions as the Audit page's search, so an export holds exactly what the page found.
    stmt = stmt.where(*audit_search.conditions(audit_search.EventQuery(
        since=flt.since, until=flt.until, actor=flt.actor, action=flt.action, action_prefix=flt.action_prefix,
        object_type=flt.object_type, object_id=flt.object_id, model_version=flt.model_version, text=flt.text)))
    if upto is not None:
        stmt = stmt.where(e.seq <= upto)
    last = 0
    while True:
        # Core execution on the session's connection: no ORM row loading per event.
        rows = session.connection().execute(stmt.where(e.seq > last).order_by(e.seq).limit(size)).all()
        if not rows:
            return
        last, full = rows[-1].seq, len(rows) == size
        # Tuple unpacking and zip build the dicts in C; NULs and lone surrogates (rare) are looked for once per chunk.
        chunk = [dict(zip(_EVENT_KEYS, (
            seq, iso_utc(ts), actor, actor_id, action, otype, oid, details if details is not None else "{}", dhash,
            prev, digest, _iso(erased),
        ), strict=True)) for seq, ts, actor, actor_id, action, otype, oid, details, dhash, prev, digest, erased in rows]
        if _has_unsafe_text(rows, _EVENT_TEXT_COLUMNS):
            for row in chunk:
                for key in _EVENT_TEXT_KEYS:
                    row[key] = _text(row[key])
        del rows  # hold one chunk at a time: nothing of this one stays referenced while the next is read
        yield chunk
        del chunk
        if not full:
            return


def _exchange_chunks(session: Session, flt: ExportFilter, size: int, upto: int | None, include_raw: bool
                     ) -> Iterator[list[dict[str, Any]]]:
    x = Exchange.__table__.c
    # Columns, not ORM objects: nothing accumulates in the session's identity map over a long export.
    stmt: Select[Any] = select(*x, User.username).outerjoin(User, User.id == x.user_id)
    if flt.since is not None:
        stmt = stmt.where(x.created_at >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(x.created_at < flt.until)
    if flt.actor is not None:
        stmt = stmt.where(User.username == flt.actor)
    if flt.model_version is not None:
        stmt = stmt.where(x.model_version == flt.model_version)
    if not flt.include_synthetic:
        stmt = stmt.where(x.synthetic == false())
    if upto is not None:
        stmt = stmt.where(x.id <= upto)
    last = 0
    while True:
        rows = session.execute(stmt.where(x.id > last).order_by(x.id).limit(size)).all()
        if not rows:
            return
        last, full = rows[-1].id, len(rows) == size
        ids = [r.id for r in rows]
        findings = _findings_by_exchange(session, ids)
        decisions = _decisions_by_exchange(session, ids)
        raw = _raw_by_exchange(session, ids) if include_raw else {}
        chunk = []
        for r in rows:
            row = _exchange_row(r, findings.get(r.id, []), decisions.get(r.id, []))
            if include_raw:
                texts = raw.get(r.id, {})
                row["raw_prompt"] = _text(texts.get("prompt"))
                row["raw_response"] = _text(texts.get("output"))
            chunk.append(row)
        del rows, ids, findings, decisions, raw
        yield chunk
        del chunk
        if not full:
            return


def _exchange_row(x: Any, findings: list[dict[str, Any]], decisions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": x.id,
        "conversation_id": x.conversation_id,
        "user_id": x.user_id,
        "username": _text(x.username),
        "request_id": _text(x.request_id),
        "model_version": _text(x.model_version),
        "model_version_id": x.model_version_id,
        "prompt": _text(x.prompt),
        "response": _text(x.response),
        "sampling": _json(x.sampling if x.sampling is not None else {}),
        "status": x.status,
        "error": _text(x.error),
        "prompt_tokens": x.prompt_tokens,
        "output_tokens": x.output_tokens,
        "queue_ms": x.queue_ms,
        "ttft_ms": x.ttft_ms,
        "itl_ms": x.itl_ms,
        "e2e_ms": x.e2e_ms,
        "tokens_per_s": x.tokens_per_s,
        "created_at": _iso(x.created_at),
        "finished_at": _iso(x.finished_at),
        "prompt_action": _text(x.prompt_action),
        "output_action": _text(x.output_action),
        "policy_version": x.policy_version,
        "review_status": _text(x.review_status),
        "text_erased_at": _iso(x.text_erased_at),
        "synthetic": bool(x.synthetic),
        "findings": _json(findings),
        "decisions": _json(decisions),
    }


def _findings_by_exchange(session: Session, ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    f = Finding
    stmt = (select(f.exchange_id, f.direction, f.detector, f.detector_version, f.label, f.score, f.start, f.end,
                   f.action)
            .where(f.exchange_id.in_(ids)).order_by(f.exchange_id, f.id))
    out: dict[int, list[dict[str, Any]]] = {}
    for r in session.execute(stmt):
        out.setdefault(r.exchange_id, []).append({
            "direction": r.direction, "detector": _text(r.detector), "detector_version": _text(r.detector_version),
            "label": _text(r.label), "score": r.score, "start": r.start, "end": r.end, "action": _text(r.action),
        })
    return out


def _decisions_by_exchange(session: Session, ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    d = ReviewDecision
    stmt = (select(ReviewItem.exchange_id, d.id, d.item_id, d.decision, d.category, d.note, d.second_review,
                   d.supersedes_id, d.created_at, User.username)
            .join(ReviewItem, ReviewItem.id == d.item_id)
            .outerjoin(User, User.id == d.reviewer_id)
            .where(ReviewItem.exchange_id.in_(ids)).order_by(d.id))
    out: dict[int, list[dict[str, Any]]] = {}
    for r in session.execute(stmt):
        out.setdefault(r.exchange_id, []).append({
            "id": r.id, "item_id": r.item_id, "decision": r.decision, "category": _text(r.category),
            "note": _text(r.note), "reviewer": _text(r.username), "second_review": bool(r.second_review),
            "supersedes_id": r.supersedes_id, "created_at": _iso(r.created_at),
        })
    return out


def _raw_by_exchange(session: Session, ids: Sequence[int]) -> dict[int, dict[str, str | None]]:
    stmt = (select(RawText.exchange_id, RawText.direction, RawText.text, RawText.erased_at)
            .where(RawText.exchange_id.in_(ids)).order_by(RawText.id))
    out: dict[int, dict[str, str | None]] = {}
    for r in session.execute(stmt):
        texts = out.setdefault(r.exchange_id, {})
        if r.direction not in texts:  # the first kept text of each direction; erased text is exported as NULL
            texts[r.direction] = None if r.erased_at is not None else r.text
    return out


def _decision_chunks(session: Session, flt: ExportFilter, size: int, upto: int | None
                     ) -> Iterator[list[dict[str, Any]]]:
    d = ReviewDecision
    stmt = (select(d.id, d.item_id, ReviewItem.exchange_id, d.reviewer_id, User.username, d.decision, d.category,
                   d.note, d.second_review, d.supersedes_id, d.created_at, d.note_erased_at)
            .join(ReviewItem, ReviewItem.id == d.item_id)
            .outerjoin(User, User.id == d.reviewer_id))
    if flt.model_version is not None or not flt.include_synthetic:
        stmt = stmt.join(Exchange, Exchange.id == ReviewItem.exchange_id)
        if flt.model_version is not None:
            stmt = stmt.where(Exchange.model_version == flt.model_version)
        if not flt.include_synthetic:
            stmt = stmt.where(Exchange.synthetic == false())
    if flt.since is not None:
        stmt = stmt.where(d.created_at >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(d.created_at < flt.until)
    if flt.actor is not None:
        stmt = stmt.where(User.username == flt.actor)
    if upto is not None:
        stmt = stmt.where(d.id <= upto)
    last = 0
    while True:
        rows = session.execute(stmt.where(d.id > last).order_by(d.id).limit(size)).all()
        if not rows:
            return
        last, full = rows[-1].id, len(rows) == size
        chunk = [{
            "id": r.id,
            "item_id": r.item_id,
            "exchange_id": r.exchange_id,
            "reviewer_id": r.reviewer_id,
            "reviewer": _text(r.username),
            "decision": r.decision,
            "category": _text(r.category),
            "note": _text(r.note),
            "second_review": bool(r.second_review),
            "supersedes_id": r.supersedes_id,
            "created_at": _iso(r.created_at),
            "note_erased_at": _iso(r.note_erased_at),
        } for r in rows]
        del rows
        yield chunk
        del chunk
        if not full:
            return
