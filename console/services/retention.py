"""Retention (stored text is dropped after a while, metadata stays) and erasure of one person's content.

Retention is a system job (:class:`RetentionTask` in each console process, ``llm-console retention apply`` from a
shell): raw (unredacted) texts older than ``retention_raw_days`` and the stored prompt and answer text of exchanges
older than ``retention_text_days`` are replaced by ``""`` and stamped; a conversation whose exchanges are all
erased loses its title and system prompt, and a review item of an erased exchange its note. Timings, statuses,
findings (which hold no text), review decisions and the audit chain stay. It works in batches, one short write
transaction and one ``retention.apply`` audit event each, so a first run over a large store never holds the write
lock for long. Exchanges still being answered (``pending``) are left alone.

Erasure (:func:`erase_user`, admins; :func:`erase_user_cli`) removes, in one transaction, every text a person
stored: their exchanges' prompts and answers, raw texts, conversation titles and system prompts, their review
item notes, the notes of the review decisions they wrote, and the personal details of the audit events about or
by them (``db.audit.PERSONAL_DETAIL_KEYS``); then one ``privacy.erase`` event lists what changed. The account
itself stays (disable it separately). The reason an admin gives is checked but stored nowhere: it may name the
person whose data is going.

On SQLite, a changed row's old bytes could stay in the file's free space and in the write-ahead log. The
database runs with ``secure_delete`` on (``db.database``), so SQLite overwrites them, and after an erasure or a
retention run the log is checkpointed and truncated, so the text is gone from the files, not only from the rows.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput, NotFound
from console.services.periodic import PeriodicTask
from console.services.text import clean_text
from db import audit as audit_q
from db import users as users_q
from db.tables import AuditEvent, Conversation, Exchange, RawText, ReviewDecision, ReviewItem

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

SYSTEM_ACTOR = "system"
CLI_ACTOR = "cli"
RETENTION_ACTION = "retention.apply"
BATCH_SIZE = 500
MIN_REASON_CHARS = 10
MAX_REASON_CHARS = 2000
LOG_CHECKPOINT_WAIT_MS = 1000
# What an erasure removes and what it keeps: the CLI and the Users page show these words.
ERASES = ("the prompts and answers of every conversation, their titles and system prompts, the raw "
          "(unredacted) texts kept for review, notes on review items of those conversations and the notes the "
          "person wrote, the notes of review decisions the person wrote, and personal details (such as emails "
          "and reasons typed) in audit events about or by the person")
KEEPS = ("the account itself (disable it separately), when and how each exchange ran (timings, model, status), "
         "safety findings (they hold no text), review decisions without their notes, and the audit chain, "
         "which still verifies")


@dataclass(frozen=True)
class RetentionResult:
    """What one retention run erased (or, with ``dry_run``, would erase), and the cut-offs it used."""

    raw_cutoff: datetime
    text_cutoff: datetime
    exchanges: int = 0
    raw_texts: int = 0
    conversations: int = 0
    review_notes: int = 0
    batches: int = 0
    dry_run: bool = False
    log_truncated: bool | None = None  # SQLite: the write-ahead log was emptied afterwards (None: not tried)

    @property
    def total(self) -> int:
        return self.exchanges + self.raw_texts + self.conversations + self.review_notes


@dataclass(frozen=True)
class ErasureResult:
    """What an erasure of one person's content changed (or, with ``dry_run``, would change)."""

    user_id: int
    username: str
    exchanges: int = 0
    raw_texts: int = 0
    conversations: int = 0
    review_notes: int = 0
    decision_notes: int = 0
    audit_seqs: tuple[int, ...] = field(default_factory=tuple)
    event_seq: int | None = None  # the privacy.erase event
    dry_run: bool = False
    log_truncated: bool | None = None

    @property
    def summary(self) -> str:
        return (f"{self.exchanges} exchanges, {self.raw_texts} raw texts, {self.conversations} conversations, "
                f"{self.review_notes} review item notes, {self.decision_notes} decision notes, "
                f"{len(self.audit_seqs)} audit events")


# --- retention ----------------------------------------------------------------------------------------------------


def cutoffs(ctx: AppContext, now: datetime | None = None) -> tuple[datetime, datetime]:
    """``(raw_cutoff, text_cutoff)``: what was created before them is past its retention.

    Raw text never outlives the stored text: if ``retention_text_days`` is the shorter, it applies to raw text too.
    """
    now = now or ctx.now()
    text_cutoff = now - timedelta(days=ctx.settings.retention_text_days)
    raw_cutoff = max(now - timedelta(days=ctx.settings.retention_raw_days), text_cutoff)
    return raw_cutoff, text_cutoff


def _old_exchanges(text_cutoff: datetime) -> sa.Select[Any]:
    return (sa.select(Exchange.id)
            .where(Exchange.created_at < text_cutoff, Exchange.text_erased_at.is_(None),
                   Exchange.status != "pending")
            .order_by(Exchange.id))


def _old_raw_texts(raw_cutoff: datetime) -> sa.Select[Any]:
    return (sa.select(RawText.id).join(Exchange, Exchange.id == RawText.exchange_id)
            .where(RawText.erased_at.is_(None), Exchange.created_at < raw_cutoff, Exchange.status != "pending")
            .order_by(RawText.id))


def _bare_conversations(text_cutoff: datetime) -> sa.Select[Any]:
    # Conversations with text left whose every exchange is erased (or that never had one), older than the cut-off.
    live = sa.select(Exchange.id).where(Exchange.conversation_id == Conversation.id, Exchange.text_erased_at.is_(None))
    return (sa.select(Conversation.id)
            .where(Conversation.created_at < text_cutoff, ~live.exists(),
                   sa.or_(Conversation.title != "", Conversation.system_prompt.is_not(None)))
            .order_by(Conversation.id))


def _count(session: Session, stmt: sa.Select[Any]) -> int:
    return int(session.scalar(sa.select(sa.func.count()).select_from(stmt.order_by(None).subquery())) or 0)


def _erase_exchanges(session: Session, ids: Sequence[int] | sa.Select[Any], now: datetime) -> tuple[int, int, int]:
    """Blank the exchanges ``ids`` (a list or a query) with text left, their raw texts and their items' notes."""
    if isinstance(ids, Sequence) and not ids:
        return 0, 0, 0
    exchanges = session.execute(
        sa.update(Exchange).where(Exchange.id.in_(ids))
        .where(sa.or_(Exchange.text_erased_at.is_(None), Exchange.prompt != "", Exchange.response != ""))
        .values(prompt="", response="", text_erased_at=now).execution_options(synchronize_session=False)
    ).rowcount
    raw = _erase_raw(session, sa.select(RawText.id).where(RawText.exchange_id.in_(ids)), now)
    notes = session.execute(
        sa.update(ReviewItem).where(ReviewItem.exchange_id.in_(ids), ReviewItem.note.is_not(None))
        .values(note=None).execution_options(synchronize_session=False)
    ).rowcount
    return exchanges, raw, notes


def _erase_raw(session: Session, ids: sa.Select[Any] | Sequence[int], now: datetime) -> int:
    return session.execute(
        sa.update(RawText).where(RawText.id.in_(ids))
        .where(sa.or_(RawText.erased_at.is_(None), RawText.text != ""))
        .values(text="", erased_at=now).execution_options(synchronize_session=False)
    ).rowcount


def _strip_conversations(session: Session, where: sa.ColumnElement[bool]) -> int:
    return session.execute(
        sa.update(Conversation).where(where)
        .where(sa.or_(Conversation.title != "", Conversation.system_prompt.is_not(None)))
        .values(title="", system_prompt=None).execution_options(synchronize_session=False)
    ).rowcount


def apply_retention(ctx: AppContext, *, now: datetime | None = None, dry_run: bool = False,
                    batch_size: int = BATCH_SIZE) -> RetentionResult:
    """Erase the text that is past retention (a system job; see the module's docstring). Idempotent.

    Each batch of at most ``batch_size`` rows is its own transaction with one ``retention.apply`` event holding
    its counts and the cut-offs; a run with nothing to erase writes nothing. ``dry_run`` only counts.
    """
    raw_cutoff, text_cutoff = cutoffs(ctx, now)
    if dry_run:
        with ctx.db.session(readonly=True) as s:
            old = _old_exchanges(text_cutoff)
            stale_notes = sa.select(ReviewItem.id).where(ReviewItem.exchange_id.in_(old.order_by(None)),
                                                         ReviewItem.note.is_not(None))
            old_convs = sa.select(Conversation.id).where(
                Conversation.created_at < text_cutoff,
                sa.or_(Conversation.title != "", Conversation.system_prompt.is_not(None)),
                ~sa.select(Exchange.id).where(Exchange.conversation_id == Conversation.id,
                                              sa.or_(Exchange.created_at >= text_cutoff,
                                                     Exchange.status == "pending")).exists())
            raw_q = sa.select(RawText.id).join(Exchange, Exchange.id == RawText.exchange_id).where(
                RawText.erased_at.is_(None), Exchange.created_at < raw_cutoff, Exchange.status != "pending")
            return RetentionResult(raw_cutoff, text_cutoff, exchanges=_count(s, old), raw_texts=_count(s, raw_q),
                                   conversations=_count(s, old_convs), review_notes=_count(s, stale_notes),
                                   dry_run=True)
    totals = {"exchanges": 0, "raw_texts": 0, "conversations": 0, "review_notes": 0}
    batches = 0
    cut = {"raw_cutoff": raw_cutoff.isoformat(), "text_cutoff": text_cutoff.isoformat(),
           "raw_days": ctx.settings.retention_raw_days, "text_days": ctx.settings.retention_text_days}

    def batch(kind: str, work: Any) -> int:
        nonlocal batches
        with ctx.db.session() as s:
            counts = work(s)
            if not any(counts.values()):
                return 0
            audit_q.append_event(s, actor=SYSTEM_ACTOR, action=RETENTION_ACTION, object_type="retention",
                                 details={"batch": kind, **counts, **cut})
        batches += 1
        for key, value in counts.items():
            totals[key] += value
        return sum(counts.values())

    def texts(s: Session) -> dict[str, int]:
        ids = list(s.scalars(_old_exchanges(text_cutoff).limit(batch_size)))
        stamp = ctx.now()
        exchanges, raw, notes = _erase_exchanges(s, ids, stamp)
        return {"exchanges": exchanges, "raw_texts": raw, "review_notes": notes}

    def raws(s: Session) -> dict[str, int]:
        ids = list(s.scalars(_old_raw_texts(raw_cutoff).limit(batch_size)))
        return {"raw_texts": _erase_raw(s, ids, ctx.now()) if ids else 0}

    def conversations(s: Session) -> dict[str, int]:
        ids = list(s.scalars(_bare_conversations(text_cutoff).limit(batch_size)))
        return {"conversations": _strip_conversations(s, Conversation.id.in_(ids)) if ids else 0}

    for kind, work in (("text", texts), ("raw", raws), ("conversations", conversations)):
        while batch(kind, work):  # each batch erases what it selected, so the next one selects what is left
            pass
    log_truncated = _truncate_log(ctx) if batches else None
    result = RetentionResult(raw_cutoff, text_cutoff, exchanges=totals["exchanges"], raw_texts=totals["raw_texts"],
                             conversations=totals["conversations"], review_notes=totals["review_notes"],
                             batches=batches, log_truncated=log_truncated)
    if batches:
        logger.info("retention: erased %s exchanges, %s raw texts, %s conversations, %s review notes in %s batches",
                    result.exchanges, result.raw_texts, result.conversations, result.review_notes, batches)
    return result


class RetentionTask(PeriodicTask):
    """Applies retention every ``retention_check_seconds`` in a console process (several processes may: each batch
    re-selects what is left inside its own write transaction)."""

    def __init__(self, ctx: AppContext, *, interval_s: float | None = None) -> None:
        super().__init__(ctx.settings.retention_check_seconds if interval_s is None else interval_s,
                         name="retention")
        self.ctx = ctx
        self._lock = threading.Lock()

    def run_once(self) -> RetentionResult:
        with self._lock:
            return apply_retention(self.ctx)


# --- erasure of one person's content ------------------------------------------------------------------------------


def _check_reason(reason: str | None) -> None:
    text = clean_text(reason or "").strip()
    if len(text) < MIN_REASON_CHARS:
        raise InvalidInput(f"Give the reason for the erasure ({MIN_REASON_CHARS} characters at least, e.g. the "
                           "request's reference); it is checked but not stored.")
    if len(text) > MAX_REASON_CHARS:
        raise InvalidInput(f"Keep the reason under {MAX_REASON_CHARS:,} characters.")


def _target(session: Session, username: str) -> Any:
    name = (username or "").strip().lower()
    user = users_q.get_user_by_username(session, name[:200]) if name else None
    if user is None:
        raise NotFound(f"No user named {clean_text(name)[:64]!r}.")
    return user


def _personal_events(session: Session, user_id: int, username: str) -> list[AuditEvent]:
    """Audit events about or by the person whose action lists personal detail keys, oldest first."""
    actions = [a for a, keys in audit_q.PERSONAL_DETAIL_KEYS.items() if keys]
    if not actions:
        return []
    about = sa.and_(AuditEvent.object_type == "user", AuditEvent.object_id.in_([str(user_id), username]))
    # System events done on the person's request (a switch the reconciler carried out) name them in requested_by.
    by = sa.or_(AuditEvent.actor_id == user_id, AuditEvent.actor == username,
                AuditEvent.details["requested_by"].as_string() == username)
    stmt = (sa.select(AuditEvent).where(AuditEvent.action.in_(actions), sa.or_(about, by))
            .order_by(AuditEvent.seq))
    return list(session.scalars(stmt))


def _erase(ctx: AppContext, actor: str, actor_id: int | None, username: str, reason: str, *,
           dry_run: bool = False) -> ErasureResult:
    _check_reason(reason)
    now = ctx.now()
    with ctx.db.session(readonly=dry_run) as s:
        user = _target(s, username)
        if actor_id is not None and user.id == actor_id:
            raise InvalidInput("You cannot erase your own content; ask another admin.")
        uid = user.id
        conv_ids = sa.select(Conversation.id).where(Conversation.user_id == uid)
        ex_ids = sa.select(Exchange.id).where(sa.or_(Exchange.user_id == uid, Exchange.conversation_id.in_(conv_ids)))
        decision_where = sa.and_(ReviewDecision.reviewer_id == uid, ReviewDecision.note.is_not(None))
        item_where = sa.and_(sa.or_(ReviewItem.exchange_id.in_(ex_ids), ReviewItem.created_by_id == uid),
                             ReviewItem.note.is_not(None))
        events = _personal_events(s, uid, user.username)
        if dry_run:
            n_ex = _count(s, sa.select(Exchange.id).where(
                Exchange.id.in_(ex_ids),
                sa.or_(Exchange.text_erased_at.is_(None), Exchange.prompt != "", Exchange.response != "")))
            n_raw = _count(s, sa.select(RawText.id).where(
                RawText.exchange_id.in_(ex_ids), sa.or_(RawText.erased_at.is_(None), RawText.text != "")))
            n_conv = _count(s, sa.select(Conversation.id).where(
                Conversation.user_id == uid,
                sa.or_(Conversation.title != "", Conversation.system_prompt.is_not(None))))
            seqs = tuple(e.seq for e in events if _has_personal(e))
            return ErasureResult(uid, user.username, exchanges=n_ex, raw_texts=n_raw, conversations=n_conv,
                                 review_notes=_count(s, sa.select(ReviewItem.id).where(item_where)),
                                 decision_notes=_count(s, sa.select(ReviewDecision.id).where(decision_where)),
                                 audit_seqs=seqs, dry_run=True)
        n_ex, n_raw, n_items = _erase_exchanges(s, ex_ids, now)
        n_conv = _strip_conversations(s, Conversation.user_id == uid)
        # Notes the person wrote on review items of other exchanges (sending them to review).
        n_items += s.execute(sa.update(ReviewItem).where(item_where).values(note=None)
                             .execution_options(synchronize_session=False)).rowcount
        # Core UPDATE: the ORM refuses changes to review decisions; the database trigger allows exactly this one.
        table = ReviewDecision.__table__
        n_decisions = s.execute(sa.update(table).where(table.c.reviewer_id == uid, table.c.note.is_not(None))
                                .values(note=None, note_erased_at=now)).rowcount
        by_action: dict[str, list[AuditEvent]] = defaultdict(list)
        for event in events:
            by_action[event.action].append(event)
        seqs: list[int] = []
        for action, group in by_action.items():
            seqs.extend(audit_q.erase_event_details(s, group, audit_q.PERSONAL_DETAIL_KEYS[action]))
        seqs.sort()
        # No username and no reason here: both may identify the person this erasure is for.
        event = audit_q.append_event(
            s, actor=actor, actor_id=actor_id, action=audit_q.ERASURE_ACTION, object_type="user", object_id=uid,
            details={"user": uid, "reason_given": True, "exchanges": n_ex, "raw_texts": n_raw,
                     "conversations": n_conv, "review_notes": n_items, "decision_notes": n_decisions,
                     "audit_seqs": seqs})
        result = ErasureResult(uid, user.username, exchanges=n_ex, raw_texts=n_raw, conversations=n_conv,
                               review_notes=n_items, decision_notes=n_decisions, audit_seqs=tuple(seqs),
                               event_seq=event.seq)
    logger.warning("erased the content of user id %s by %s: %s", uid, actor, result.summary)
    return replace(result, log_truncated=_truncate_log(ctx))


def _has_personal(event: AuditEvent) -> bool:
    keys = audit_q.PERSONAL_DETAIL_KEYS.get(event.action, ())
    details = event.details or {}
    return event.erased_at is None and any(details.get(k) not in (None, "", [], {}) for k in keys)


@requires("users.erase")
def erase_user(ctx: AppContext, actor: Principal, username: str, reason: str) -> ErasureResult:
    """Erase every text ``username`` stored (see the module's docstring), in one transaction; audited as
    ``privacy.erase``. ``reason`` (10 to 2,000 characters) is required but not stored. An admin cannot erase their
    own content."""
    return _erase(ctx, actor.username, actor.user_id, username, reason)


def erase_user_cli(ctx: AppContext, username: str, reason: str, *, dry_run: bool = False) -> ErasureResult:
    """The same from the command line (the shell user is trusted, as with ``init``); ``dry_run`` only counts, after
    checking the name and the reason."""
    return _erase(ctx, CLI_ACTOR, None, username, reason, dry_run=dry_run)


# --- the SQLite files ---------------------------------------------------------------------------------------------


def _truncate_log(ctx: AppContext) -> bool | None:
    """SQLite: copy the write-ahead log into the database and empty it, so the old page images that still hold
    erased text leave the files now rather than at some later checkpoint. True when it was emptied; False when a
    reader still needed it (it is overwritten as the log is reused); None on other databases."""
    if ctx.db.url.get_backend_name() != "sqlite":
        return None
    raw = ctx.db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            # A truncating checkpoint holds off writers while it waits for readers: wait one second at most, not
            # the usual busy timeout, so a long export cannot stall everyone's chat behind it.
            cursor.execute(f"PRAGMA busy_timeout={LOG_CHECKPOINT_WAIT_MS}")
            try:
                cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                row = cursor.fetchone()
            finally:
                cursor.execute(f"PRAGMA busy_timeout={int(ctx.db.config.busy_timeout_ms)}")
        finally:
            cursor.close()
    except Exception:  # the erasure itself committed; a busy log is emptied later by SQLite's own checkpoints
        logger.warning("could not checkpoint the write-ahead log after an erasure", exc_info=True)
        return False
    finally:
        raw.close()
    busy = bool(row and row[0])
    if busy:
        logger.warning("the write-ahead log could not be emptied now (a reader holds it); old pages go later")
    return not busy
