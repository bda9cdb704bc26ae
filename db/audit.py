"""The append-only, hash-chained audit log, anchored by signed checkpoints.

Each event's ``hash`` is the SHA-256 of a canonical JSON rendering of its content and the previous event's hash.
The content covers the event's time, actor, action and object and the SHA-256 of its details (``details_hash``),
not the details themselves: personal data in the details can later be erased (``erase_event_details``) without
breaking the chain, and ``verify_chain`` accepts an erased event only when a later ``privacy.erase`` event lists it.
An event whose action has personal detail keys (``PERSONAL_DETAIL_KEYS``) also carries ``remains_hash``: the SHA-256
of its details as they read after an erasure (each personal value present replaced by ``"[erased]"``), and the
chained hash covers it too. After an erasure only the personal values may differ from what was chained: a changed
structural field (``failed_gates`` of an approval, say) no longer matches ``remains_hash``. Events written before
``remains_hash`` existed (migration 0016) are pinned by the ``remains`` map of the chained event that erased them
(or that sealed them at the upgrade).
The position in the chain is the order of ``seq``; the hash links make any edit, deletion, insertion or reordering
show at that point. The one-row ``audit_head`` table records the last seq and hash.

Sequencing (how an event gets its place in the chain) depends on the dialect (``use_sequencing`` overrides it for
one engine, as the benchmark does to measure both on PostgreSQL):

- **inline** (SQLite): ``append_event`` locks ``audit_head`` and chains the event at once. A SQLite write transaction
  holds the whole database anyway, so nothing is gained by waiting.
- **batched** (PostgreSQL): ``append_event`` queues the event, a row of ``audit_events`` with ``seq``, ``prev_hash``
  and ``hash`` NULL, in the caller's transaction (the change and its event still commit or roll back together) and
  takes no lock. ``integrate_pending`` chains queued events in id order, up to ``BATCH_SIZE`` at a time, under the
  head row's lock and one head update, one transaction per batch (a crash mid-batch leaves the events queued and
  the chain as it was), like a transparency log's sequencer (Trillian). A commit that queued events wakes its
  process's integrator thread, which tries it at once (skipping when another process holds the head: that one looks
  again after letting go), and the Checkpointer sweeps what is left. Checkpoints, verification, key rotation and erasure integrate first
  (``hold_chain`` keeps the head for the rest of a transaction, whose events are then chained inline). Readers of
  events as application state (``latest_event``, ``events_about``, ``iter_events``) see queued events too, after
  the chained ones (``seq`` NULL sorts last in PostgreSQL), in id order among themselves.

Whoever can write the database could still cut the tail or re-compute the whole chain; checkpoints stop that:
``AuditAnchor.checkpoint`` signs (HMAC-SHA256, with a key kept in a file outside the database) the statement
"the chain had N events and its head was H at time T", stores it in ``audit_checkpoints`` and appends it to a file
beside the database. ``verify_chain`` checks the chain against every checkpoint it is given and names the first
bad event and the kind of damage: edited, deleted, reordered, inserted, tail cut, wiped, head rewritten,
rewritten (re-computed after a checkpoint), forged checkpoint.

Events are written with ``append_event`` inside the caller's transaction, so the change and its audit event commit
or roll back together. Database triggers (migrations 0009, 0016, 0021) refuse UPDATE and DELETE on the events outside
the erasure path and the one fill-in of a queued event's chain columns.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol
from typing import cast as typing_cast

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    String,
    Table,
    Text,
    bindparam,
    cast,
    exists,
    func,
    insert,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from db.database import READONLY_OPTION
from db.tables import AuditCheckpoint, AuditEvent, AuditHead
from db.types import utcnow

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
HEAD_ID = 1
ERASURE_ACTION = "privacy.erase"
ERASED = "[erased]"

# action -> the detail keys that hold personal data (typed names, emails, free text people wrote). Erasure replaces
# exactly these values; everything else in an event (ids, counts, verdicts) is the record and stays.
PERSONAL_DETAIL_KEYS: dict[str, tuple[str, ...]] = {
    "user.create": ("email",),
    "user.sso_bound": ("subject",),
    # A name that matched no account (and, for single sign-on, the email and subject) is kept in the details only.
    "auth.login_failed": ("username", "subject"),
    "auth.login_throttled": ("username",),
    "review.reveal_reason": ("reason",),
    "safety.raw_erase": ("reason",),
    "promotion.request": ("reason",),
    "promotion.approve": ("note", "override_reason"),
    "promotion.reject": ("note", "override_reason"),
    "promotion.cancel": ("note", "override_reason"),
    "promotion.canary_started": ("note", "override_reason"),
    "promotion.canary_stopped": ("note",),
    "model.alias": ("reason",),
    "model.alias_removed": ("reason",),
    "model.retire": ("reason",),
    "model.rollback": ("reason",),
    "model.switch": ("reason",),
    "model.switch_failed": ("reason",),
    "model.restart": ("reason",),
    "model.restart_failed": ("reason",),
    "audit.search": ("filter",),
    "audit.export": ("filters",),
    "audit.export_failed": ("reason",),
    "audit.export_raw_requested": ("reason", "filters"),
    "audit.export_raw_approved": ("note",),
    "audit.export_raw_rejected": ("note",),
    "audit.key_rotated": ("reason",),
}

KEY_ROTATED_ACTION = "audit.key_rotated"
ERASURE_SEALED_ACTION = "audit.erasure_sealed"  # written by migration 0016 for events erased before it

# Kinds of damage verify_chain names.
EDITED, DELETED, REORDERED, INSERTED = "edited", "deleted", "reordered", "inserted"
TAIL_CUT, WIPED, HEAD_REWRITTEN, REWRITTEN, FORGED_CHECKPOINT = (
    "tail cut", "wiped", "head rewritten", "rewritten", "forged checkpoint")


class _HasSession(Protocol):
    def session(self, *, readonly: bool = False) -> Any: ...


@dataclass(frozen=True)
class ChainReport:
    """The result of ``verify_chain``: ``ok`` with the number of events checked, or where and how it first broke.

    ``kind`` is one of the damage kinds above; ``checkpoints_checked`` counts the signed checkpoints compared with
    the chain and ``anchored_seq`` is the newest event a valid checkpoint covers (events after it are chained but
    not yet anchored). ``warnings`` lists findings that are not damage to the chain itself.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    kind: str | None = None
    checkpoints_checked: int = 0
    anchored_seq: int = 0
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AppendedEvent:
    """An event as ``append_event`` wrote it: the columns of an ``AuditEvent`` row, without the ORM.

    ``seq``, ``prev_hash`` and ``hash`` are None for a queued event (batched sequencing): it is chained later.
    """

    id: int
    seq: int | None
    ts: datetime
    actor: str
    actor_id: int | None
    action: str
    object_type: str | None
    object_id: str | None
    details: dict[str, Any]
    details_hash: str
    prev_hash: str | None
    hash: str | None
    erased_at: datetime | None = None
    remains_hash: str | None = None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"audit details must be JSON-serialisable, got {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """The one JSON rendering that is hashed: sorted keys, no spaces, Unicode kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def details_digest(details: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical rendering of an event's details."""
    return _sha256(canonical_json(details))


def erased_form(action: str, details: Mapping[str, Any]) -> dict[str, Any] | None:
    """The details as an erasure leaves them (every personal value present replaced by ``"[erased]"``), or None
    for an action with no personal detail keys."""
    keys = PERSONAL_DETAIL_KEYS.get(action)
    if not keys:
        return None
    return {k: (ERASED if k in keys else v) for k, v in details.items()}


def remains_digest(action: str, details: Mapping[str, Any]) -> str | None:
    """SHA-256 (hex) of what an erasure leaves of these details (``erased_form``), or None (nothing erasable)."""
    form = erased_form(action, details)
    return None if form is None else details_digest(form)


def compute_hash(
    *,
    ts: datetime,
    actor: str,
    actor_id: int | None,
    action: str,
    object_type: str | None,
    object_id: str | None,
    details_hash: str,
    prev_hash: str,
    remains_hash: str | None = None,
) -> str:
    """SHA-256 (hex) of an event's content (with its details' hash, and the hash of what an erasure would leave
    of them when the action has personal detail keys) and its predecessor's hash."""
    payload = [ts.isoformat(), actor, actor_id, action, object_type, object_id, details_hash, prev_hash]
    if remains_hash is not None:
        payload.append(remains_hash)
    return _sha256(canonical_json(payload))


def append_event(
    session: Session,
    *,
    actor: str,
    action: str,
    object_type: str | None = None,
    object_id: str | int | None = None,
    details: Mapping[str, Any] | None = None,
    actor_id: int | None = None,
) -> AppendedEvent:
    """Append one event to the chain inside the caller's transaction and return what was written.

    ``actor`` is a username or a system name (e.g. ``"system"``); ``action`` a dotted verb such as
    ``"chat.exchange"``. ``details`` must be JSON-serialisable (datetimes become ISO strings); never
    put raw prompt or response text in it.
    """
    if session.new or session.dirty or session.deleted:
        session.flush()  # pending rows first (the event may refer to them), as an ORM query would autoflush
    # Core statements on the session's connection: no ORM unit of work per event (the chain is the hot path of
    # every click).
    conn = session.connection()
    # Round-trip through JSON so the stored details are exactly what was hashed.
    rendered = canonical_json(dict(details or {}))
    stored_details: dict[str, Any] = json.loads(rendered)
    details_hash = _sha256(rendered)
    values: dict[str, Any] = {
        "seq": None, "ts": utcnow(), "actor": actor, "actor_id": actor_id, "action": action,
        "object_type": object_type, "object_id": None if object_id is None else str(object_id),
        "details": stored_details, "details_hash": details_hash, "prev_hash": None, "hash": None,
        "remains_hash": remains_digest(action, stored_details)}
    if _queues(session, conn):
        # Batched sequencing: no lock; the event is chained after the commit (see _poke_integrator).
        event_id = conn.execute(_INSERT_EVENT, values).inserted_primary_key[0]  # type: ignore[index]
        session.info[_QUEUED_KEY] = True
    else:
        # Inline: lock the head row first (on SQLite the write transaction already holds the database lock). The
        # head is read (and locked) once per transaction; later appends in it continue from what they wrote.
        cached = session.info.get(_HEAD_KEY)
        head_seq, head_hash = cached if cached is not None else conn.execute(_HEAD_FOR_UPDATE).one()
        values.update(_chained(values, head_seq + 1, head_hash))
        event_id = conn.execute(_INSERT_EVENT, values).inserted_primary_key[0]  # type: ignore[index]
        conn.execute(_MOVE_HEAD, {"seq": values["seq"], "hash": values["hash"]})
        session.info[_HEAD_KEY] = (values["seq"], values["hash"])
    logger.debug("audit seq=%s action=%s actor=%s object=%s:%s", values["seq"], action, actor, object_type,
                 values["object_id"])
    # A plain record of what was written (an ORM instance costs more to build than the insert itself).
    return AppendedEvent(id=event_id, **values)


def _chained(event: Mapping[str, Any], seq: int, prev_hash: str) -> dict[str, Any]:
    """The chain columns of ``event`` (its content columns) placed at ``seq`` after ``prev_hash``: the one place
    both sequencing modes compute an event's hash."""
    digest = compute_hash(ts=event["ts"], actor=event["actor"], actor_id=event["actor_id"], action=event["action"],
                          object_type=event["object_type"], object_id=event["object_id"],
                          details_hash=event["details_hash"], prev_hash=prev_hash,
                          remains_hash=event["remains_hash"])
    return {"seq": seq, "prev_hash": prev_hash, "hash": digest}


_HEAD_KEY = "llm_console_audit_head"
_QUEUED_KEY = "llm_console_audit_queued"
_COMMITTED_KEY = "llm_console_audit_queued_committed"
# Engine execution option (set by use_sequencing): "auto" (by dialect), "inline" or "batched".
SEQUENCING_OPTION = "llm_console_audit_sequencing"
SEQUENCING_MODES = ("auto", "inline", "batched")
BATCH_SIZE = 1000  # events chained per integration transaction (bounds how long the head row stays locked)
_AFTER_COMMIT_BATCHES = 20  # batches per integrator round before it leaves the rest to others (or its next round)


def _queues(session: Session, conn: Connection) -> bool:
    """True when this append is queued (batched sequencing), False when it is chained at once."""
    if _HEAD_KEY in session.info:
        return False  # this transaction holds the head (inline appends, or hold_chain): keep chaining inline
    mode = conn.get_execution_options().get(SEQUENCING_OPTION, "auto")
    if mode == "auto":
        return conn.dialect.name != "sqlite"
    return bool(mode == "batched")


def use_sequencing(engine: Engine, mode: str) -> None:
    """Make ``engine``'s appends ``"inline"`` (chained at once under the head lock), ``"batched"`` (queued, then
    integrated) or ``"auto"`` (batched on PostgreSQL, inline on SQLite: the default)."""
    if mode not in SEQUENCING_MODES:
        raise ValueError(f"audit sequencing must be one of {', '.join(SEQUENCING_MODES)}, not {mode!r}")
    engine.update_execution_options(**{SEQUENCING_OPTION: mode})


@sa_event.listens_for(Session, "after_commit")
@sa_event.listens_for(Session, "after_rollback")
@sa_event.listens_for(Session, "after_soft_rollback")
def _forget_head(session: Session, *args: Any) -> None:
    # The cached head is only good inside the transaction that read it under its lock.
    session.info.pop(_HEAD_KEY, None)


@sa_event.listens_for(Session, "after_rollback")
@sa_event.listens_for(Session, "after_soft_rollback")
def _forget_queued(session: Session, *args: Any) -> None:
    session.info.pop(_QUEUED_KEY, None)  # the queued events went with the transaction


@sa_event.listens_for(Session, "after_commit")
def _queued_committed(session: Session) -> None:
    if session.info.pop(_QUEUED_KEY, False):
        session.info[_COMMITTED_KEY] = True


@sa_event.listens_for(Session, "after_transaction_end")
def _poke_integrator(session: Session, transaction: Any) -> None:
    """After a commit that queued events, wake this process's integrator for the engine (the commit returns at
    once: the caller does not wait for the chain)."""
    if transaction.parent is not None or not session.info.pop(_COMMITTED_KEY, False):
        return
    bind = session.get_bind()
    engine = bind.engine if isinstance(bind, Connection) else bind
    with _INTEGRATORS_LOCK:
        integrator = _INTEGRATORS.get(engine)
        if integrator is None:
            integrator = _INTEGRATORS[engine] = _Integrator(engine)
    integrator.poke()


class _Integrator:
    """One per engine and process: a daemon thread that integrates queued events when a commit pokes it, at most
    once per ``PAUSE_S`` (commits in between are integrated together), and ends after ``IDLE_S`` without work.

    It gives up a round at once when another process holds the head (that one looks again after letting go).
    At interpreter exit, what it was poked for is integrated one last time (``_integrate_at_exit``); events of a
    process killed before that wait for the next commit anywhere, or the Checkpointer's sweep.
    """

    PAUSE_S = 0.05
    IDLE_S = 5.0

    def __init__(self, engine: Engine) -> None:
        self.engine = weakref.ref(engine)  # (the registry is keyed by the engine: a strong reference would keep it)
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def poke(self) -> None:
        self.wake.set()
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="audit-integrator", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            if not self.wake.wait(self.IDLE_S) or self.engine() is None:
                with self.lock:
                    if not self.wake.is_set() or self.engine() is None:
                        self.thread = None
                        return
                continue
            self.wake.clear()
            self.integrate()
            time.sleep(self.PAUSE_S)

    def integrate(self, *, quiet: bool = False) -> None:
        engine = self.engine()
        if engine is None:
            return
        try:
            integrate_pending(engine, wait=False, max_batches=_AFTER_COMMIT_BATCHES)
        except Exception as exc:  # the appends are committed: a later round, another process or the sweep chains them
            if quiet:  # at exit (the database may be gone: a test's, dropped)
                logger.debug("no integration at exit: %s", exc)
                return
            logger.warning("could not integrate queued audit events (%s); they wait for the next round or sweep",
                           str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


_INTEGRATORS: weakref.WeakKeyDictionary[Engine, _Integrator] = weakref.WeakKeyDictionary()
_INTEGRATORS_LOCK = threading.Lock()


@atexit.register
def _integrate_at_exit() -> None:
    with _INTEGRATORS_LOCK:
        integrators = list(_INTEGRATORS.values())
    for integrator in integrators:
        if integrator.thread is not None:
            integrator.integrate(quiet=True)


# ---- batched sequencing: the integrator ----


def _integrate_batch(conn: Connection, *, wait: bool, limit: int = BATCH_SIZE) -> int | None:
    """Chain up to ``limit`` queued events, in id order, under the head row's lock, on ``conn`` (in a transaction).

    Returns how many were chained, or None when ``wait`` is False and another transaction holds the head.
    """
    head = conn.execute(_HEAD_FOR_UPDATE if wait else _HEAD_FOR_UPDATE_SKIP_LOCKED).first()
    if head is None:
        return None
    rows = conn.execute(_PENDING.limit(limit)).mappings().all()
    if not rows:
        return 0
    seq, prev = head
    chained = []
    for row in rows:
        seq += 1
        values = _chained(dict(row), seq, prev)
        prev = values["hash"]
        chained.append({"b_id": row["id"], "b_seq": seq, "b_prev": values["prev_hash"], "b_hash": prev})
    conn.execute(_CHAIN_EVENT, chained)
    conn.execute(_MOVE_HEAD, {"seq": seq, "hash": prev})
    logger.debug("audit integrated %s queued events, head at seq %s", len(rows), seq)
    return len(rows)


def _transactions(target: Engine | _HasSession, readonly: bool = False
                  ) -> Callable[[], AbstractContextManager[Connection]]:
    if isinstance(target, Engine):
        # A read-only look must not take SQLite's write lock (BEGIN IMMEDIATE): the caller may hold it in an open
        # write session on the same thread (verify_chain inside a transaction), which would then wait on itself.
        return target.execution_options(**{READONLY_OPTION: True}).connect if readonly else target.begin

    @contextmanager
    def via_session() -> Iterator[Connection]:
        with target.session(readonly=readonly) as session:
            yield session.connection()

    return via_session


def pending_count(target: Engine | _HasSession | Session) -> int:
    """How many events are queued, not chained yet (always 0 with inline sequencing)."""
    if isinstance(target, Session):
        return target.scalar(_PENDING_COUNT) or 0
    with _transactions(target, readonly=True)() as conn:
        return conn.execute(_PENDING_COUNT).scalar() or 0


def _has_pending(target: Engine | _HasSession) -> bool:
    with _transactions(target, readonly=True)() as conn:
        return bool(conn.execute(_PENDING_ANY).scalar())


def integrate_pending(target: Engine | _HasSession, *, wait: bool = True, max_batches: int = 1_000_000) -> int:
    """Chain the queued events in batches of ``BATCH_SIZE`` (one transaction each); return how many were chained.

    With ``wait`` it waits for the head row's lock and chains every event queued before the call (checkpoints,
    verification, the sweep). Without it, it gives up at once when another integrator holds the head: that one
    looks for queued events again after it lets go (so none is left behind unseen), as this one does. At most
    ``max_batches`` batches.
    """
    if wait and not _has_pending(target):
        return 0  # (without wait the head's SKIP LOCKED read below is the only look: cheaper for the hot path)
    begin = _transactions(target)
    total, batches = 0, 0
    while batches < max_batches:
        with begin() as conn:
            if conn.dialect.name == "postgresql":
                # A crash may lose this commit: the events are then queued again and chained again. Whatever used
                # their seqs (a checkpoint, an erasure, a reader's write) commits later, synchronously, and
                # PostgreSQL flushes the log in order, which makes this integration durable first.
                conn.execute(text("SET LOCAL synchronous_commit = off"))
            n = _integrate_batch(conn, wait=wait)
        batches += 1
        if n is None:
            break  # another integrator holds the head and looks again after it lets go
        total += n
        if n == BATCH_SIZE:
            continue
        # Look again after letting go: an event committed while the head was held may have been skipped by its
        # own session's try, which gave up because this one held the head.
        wait = False
        if not _has_pending(target):
            break
    return total


def hold_chain(session: Session) -> tuple[int, str]:
    """Lock the chain's head for the rest of this transaction after integrating every queued event; later appends
    in it are chained at once. For transactions that must see every event with its seq (erasure, key rotation).
    Returns the head (seq, hash)."""
    cached = session.info.get(_HEAD_KEY)
    if cached is not None:
        return typing_cast(tuple[int, str], cached)
    conn = session.connection()
    while _integrate_batch(conn, wait=True) == BATCH_SIZE:
        pass
    head_seq_, head_hash = conn.execute(_HEAD_FOR_UPDATE).one()
    session.info[_HEAD_KEY] = (head_seq_, head_hash)
    if conn.dialect.name != "sqlite":
        # Integrators that found the head taken meanwhile gave up; after the commit this process looks for them.
        session.info[_QUEUED_KEY] = True
    return head_seq_, head_hash


_EVENTS = typing_cast(Table, AuditEvent.__table__)
_HEAD = typing_cast(Table, AuditHead.__table__)
_HEAD_FOR_UPDATE = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == HEAD_ID).with_for_update()
_HEAD_FOR_UPDATE_SKIP_LOCKED = (select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == HEAD_ID)
                                .with_for_update(skip_locked=True))
_MOVE_HEAD = update(_HEAD).where(_HEAD.c.id == HEAD_ID).values(seq=bindparam("seq"), hash=bindparam("hash"))
_PENDING = (select(_EVENTS.c.id, _EVENTS.c.ts, _EVENTS.c.actor, _EVENTS.c.actor_id, _EVENTS.c.action,
                   _EVENTS.c.object_type, _EVENTS.c.object_id, _EVENTS.c.details_hash, _EVENTS.c.remains_hash)
            .where(_EVENTS.c.seq.is_(None)).order_by(_EVENTS.c.id))
_INSERT_EVENT = insert(_EVENTS)
_PENDING_ANY = select(exists().where(_EVENTS.c.seq.is_(None)))
_PENDING_COUNT = select(func.count()).select_from(_EVENTS).where(_EVENTS.c.seq.is_(None))
# The one change the triggers allow on a queued event (0021): its chain columns, NULL until now, filled in.
_CHAIN_EVENT = (update(_EVENTS).where(_EVENTS.c.id == bindparam("b_id"), _EVENTS.c.seq.is_(None))
                .values(seq=bindparam("b_seq"), prev_hash=bindparam("b_prev"), hash=bindparam("b_hash")))


class TamperedEvent(ValueError):
    """An event to be erased no longer matches what was chained: erasing it would hide the change."""


def erase_event_details(session: Session, events: Sequence[AuditEvent], keys: Collection[str]) -> list[int]:
    """Replace the values under ``keys`` in each event's details with ``"[erased]"`` and mark the event erased.

    The chained hash covers ``details_hash`` and ``remains_hash``, which stay, so the chain still verifies; the
    caller must append an ``ERASURE_ACTION`` event listing the returned seqs in ``details["audit_seqs"]`` (and
    ``erasure_remains(session, seqs)`` under ``details["remains"]``) in the same transaction: the verifier accepts
    an erased event only then. Events without any of the keys, or erased already, are left alone. Raises
    :class:`TamperedEvent` (nothing is changed by it; the caller rolls back) when an event's details no longer match
    their chained hash, or when what the erasure leaves would not match the event's ``remains_hash``.
    """
    changed: list[int] = []
    table = typing_cast(Table, AuditEvent.__table__)
    now = utcnow()
    for event in events:
        if event.seq is None:
            raise ValueError("erase only chained audit events: call hold_chain(session) before loading them")
        if event.erased_at is not None:
            continue
        details = dict(event.details or {})
        hits = [k for k in keys if k in details and details[k] != ERASED]
        if not hits:
            continue
        if details_digest(details) != event.details_hash:
            raise TamperedEvent(f"audit event {event.seq} does not match its chained hash: it was changed in the "
                                "database; run `llm-console audit verify` (nothing was erased)")
        for k in hits:
            details[k] = ERASED
        if event.remains_hash is not None and details_digest(details) != event.remains_hash:
            raise TamperedEvent(f"audit event {event.seq}: what the erasure leaves would not match its chained "
                                "remains hash (its personal keys changed since it was written); nothing was erased")
        # Core UPDATE: the ORM refuses changes to append-only rows; the database trigger allows exactly this one.
        session.execute(update(table).where(table.c.id == event.id).values(details=details, erased_at=now))
        changed.append(event.seq)
    return changed


def erasure_remains(session: Session, seqs: Collection[int]) -> dict[str, str]:
    """``{seq: hash of its details now}`` for the erased events among ``seqs`` written before ``remains_hash``
    existed: the erasure event records it, which pins what remains of them under the chain from then on."""
    if not seqs:
        return {}
    rows = session.execute(select(AuditEvent.seq, AuditEvent.details)
                           .where(AuditEvent.seq.in_(list(seqs)), AuditEvent.remains_hash.is_(None),
                                  AuditEvent.erased_at.is_not(None)))
    return {str(seq): details_digest(details or {}) for seq, details in rows}


# ---- checkpoints ----


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: the chain had ``seq`` events and its head hash was ``head_hash`` at ``ts``."""

    seq: int
    head_hash: str
    ts: datetime
    key_id: str
    signature: str
    reason: str = ""

    def message(self) -> bytes:
        return canonical_json(["llm-console audit checkpoint v1", self.seq, self.head_hash, self.ts.isoformat()]
                              ).encode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "head_hash": self.head_hash, "ts": self.ts.isoformat(), "key_id": self.key_id,
                "signature": self.signature, "reason": self.reason}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Checkpoint:
        """Parse one checkpoint (as written by ``to_dict``); raises ValueError on anything malformed."""
        try:
            ts = datetime.fromisoformat(str(raw["ts"]))
            seq = int(raw["seq"])
            head, key_id, sig = str(raw["head_hash"]), str(raw["key_id"]), str(raw["signature"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a checkpoint: {exc}") from None
        if ts.tzinfo is None or seq < 0 or len(head) != 64 or len(sig) != 64:
            raise ValueError("not a checkpoint: bad field")
        return cls(seq, head, ts, key_id, sig, str(raw.get("reason", "")))


KEY_BYTES = 32


def key_id_of(key: bytes) -> str:
    return hashlib.sha256(b"llm-console audit key id" + key).hexdigest()[:16]


def retired_key_file(key_file: Path) -> Path:
    """Where keys retired by ``rotate_key`` are kept (hex, one a line, owner-only): old checkpoints verify with them."""
    return key_file.with_name(key_file.name + ".retired")


class AuditAnchor:
    """Signs and checks checkpoints with a key kept outside the database; appends them to ``checkpoint_file``.

    ``retired`` keys (from ``rotate_key``) only check the checkpoints signed before their rotation.
    """

    def __init__(self, key: bytes, checkpoint_file: Path | None = None, retired: Iterable[bytes] = ()) -> None:
        if len(key) < 16:
            raise ValueError("the audit key must be at least 16 bytes")
        self._key = key
        self.key_id = key_id_of(key)
        self.checkpoint_file = checkpoint_file
        self._retired = {key_id_of(k): k for k in retired if len(k) >= 16}
        self._retired.pop(self.key_id, None)

    @property
    def retired_key_ids(self) -> frozenset[str]:
        return frozenset(self._retired)

    @classmethod
    def load(cls, key_file: Path, checkpoint_file: Path | None = None, *, create: bool = True) -> AuditAnchor:
        """The anchor whose key is in ``key_file`` (hex); with ``create``, a new key is generated if it is missing.

        A new key file is created owner-only (0600) and never overwritten. A key file others can read is refused.
        """
        if not key_file.exists():
            if not create:
                raise FileNotFoundError(f"audit key file {key_file} does not exist")
            key_file.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it first: read theirs
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(KEY_BYTES) + "\n")
                logger.info("generated the audit checkpoint key %s", key_file)
        key = _read_key(key_file)
        retired_file = retired_key_file(key_file)
        retired = ([_read_key(retired_file, line) for line in retired_file.read_text().split() if line]
                   if retired_file.exists() else [])
        return cls(key, checkpoint_file, retired)

    def _sign(self, seq: int, head_hash: str, ts: datetime, key: bytes | None = None) -> str:
        unsigned = Checkpoint(seq, head_hash, ts, self.key_id, "0" * 64)
        return hmac.new(key or self._key, unsigned.message(), hashlib.sha256).hexdigest()

    def knows(self, key_id: str) -> bool:
        """True for this anchor's key and the keys it retired."""
        return key_id == self.key_id or key_id in self._retired

    def is_valid(self, checkpoint: Checkpoint) -> bool:
        """True when ``checkpoint`` was signed with this anchor's key (or a key it retired) and not changed since."""
        key = self._key if checkpoint.key_id == self.key_id else self._retired.get(checkpoint.key_id)
        if key is None:
            return False
        expected = self._sign(checkpoint.seq, checkpoint.head_hash, checkpoint.ts, key)
        return hmac.compare_digest(expected, checkpoint.signature)

    def key_hex(self) -> str:
        return self._key.hex()

    def retired_hex(self) -> list[str]:
        return [k.hex() for k in self._retired.values()]

    def checkpoint(self, db: _HasSession, reason: str) -> Checkpoint:
        """Sign the chain's current head (after integrating the queued events); store the checkpoint in the
        database, then append it to the file."""
        integrate_pending(db)
        with db.session() as session:
            head = session.scalars(select(AuditHead).where(AuditHead.id == HEAD_ID).with_for_update()).one()
            ts = utcnow()
            cp = Checkpoint(head.seq, head.hash, ts, self.key_id, self._sign(head.seq, head.hash, ts), reason[:40])
            session.add(AuditCheckpoint(seq=cp.seq, head_hash=cp.head_hash, ts=cp.ts, key_id=cp.key_id,
                                        signature=cp.signature, reason=cp.reason))
        if self.checkpoint_file is not None:
            append_checkpoint_line(self.checkpoint_file, cp)
        logger.debug("audit checkpoint %s at seq %s (%s)", cp.head_hash[:12], cp.seq, reason)
        return cp


def _read_key(key_file: Path, text: str | None = None) -> bytes:
    if key_file.stat().st_mode & 0o077:
        raise PermissionError(f"audit key file {key_file} is readable by other users: chmod 600 it")
    try:
        return bytes.fromhex((key_file.read_text() if text is None else text).strip())
    except ValueError:
        raise ValueError(f"audit key file {key_file} does not hold a hex key") from None


def write_private_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` owner-only (0600), replacing it in one step: a new file beside it, synced, then
    renamed into place, so a reader sees the old content or all of the new (never half a key or a manifest). If the
    write fails, the new file goes and ``path`` is as it was."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600, a fresh name
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private_text(path: Path, text: str) -> None:
    """:func:`write_private_bytes` of ``text`` in UTF-8."""
    write_private_bytes(path, text.encode("utf-8"))


def rotate_key(db: _HasSession, key_file: Path, checkpoint_file: Path | None, *, actor: str, reason: str
               ) -> tuple[AuditAnchor, dict[str, Any]]:
    """Make a new audit key and record the rotation in the chain; return the new anchor and the event's details.

    With the old key at hand, a last checkpoint is signed with it and it is kept in ``retired_key_file`` so the
    checkpoints it signed still verify. Without it (the file was lost), the key ids of the checkpoints it signed
    are recorded as lost: ``verify_chain`` then accepts those checkpoints (they cannot be checked) only when they
    come before the rotation and a checkpoint signed with the new key covers the rotation event, which this
    function signs at once. Any other checkpoint with an unknown key fails verification.
    """
    old: AuditAnchor | None = AuditAnchor.load(key_file, checkpoint_file, create=False) if key_file.exists() else None
    if old is not None:
        old.checkpoint(db, "rotate")
    with db.session(readonly=True) as session:
        signed_ids = {c.key_id for c in stored_checkpoints(session)}
    if checkpoint_file is not None and checkpoint_file.exists():
        signed_ids |= {c.key_id for c in read_checkpoint_file(checkpoint_file)[0]}
    retired = ([] if old is None else [bytes.fromhex(h) for h in (old.key_hex(), *old.retired_hex())])
    new = AuditAnchor(secrets.token_bytes(KEY_BYTES), checkpoint_file, retired)
    lost = sorted(k for k in signed_ids if not new.knows(k))
    details = {"old_key_id": None if old is None else old.key_id, "new_key_id": new.key_id,
               "old_key_kept": old is not None, "lost_key_ids": lost, "reason": reason}
    with db.session() as session:
        hold_chain(session)  # chained at once: the new key's first checkpoint must cover it
        append_event(session, actor=actor, action=KEY_ROTATED_ACTION, object_type="audit_key",
                     object_id=new.key_id, details=details)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    if retired:
        write_private_text(retired_key_file(key_file), "".join(k.hex() + "\n" for k in retired))
    write_private_text(key_file, new.key_hex() + "\n")
    new.checkpoint(db, "rotated")
    logger.warning("audit key rotated: %s -> %s (lost: %s)", details["old_key_id"], new.key_id, lost or "none")
    return new, details


def append_checkpoint_line(path: Path, checkpoint: Checkpoint) -> None:
    """Append one checkpoint as a JSON line to ``path`` (created owner-only), flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(canonical_json(checkpoint.to_dict()) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_checkpoint_file(path: Path) -> tuple[list[Checkpoint], list[str]]:
    """The checkpoints in a JSON Lines file, and one message per line that is not a checkpoint."""
    good: list[Checkpoint] = []
    bad: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                good.append(Checkpoint.from_dict(json.loads(line)))
            except (ValueError, TypeError, AttributeError):
                bad.append(f"{path.name} line {number} is not a checkpoint")
    return good, bad


def head_seq(session: Session) -> int:
    """How many events the chain holds, by its head row."""
    return session.scalar(select(AuditHead.seq).where(AuditHead.id == HEAD_ID)) or 0


def last_checkpoint_seq(db: _HasSession) -> int:
    """The event count of the newest checkpoint in the database (0 when there is none)."""
    with db.session(readonly=True) as session:
        return session.scalar(select(func.max(AuditCheckpoint.seq))) or 0


def stored_checkpoints(session: Session) -> list[Checkpoint]:
    """Every checkpoint stored in the database, oldest first."""
    rows = session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id))
    return [Checkpoint(r.seq, r.head_hash, r.ts, r.key_id, r.signature, r.reason) for r in rows]


# ---- verification ----


@dataclass
class _Damage:
    seq: int | None
    kind: str
    reason: str


@dataclass
class _Walk:
    """What one pass over the chain found (enough to classify damage without a second full pass)."""

    checked: int = 0
    last_hash: str = GENESIS_HASH
    damage: _Damage | None = None
    hash_at: dict[int, str] = field(default_factory=dict)
    erased: list[int] = field(default_factory=list)
    erasure_claims: set[int] = field(default_factory=set)
    # Erased events written before remains_hash existed: seq -> hash of their details now, and the hashes the
    # chained erasure (or sealing) events recorded for them.
    legacy_remains: dict[int, str] = field(default_factory=dict)
    remains_claims: dict[int, set[str]] = field(default_factory=dict)
    rotations: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


def verify_chain(
    db_or_session: Session | _HasSession,
    anchor: AuditAnchor | None = None,
    checkpoint_files: Iterable[Path] = (),
) -> ChainReport:
    """Walk the whole chain in seq order and report the first event that does not verify, and how.

    Without an ``anchor`` only the chain's inner consistency and ``audit_head`` are checked (a re-computed chain or
    a cut tail with a matching head then goes unnoticed). With it, every checkpoint in the database, in the
    anchor's checkpoint file and in ``checkpoint_files`` (e.g. a copy kept elsewhere) must be validly signed and
    match the chain. Accepts a ``Database`` (opens its own read-only session) or an open ``Session``. Queued events
    are integrated first; events queued while it walks are not part of the walk (they are not in the chain yet).
    """
    if isinstance(db_or_session, Session):
        bind = db_or_session.get_bind()
        integrate_pending(bind.engine if isinstance(bind, Connection) else bind)
        return _verify(db_or_session, anchor, list(checkpoint_files))
    integrate_pending(db_or_session)
    with db_or_session.session(readonly=True) as session:
        if session.get_bind().dialect.name == "postgresql":
            # One snapshot for the walk and the head: events integrated meanwhile are not a cut tail.
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        return _verify(session, anchor, list(checkpoint_files))


def _gather_checkpoints(session: Session, anchor: AuditAnchor | None, files: list[Path]
                        ) -> tuple[list[Checkpoint], list[str]]:
    if anchor is None:
        return [], []
    found = stored_checkpoints(session)
    warnings: list[str] = []
    in_db = {c.signature for c in found}
    paths = ([anchor.checkpoint_file] if anchor.checkpoint_file is not None else []) + files
    for path in paths:
        if not path.exists():
            if path == anchor.checkpoint_file and found:
                warnings.append(f"the checkpoint file {path.name} is missing")
            continue
        from_file, bad_lines = read_checkpoint_file(path)
        warnings.extend(bad_lines)
        missing = [c for c in from_file if c.signature not in in_db]
        if missing and path == anchor.checkpoint_file:
            warnings.append(f"{len(missing)} checkpoint(s) in {path.name} are missing from the database")
        for c in from_file:
            if c.signature not in in_db:
                in_db.add(c.signature)
                found.append(c)
    return found, warnings


def _verify(session: Session, anchor: AuditAnchor | None, files: list[Path]) -> ChainReport:
    checkpoints, warnings = _gather_checkpoints(session, anchor, files)
    valid: list[Checkpoint] = []
    unknown: list[Checkpoint] = []
    for cp in checkpoints:
        if anchor is not None and anchor.is_valid(cp):
            valid.append(cp)
        elif anchor is not None and not anchor.knows(cp.key_id):
            unknown.append(cp)
        else:
            return _report(0, _Damage(cp.seq, FORGED_CHECKPOINT,
                                      f"the checkpoint for seq {cp.seq} does not carry a valid signature"),
                           len(checkpoints), 0, warnings)
    if unknown:
        # A key is accepted unchecked only when a recorded rotation declared it lost, the checkpoint came before
        # that rotation, and a valid checkpoint covers the rotation event (whoever can only write the database
        # cannot add one). Any other key is foreign: the checkpoint is a forgery or from another installation.
        lost = _lost_keys(session)
        newest_valid = max((cp.seq for cp in valid), default=0)
        for cp in unknown:
            rotated_at = lost.get(cp.key_id)
            if rotated_at is None or cp.seq >= rotated_at or newest_valid < rotated_at:
                return _report(0, _Damage(cp.seq, FORGED_CHECKPOINT,
                                          f"the checkpoint for seq {cp.seq} is signed with a foreign key "
                                          f"({cp.key_id}) that no recorded key rotation retired"),
                               len(checkpoints), 0, warnings)
            warnings.append(f"the checkpoint at seq {cp.seq} is signed with key {cp.key_id}, lost and retired at "
                            f"event {rotated_at}; it cannot be checked")
    needed = {cp.seq for cp in valid}
    walk = _walk(session, needed, max(needed) if needed else None)
    if walk.damage is None:
        missing_claims = sorted(set(walk.erased) - walk.erasure_claims)
        if missing_claims:
            walk.damage = _Damage(missing_claims[0], EDITED,
                                  "the event's details were replaced without an erasure record")
    if walk.damage is None:
        for seq, digest in sorted(walk.legacy_remains.items()):
            claims = walk.remains_claims.get(seq)
            if not claims or claims != {digest}:
                walk.damage = _Damage(seq, EDITED, "what remains of the erased event's details differs from what "
                                                   "its erasure recorded")
                break
    if walk.damage is None:
        walk.damage = _check_head(session, walk)
    anchored = 0
    if walk.damage is None or walk.damage.kind == HEAD_REWRITTEN:
        cp_damage, anchored = _check_checkpoints(valid, walk)
        if cp_damage is not None and (walk.damage is None or cp_damage.kind in (TAIL_CUT, WIPED)):
            walk.damage = cp_damage
    return _report(walk.checked, walk.damage, len(valid), anchored, warnings)


def _lost_keys(session: Session) -> dict[str, int]:
    """key id -> the seq of the recorded rotation that declared it lost (the chain walk checks those events)."""
    lost: dict[str, int] = {}
    rows = session.execute(select(AuditEvent.seq, AuditEvent.details).where(AuditEvent.action == KEY_ROTATED_ACTION)
                           .order_by(AuditEvent.seq))
    for seq, details in rows:
        for key_id in (details or {}).get("lost_key_ids") or []:
            lost.setdefault(str(key_id), seq)
    return lost


def _report(checked: int, damage: _Damage | None, n_checkpoints: int, anchored: int,
            warnings: list[str]) -> ChainReport:
    if damage is None:
        return ChainReport(ok=True, checked=checked, checkpoints_checked=n_checkpoints, anchored_seq=anchored,
                           warnings=tuple(warnings))
    logger.warning("audit chain verification failed at seq %s (%s): %s", damage.seq, damage.kind, damage.reason)
    return ChainReport(ok=False, checked=checked, first_bad_seq=damage.seq, reason=damage.reason, kind=damage.kind,
                       checkpoints_checked=n_checkpoints, anchored_seq=anchored, warnings=tuple(warnings))


_WALK_COLUMNS = (AuditEvent.seq, type_coerce(AuditEvent.ts, String), AuditEvent.actor, AuditEvent.actor_id, AuditEvent.action,
                 AuditEvent.object_type, AuditEvent.object_id, cast(AuditEvent.details, Text),
                 AuditEvent.details_hash, AuditEvent.prev_hash, AuditEvent.hash, AuditEvent.erased_at,
                 AuditEvent.remains_hash)


def iso_utc(value: Any) -> str:
    """An event time as ``datetime.isoformat`` renders it at append time, from what the driver hands back raw.

    SQLite gives the stored text ("2026-11-26 15:00:00.123456", always UTC, always six fraction digits: cut and
    pasted here, the hot path of a million-event walk); PostgreSQL drivers give a datetime.
    """
    if isinstance(value, str) and len(value) == 26 and value[10] == " " and value[19] == ".":
        fraction = value[20:]
        return f"{value[:10]}T{value[11:19]}{'' if fraction == '000000' else '.' + fraction}+00:00"
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


_quote = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) uses for a str


def _payload_json(ts: str, actor: str, actor_id: int | None, action: str, otype: str | None, oid: str | None,
                  dhash: str, prev: str, remains: str | None = None) -> str:
    """``canonical_json([ts, actor, actor_id, action, otype, oid, dhash, prev(, remains)])``, built directly (3x
    faster)."""
    return (f"[{_quote(ts)},{_quote(actor)},{'null' if actor_id is None else int(actor_id)},{_quote(action)},"
            f"{'null' if otype is None else _quote(otype)},{'null' if oid is None else _quote(oid)},"
            f"{_quote(dhash)},{_quote(prev)}{'' if remains is None else ',' + _quote(remains)}]")


def _details_match(text: str | None, digest: str | None) -> bool:
    raw = text or "{}"
    if _sha256(raw) == digest:  # stored exactly as hashed (the usual case: the engine writes canonical JSON)
        return True
    try:
        return details_digest(json.loads(raw)) == digest
    except ValueError:
        return False


def _details_digest_of(text: str | None) -> str:
    try:
        return details_digest(json.loads(text or "{}"))
    except ValueError:
        return _sha256(text or "")


def _rows(session: Session) -> Iterator[Any]:
    """The walk's columns in seq order, streamed; on SQLite straight from the driver's cursor (no row objects)."""
    stmt = select(*_WALK_COLUMNS).where(AuditEvent.seq.is_not(None)).order_by(AuditEvent.seq)
    conn = session.connection()
    if conn.dialect.name != "sqlite":
        yield from session.execute(stmt.execution_options(yield_per=5000))
        return
    sql = str(stmt.compile(dialect=conn.dialect))
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
        while batch := cursor.fetchmany(5000):
            yield from batch
    finally:
        cursor.close()


def _walk(session: Session, needed: set[int], expected_total: int | None) -> _Walk:
    walk = _Walk()
    rows = _rows(session)
    expected, prev = 1, GENESIS_HASH
    for seq, ts, actor, actor_id, action, otype, oid, details, dhash, prev_hash, digest, erased_at, remains in rows:
        if seq != expected:
            walk.damage = _Damage(expected, DELETED, f"event {expected} is missing (the next event is {seq})"
                                  if seq == expected + 1 else
                                  f"events {expected} to {seq - 1} are missing (the next event is {seq})")
            return walk
        if erased_at is not None:
            walk.erased.append(seq)
            if remains is None:
                walk.legacy_remains[seq] = _details_digest_of(details)
            elif not _details_match(details, remains):
                walk.damage = _Damage(seq, EDITED, "what remains of the erased event's details does not match the "
                                                   "hash chained with it: a field other than the erased ones changed")
                return walk
        elif not _details_match(details, dhash):
            walk.damage = _Damage(seq, EDITED, "the event's details do not match the hash they were chained with")
            return walk
        content_ok = _sha256(_payload_json(iso_utc(ts), actor, actor_id, action, otype, oid, dhash or "",
                                           prev_hash, remains)) == digest
        if prev_hash != prev:
            walk.damage = _classify_link(session, seq, prev_hash, content_ok, expected_total)
            return walk
        if not content_ok:
            walk.damage = _classify_content(session, seq, digest)
            return walk
        if action in (ERASURE_ACTION, ERASURE_SEALED_ACTION) and details:
            parsed = json.loads(details)
            claimed = parsed.get("audit_seqs") or []
            walk.erasure_claims.update(int(s) for s in claimed if isinstance(s, int))
            for key, value in (parsed.get("remains") or {}).items():
                if str(key).isdigit() and isinstance(value, str):
                    walk.remains_claims.setdefault(int(key), set()).add(value)
        elif action == KEY_ROTATED_ACTION and details:
            walk.rotations.append((seq, json.loads(details)))
        if seq in needed:
            walk.hash_at[seq] = digest
        prev = digest
        expected += 1
        walk.checked += 1
    walk.last_hash = prev
    return walk


def _seq_of_hash(session: Session, digest: str) -> int | None:
    return session.scalar(select(AuditEvent.seq).where(AuditEvent.hash == digest).limit(1))


def _classify_link(session: Session, seq: int, prev_hash: str, content_ok: bool,
                   expected_total: int | None) -> _Damage:
    """Event ``seq`` does not chain to the event before it: find out what happened in between."""
    target = _seq_of_hash(session, prev_hash)
    if target is not None and target >= seq:
        return _Damage(seq, REORDERED, f"event {seq} chains to event {target}, which comes after it: "
                                       "events were moved")
    if target is not None:
        first = target + 1
        return _Damage(first, INSERTED, f"event {seq} chains to event {target}: events {first} to {seq - 1} "
                                        "were inserted" if first < seq - 1 else
                                        f"event {seq} chains to event {target}: event {first} was inserted")
    if content_ok:
        # It chains to an event no longer in the log: events were removed and the rest renumbered, or the event before
        # it was replaced. A signed count that the log still reaches rules out the removal.
        if seq > 1 and expected_total is not None and _count(session) >= expected_total:
            return _Damage(seq - 1, EDITED, f"event {seq} chains to an event that is not in the log, and no event is "
                                            f"missing: event {seq - 1} was replaced")
        return _Damage(seq, DELETED, f"event {seq} chains to an event that is not in the log: events before it were "
                                     "removed and the rest renumbered (or the event before it was replaced)")
    return _Damage(seq, EDITED, "the event's content does not match its hash")


def _count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.seq.is_not(None))) or 0


def _classify_content(session: Session, seq: int, digest: str) -> _Damage:
    """Event ``seq`` chains correctly but its content does not match its hash: edited, or inserted by hand."""
    following = session.scalar(select(AuditEvent.prev_hash).where(AuditEvent.seq == seq + 1))
    if following is not None and following != digest:
        return _Damage(seq, INSERTED, f"event {seq} does not match its hash and the next event skips it: "
                                      "it was inserted")
    return _Damage(seq, EDITED, "the event's content does not match its hash")


def _check_head(session: Session, walk: _Walk) -> _Damage | None:
    head = session.get(AuditHead, HEAD_ID)
    if head is None:
        return _Damage(None, HEAD_REWRITTEN, "the audit_head row is missing")
    if head.seq > walk.checked:
        kind = WIPED if walk.checked == 0 else TAIL_CUT
        return _Damage(walk.checked + 1, kind, f"audit_head says {head.seq} events but the log holds {walk.checked}")
    if head.seq < walk.checked:
        return _Damage(head.seq + 1, INSERTED, f"events after {head.seq} were added without moving audit_head")
    if head.hash != walk.last_hash:
        return _Damage(head.seq or None, HEAD_REWRITTEN, "audit_head's hash does not match the last event")
    return None


def _check_checkpoints(valid: list[Checkpoint], walk: _Walk) -> tuple[_Damage | None, int]:
    anchored = 0
    for cp in sorted(valid, key=lambda c: c.seq):
        if cp.seq > walk.checked:
            kind = WIPED if walk.checked == 0 else TAIL_CUT
            when = cp.ts.strftime("%Y-%m-%d %H:%M UTC")
            return _Damage(walk.checked + 1, kind, f"a checkpoint signed at {when} covers {cp.seq} events but the log "
                                                   f"holds {walk.checked}"), anchored
        if cp.seq == 0:
            continue
        if walk.hash_at.get(cp.seq) != cp.head_hash:
            return _Damage(anchored + 1, REWRITTEN,
                           f"event {cp.seq} differs from the signed checkpoint: events {anchored + 1} to {cp.seq} "
                           "were re-computed after being anchored"), anchored
        anchored = cp.seq
    return None, anchored


def iter_events(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
    action_prefix: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    after_seq: int | None = None,
    limit: int | None = None,
) -> Iterator[AuditEvent]:
    """Events in seq order matching every given filter (``since`` inclusive, ``until`` exclusive); queued events
    (batched sequencing) come last, in id order (``after_seq`` leaves them out).

    Streams in batches, so exporting a large log does not load it all at once.
    """
    stmt = select(AuditEvent)
    if since is not None:
        stmt = stmt.where(AuditEvent.ts >= since)
    if until is not None:
        stmt = stmt.where(AuditEvent.ts < until)
    if actor is not None:
        stmt = stmt.where(AuditEvent.actor == actor)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    if action_prefix is not None:
        stmt = stmt.where(AuditEvent.action.startswith(action_prefix, autoescape=True))
    if object_type is not None:
        stmt = stmt.where(AuditEvent.object_type == object_type)
    if object_id is not None:
        stmt = stmt.where(AuditEvent.object_id == str(object_id))
    if after_seq is not None:
        stmt = stmt.where(AuditEvent.seq > after_seq)
    stmt = _in_order(session, stmt)
    if limit is not None:
        stmt = stmt.limit(limit)
    yield from session.scalars(stmt.execution_options(yield_per=500))


def _in_order(session: Session, stmt: Select[Any], *, newest_first: bool = False) -> Select[Any]:
    """``stmt`` in chain order, queued events after the chained ones in id order (PostgreSQL sorts NULL seqs last
    ascending and first descending). SQLite never queues (inline sequencing): plain seq order keeps its index."""
    seq = AuditEvent.seq.desc() if newest_first else AuditEvent.seq
    if session.get_bind().dialect.name == "sqlite":
        return stmt.order_by(seq)
    return stmt.order_by(seq, AuditEvent.id.desc() if newest_first else AuditEvent.id)


def event_to_dict(event: AuditEvent) -> dict[str, Any]:
    """An event as a plain dict with every column (``ts`` as ISO text), e.g. for JSON Lines export."""
    return {
        "id": event.id,
        "seq": event.seq,
        "ts": event.ts.isoformat(),
        "actor": event.actor,
        "actor_id": event.actor_id,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "details": event.details,
        "details_hash": event.details_hash,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
        "erased_at": event.erased_at.isoformat() if event.erased_at else None,
    }


def latest_event(session: Session, action: str) -> AuditEvent | None:
    """The newest audit event with this action, or None."""
    stmt = _in_order(session, select(AuditEvent).where(AuditEvent.action == action), newest_first=True)
    return session.scalars(stmt.limit(1)).first()


def events_about(session: Session, actions: Sequence[str], *, object_type: str | None = None,
                 object_id: str | None = None, limit: int = 1000) -> list[AuditEvent]:
    """Audit events with one of ``actions`` (optionally about one object), oldest first, the newest ``limit``."""
    stmt = select(AuditEvent).where(AuditEvent.action.in_(tuple(actions)))
    if object_type is not None:
        stmt = stmt.where(AuditEvent.object_type == object_type)
    if object_id is not None:
        stmt = stmt.where(AuditEvent.object_id == object_id)
    newest = list(session.scalars(_in_order(session, stmt, newest_first=True).limit(limit)))
    return newest[::-1]
