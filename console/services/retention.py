"""Retention (stored text is dropped after a while, metadata stays) and erasure of one person's content.

Retention is a system job (:class:`RetentionTask` in each console process, ``llm-console retention apply`` from a
shell): raw (unredacted) texts older than ``retention_raw_days`` and the stored prompt and answer text of exchanges
older than ``retention_text_days`` are replaced by ``""`` and stamped; a conversation whose exchanges are all
erased loses its title and system prompt, and a review item of an erased exchange its note. Timings, statuses,
findings (which hold no text), review decisions and the audit chain stay. It works in batches, one short write
transaction and one ``retention.apply`` audit event each, so a first run over a large store never holds the write
lock for long. Exchanges still being answered (``pending``) are left alone.

Erasure takes four eyes: an admin (:func:`request_erasure`) or the shell (:func:`request_erasure_cli`) asks for
the erasure of one account's content, by user id, with a reason; another admin approves it
(:func:`decide_erasure`), which carries it out in one transaction: the person's exchanges' prompts and answers,
raw texts, conversation titles and system prompts, their review item notes, the notes of the review decisions they
wrote, and the personal details of the audit events about or by them (``db.audit.PERSONAL_DETAIL_KEYS``), matched
by user id; then one ``privacy.erase`` event lists what changed. The account itself stays (disable it separately).
The reason is shown to the approver and blanked once the request is decided: it may name the person.

Logs of the AI system are kept six months at least (EU AI Act art. 19 and 26): without a legal basis typed in the
request, an erasure leaves every row younger than ``LOG_FLOOR_DAYS`` (exchanges, raw texts, notes, decisions, audit
events) and says how much it kept; with one, the basis is recorded in the request and the audit events.

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
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa

from console.services import export_files as export_files_svc
from console.services import four_eyes
from console.services.access import Principal, requires, same_person
from console.services.context import AppContext
from console.services.errors import InvalidInput, NotFound
from console.services.periodic import PeriodicTask
from console.services.text import optional_text, required_text
from db import audit as audit_q
from db import erasure as erasure_q
from db import feedback as feedback_q
from db import users as users_q
from db.tables import (
    ERASURE_REQUEST_STATUSES,
    AuditEvent,
    Conversation,
    ErasureRequest,
    Exchange,
    RawText,
    ReviewDecision,
    ReviewItem,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

SYSTEM_ACTOR = "system"
RETENTION_ACTION = "retention.apply"
BATCH_SIZE = 500
MIN_REASON_CHARS = 10
MAX_REASON_CHARS = 2000
LOG_CHECKPOINT_WAIT_MS = 1000
# Six months (EU AI Act art. 19 and 26: deployers keep the logs of a high-risk AI system at least six months).
# Not a setting: lowering it is what the law forbids; only a legal basis typed in the request reaches past it.
LOG_FLOOR_DAYS = 183
SHELL = "the shell"
REQUEST_ACTION = "privacy.erase_requested"
REJECT_ACTION = "privacy.erase_rejected"
CANCEL_ACTION = "privacy.erase_cancelled"
WHAT = "erasure request"
# What an erasure removes and what it keeps: the CLI and the Users page show these words.
ERASES = ("the prompts and answers of every conversation, their titles and system prompts, the raw "
          "(unredacted) texts kept for review, notes on review items of those conversations and the notes the "
          "person wrote, the reasons given with thumbs up or down on those answers, the notes of review decisions the person wrote, and personal details (such as emails "
          "and reasons typed) in audit events about or by the person")
KEEPS = ("the account itself (disable it separately), when and how each exchange ran (timings, model, status), "
         "safety findings (they hold no text), review decisions without their notes, the audit chain, which "
         "still verifies, and, unless a legal basis is given, everything younger than six months (the AI "
         "system's logs are kept that long)")


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
    # A preview on PostgreSQL may list None: an event still queued for the chain (no seq yet); its length counts.
    audit_seqs: tuple[int | None, ...] = field(default_factory=tuple)
    event_seq: int | None = None  # the privacy.erase event
    dry_run: bool = False
    log_truncated: bool | None = None
    held_exchanges: int = 0  # exchanges with text kept because they are younger than the floor
    held_events: int = 0  # audit events with personal details kept for the same reason
    floor: datetime | None = None  # None: a legal basis reaches every age
    request_id: int | None = None

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


def _changed(session: Session, stmt: sa.Update) -> int:
    """The rows an UPDATE changed: it gives a CursorResult (with rowcount); Session.execute is typed for any
    statement."""
    return cast(sa.CursorResult[Any], session.execute(stmt)).rowcount


def _erase_exchanges(session: Session, ids: Sequence[int] | sa.Select[Any], now: datetime) -> tuple[int, int, int]:
    """Blank the exchanges ``ids`` (a list or a query) with text left, their raw texts and their items' notes."""
    if isinstance(ids, Sequence) and not ids:
        return 0, 0, 0
    exchanges = _changed(session,
        sa.update(Exchange).where(Exchange.id.in_(ids))
        .where(sa.or_(Exchange.text_erased_at.is_(None), Exchange.prompt != "", Exchange.response != ""))
        .values(prompt="", response="", text_erased_at=now).execution_options(synchronize_session=False))
    raw = _erase_raw(session, sa.select(RawText.id).where(RawText.exchange_id.in_(ids)), now)
    notes = _changed(session,
        sa.update(ReviewItem).where(ReviewItem.exchange_id.in_(ids), ReviewItem.note.is_not(None))
        .values(note=None).execution_options(synchronize_session=False))
    feedback_q.erase_reasons(session, ids)  # a reason given with a thumbs up or down goes with the answer's text
    return exchanges, raw, notes


def _erase_raw(session: Session, ids: sa.Select[Any] | Sequence[int], now: datetime) -> int:
    return _changed(session,
        sa.update(RawText).where(RawText.id.in_(ids))
        .where(sa.or_(RawText.erased_at.is_(None), RawText.text != ""))
        .values(text="", erased_at=now).execution_options(synchronize_session=False))


def _strip_conversations(session: Session, where: sa.ColumnElement[bool]) -> int:
    return _changed(session,
        sa.update(Conversation).where(where)
        .where(sa.or_(Conversation.title != "", Conversation.system_prompt.is_not(None)))
        .values(title="", system_prompt=None).execution_options(synchronize_session=False))


def apply_retention(ctx: AppContext, *, now: datetime | None = None, dry_run: bool = False,
                    batch_size: int = BATCH_SIZE, by: Principal | None = None) -> RetentionResult:
    """Erase the text that is past retention (a system job; see the module's docstring). Idempotent.

    Each batch of at most ``batch_size`` rows is its own transaction with one ``retention.apply`` event holding
    its counts and the cut-offs; a run with nothing to erase writes nothing. ``dry_run`` only counts. The events'
    actor is the system, or ``by`` when someone asked for the run (:func:`run_retention`).
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
            audit_q.append_event(s, actor=SYSTEM_ACTOR if by is None else by.username,
                                 actor_id=None if by is None else by.user_id, action=RETENTION_ACTION,
                                 object_type="retention",
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
    export_files_svc.delete_expired_exports(ctx, now=now)  # export files past their hours (or raw retention)
    log_truncated = _truncate_log(ctx) if batches else None
    result = RetentionResult(raw_cutoff, text_cutoff, exchanges=totals["exchanges"], raw_texts=totals["raw_texts"],
                             conversations=totals["conversations"], review_notes=totals["review_notes"],
                             batches=batches, log_truncated=log_truncated)
    if batches:
        logger.info("retention: erased %s exchanges, %s raw texts, %s conversations, %s review notes in %s batches",
                    result.exchanges, result.raw_texts, result.conversations, result.review_notes, batches)
    return result


@requires("retention.apply")
def run_retention(ctx: AppContext, actor: Principal, *, dry_run: bool = False) -> RetentionResult:
    """Apply retention now (``llm-console retention apply``) rather than at the periodic job's next run; the
    events name ``actor``. ``dry_run`` only counts."""
    return apply_retention(ctx, dry_run=dry_run, by=actor)


class RetentionTask(PeriodicTask):
    """Applies retention every ``retention_check_seconds``: in one console replica per interval (the ``retention``
    lease). A run that overlaps another anyway (an expired lease) is safe: each batch re-selects what is left
    inside its own write transaction."""

    def __init__(self, ctx: AppContext, *, interval_s: float | None = None) -> None:
        super().__init__(ctx.settings.retention_check_seconds if interval_s is None else interval_s,
                         name="retention", job="retention", db=ctx.db)
        self.ctx = ctx
        self._lock = threading.Lock()

    def run_once(self) -> RetentionResult:
        with self._lock:
            return apply_retention(self.ctx)


# --- erasure of one person's content ------------------------------------------------------------------------------
# Four eyes: an admin (or the shell) asks for the erasure of one account's content, by user id; another admin
# approves it, which carries it out in the same transaction. Logs of the AI system younger than the floor stay
# unless a legal basis is typed (it is recorded in the request and in the audit events).


def check_reason(reason: object) -> str:
    """The reason for an erasure as it is stored (e.g. the request's reference); InvalidInput if it is blank,
    shorter than MIN_REASON_CHARS or longer than MAX_REASON_CHARS."""
    return required_text(reason, "the reason for the erasure", MAX_REASON_CHARS, min_len=MIN_REASON_CHARS)


def _clean_legal_basis(legal_basis: object) -> str | None:
    return optional_text(legal_basis, "the legal basis for erasing logs younger than six months", MAX_REASON_CHARS,
                         min_len=MIN_REASON_CHARS)


def _target(session: Session, user_id: int) -> Any:
    """The account to erase, by id: never by a name another actor can share."""
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 1:
        raise InvalidInput("Choose the person whose content is to be erased.")
    user = users_q.get_user(session, user_id)
    if user is None:
        raise NotFound(f"No user with id {user_id}.")
    return user


def _personal_events(session: Session, user_id: int, username: str, floor: datetime | None) -> list[AuditEvent]:
    """Audit events about or by the person (by user id) whose action lists personal detail keys, oldest first.

    Events name the person by id (``actor_id``, or ``object_id`` of a ``user`` object). System events carried out on
    someone's request (a switch the reconciler made) name them in ``requested_by``, by username: matched only when
    the username is not one of the console's own actor names, which no account can hold any more. Failed sign-ins
    under a name that matched no account are not the account's: anyone can type any name.
    """
    actions = [a for a, keys in audit_q.PERSONAL_DETAIL_KEYS.items() if keys]
    about = sa.and_(AuditEvent.object_type == "user", AuditEvent.object_id == str(user_id))
    by: sa.ColumnElement[bool] = sa.or_(about, AuditEvent.actor_id == user_id)
    if not users_q.is_reserved_username(username):
        by = sa.or_(by, sa.and_(AuditEvent.actor_id.is_(None),
                                AuditEvent.details["requested_by"].as_string() == username))
    stmt = sa.select(AuditEvent).where(AuditEvent.action.in_(actions), by, AuditEvent.erased_at.is_(None))
    if floor is not None:
        stmt = stmt.where(AuditEvent.ts < floor)
    return list(session.scalars(stmt.order_by(AuditEvent.seq)))


def _young_events(session: Session, user_id: int, username: str, floor: datetime | None) -> int:
    if floor is None:
        return 0
    return sum(1 for e in _personal_events(session, user_id, username, None) if e.ts >= floor and _has_personal(e))


def _floor(ctx: AppContext, legal_basis: str | None) -> datetime | None:
    return None if legal_basis else ctx.now() - timedelta(days=LOG_FLOOR_DAYS)


def _erase_in(ctx: AppContext, s: Session, user: Any, floor: datetime | None, *,
              dry_run: bool = False) -> tuple[ErasureResult, list[int]]:
    """Erase (or count) ``user``'s content older than ``floor`` (everything when None) in the session ``s``."""
    now = ctx.now()
    uid = user.id
    conv_ids = sa.select(Conversation.id).where(Conversation.user_id == uid)
    mine = sa.or_(Exchange.user_id == uid, Exchange.conversation_id.in_(conv_ids))
    old = Exchange.created_at < floor if floor is not None else sa.true()
    ex_ids = sa.select(Exchange.id).where(mine, old)
    with_text = sa.or_(Exchange.text_erased_at.is_(None), Exchange.prompt != "", Exchange.response != "")
    young_convs = sa.select(Exchange.id).where(Exchange.conversation_id == Conversation.id,
                                               Exchange.created_at >= floor) if floor is not None else None
    conv_where = sa.and_(Conversation.user_id == uid,
                         *(() if floor is None or young_convs is None else
                           (Conversation.created_at < floor, ~young_convs.exists())))
    decision_old = ReviewDecision.created_at < floor if floor is not None else sa.true()
    item_old = ReviewItem.created_at < floor if floor is not None else sa.true()
    decision_where = sa.and_(ReviewDecision.reviewer_id == uid, ReviewDecision.note.is_not(None), decision_old)
    item_where = sa.and_(sa.or_(ReviewItem.exchange_id.in_(ex_ids), sa.and_(ReviewItem.created_by_id == uid, item_old)),
                         ReviewItem.note.is_not(None))
    if not dry_run:
        audit_q.hold_chain(s)  # every event chained (with its seq) before any is erased and listed
    events = [e for e in _personal_events(s, uid, user.username, floor) if _has_personal(e)]
    held_ex = 0 if floor is None else _count(s, sa.select(Exchange.id).where(mine, Exchange.created_at >= floor,
                                                                             with_text))
    held_ev = _young_events(s, uid, user.username, floor)
    if dry_run:
        n_ex = _count(s, sa.select(Exchange.id).where(Exchange.id.in_(ex_ids), with_text))
        n_raw = _count(s, sa.select(RawText.id).where(
            RawText.exchange_id.in_(ex_ids), sa.or_(RawText.erased_at.is_(None), RawText.text != "")))
        n_conv = _count(s, sa.select(Conversation.id).where(
            conv_where, sa.or_(Conversation.title != "", Conversation.system_prompt.is_not(None))))
        return ErasureResult(uid, user.username, exchanges=n_ex, raw_texts=n_raw, conversations=n_conv,
                             review_notes=_count(s, sa.select(ReviewItem.id).where(item_where)),
                             decision_notes=_count(s, sa.select(ReviewDecision.id).where(decision_where)),
                             audit_seqs=tuple(e.seq for e in events), dry_run=True, held_exchanges=held_ex,
                             held_events=held_ev, floor=floor), []
    n_ex, n_raw, n_items = _erase_exchanges(s, ex_ids, now)
    n_conv = _strip_conversations(s, conv_where)
    # Notes the person wrote on review items of other exchanges (sending them to review).
    n_items += _changed(s, sa.update(ReviewItem).where(item_where).values(note=None)
                        .execution_options(synchronize_session=False))
    # Core UPDATE: the ORM refuses changes to review decisions; the database trigger allows exactly this one.
    table = cast(sa.Table, ReviewDecision.__table__)
    n_decisions = _changed(s, sa.update(table).where(table.c.reviewer_id == uid, table.c.note.is_not(None),
                                                     *(() if floor is None else (table.c.created_at < floor,)))
                           .values(note=None, note_erased_at=now))
    by_action: dict[str, list[AuditEvent]] = defaultdict(list)
    for event in events:
        by_action[event.action].append(event)
    seqs: list[int] = []
    try:
        for action, group in by_action.items():
            seqs.extend(audit_q.erase_event_details(s, group, audit_q.PERSONAL_DETAIL_KEYS[action]))
    except audit_q.TamperedEvent as exc:
        raise InvalidInput(f"The audit log was changed in the database, so nothing was erased: {exc}.") from None
    seqs.sort()
    result = ErasureResult(uid, user.username, exchanges=n_ex, raw_texts=n_raw, conversations=n_conv,
                           review_notes=n_items, decision_notes=n_decisions, audit_seqs=tuple(seqs),
                           held_exchanges=held_ex, held_events=held_ev, floor=floor)
    return result, seqs


def _has_personal(event: AuditEvent) -> bool:
    keys = audit_q.PERSONAL_DETAIL_KEYS.get(event.action, ())
    details = event.details or {}
    return event.erased_at is None and any(details.get(k) not in (None, "", [], {}) for k in keys)


@dataclass(frozen=True)
class ErasureRequestView:
    """An erasure request as the Users page and the shell show it (``reason`` only while it is pending)."""

    id: int
    user_id: int
    username: str
    reason: str | None
    legal_basis: str | None
    requested_by: str
    requested_by_id: int | None
    status: str
    decided_by: str | None
    created_at: datetime
    decided_at: datetime | None
    result: dict[str, Any] | None

    @property
    def summary(self) -> str:
        r = self.result or {}
        return (f"{r.get('exchanges', 0)} exchanges, {r.get('raw_texts', 0)} raw texts, "
                f"{r.get('conversations', 0)} conversations, {r.get('review_notes', 0)} review item notes, "
                f"{r.get('decision_notes', 0)} decision notes, {len(r.get('audit_seqs', []))} audit events")


def _request_view(s: Session, r: ErasureRequest) -> ErasureRequestView:
    names = users_q.usernames(s, [r.user_id, r.requested_by_id, r.decided_by_id])
    return ErasureRequestView(
        r.id, r.user_id, names.get(r.user_id, "?"), r.reason, r.legal_basis,
        SHELL if r.requested_by_id is None else names.get(r.requested_by_id, "?"), r.requested_by_id, r.status,
        None if r.decided_by_id is None else names.get(r.decided_by_id, "?"), r.created_at, r.decided_at, r.result)


DECIDE_RULE = four_eyes.decide_rule("users.erase.decide", "nobody approves or rejects their own erasure request",
                                    erasure_q.get_erasure_request)


def _request_id(value: object) -> int:
    return four_eyes.chosen_id(value, "an erasure request")


@requires("users.erase")
def request_erasure(ctx: AppContext, actor: Principal, user_id: int, reason: str,
                    legal_basis: str | None = None) -> ErasureRequestView:
    """Ask for the erasure of account ``user_id``'s content; another admin approves it (which carries it out).

    ``reason`` (10 to 2,000 characters) is shown to the approver and blanked once the request is decided. Without a
    ``legal_basis``, logs younger than six months (``LOG_FLOOR_DAYS``) stay; with one, it is recorded in the
    request and the audit events. Audited as ``privacy.erase_requested``. Nobody asks for their own erasure here
    (``shell:alice`` not for ``alice``'s either).
    """
    text = check_reason(reason)
    basis = _clean_legal_basis(legal_basis)
    with ctx.db.session() as s:
        user = _target(s, user_id)
        if user.id == actor.user_id or same_person(user.username, actor.username):
            raise InvalidInput("You cannot ask for the erasure of your own content; ask another admin.")
        if erasure_q.pending_request_for(s, user.id) is not None:
            raise InvalidInput(f"An erasure request for {user.username} is already waiting for approval.")
        request = erasure_q.create_erasure_request(s, user_id=user.id, reason=text, legal_basis=basis,
                                                   requested_by_id=actor.user_id, created_at=ctx.now())
        # No username and no reason here: both may identify the person. The legal basis is the record.
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action=REQUEST_ACTION,
                             object_type="erasure_request", object_id=request.id,
                             details={"user": user.id, "legal_basis": basis,
                                      "floor_days": None if basis else LOG_FLOOR_DAYS})
        return _request_view(s, request)


@requires("users.erase_approve")
def preview_erasure(ctx: AppContext, actor: Principal, request_id: int) -> ErasureResult:
    """What approving a pending request would erase now (and keep under the floor); changes nothing."""
    request_id = _request_id(request_id)
    with ctx.db.session(readonly=True) as s:
        request = four_eyes.ensure_found(erasure_q.get_erasure_request(s, request_id), request_id, WHAT)
        user = _target(s, request.user_id)
        result, _ = _erase_in(ctx, s, user, _floor(ctx, request.legal_basis), dry_run=True)
        return replace(result, request_id=request_id)


@requires("users.erase_approve")
def decide_erasure(ctx: AppContext, actor: Principal, request_id: int, approve: bool) -> ErasureRequestView:
    """Approve (and so carry out, in one transaction) or reject someone else's pending erasure request.

    Audited as ``privacy.erase`` (the approver is the actor; the event lists the request, its requester, the legal
    basis if any and every audit event whose personal details were erased) or ``privacy.erase_rejected``. Nobody
    decides their own request, or one about their own content.
    """
    request_id = _request_id(request_id)
    if not isinstance(approve, bool):
        raise InvalidInput("Choose approve or reject.")
    with ctx.db.session(readonly=True) as s:
        about = four_eyes.ensure_found(erasure_q.get_erasure_request(s, request_id), request_id, WHAT).user_id
    four_eyes.ensure_not_own(ctx, actor, DECIDE_RULE, request_id)
    if about == actor.user_id:  # the person a request is about never changes
        raise InvalidInput("You cannot decide on the erasure of your own content; ask another admin.")
    with ctx.db.session() as s:
        request = four_eyes.ensure_pending(erasure_q.lock_erasure_request(s, request_id), request_id, WHAT,
                                           "Erasure request")
        request.decided_by_id = actor.user_id
        request.decided_at = ctx.now()
        request.reason = None  # it may name the person; it was needed only for the decision
        if not approve:
            request.status = "rejected"
            audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action=REJECT_ACTION,
                                 object_type="erasure_request", object_id=request_id,
                                 details={"user": request.user_id, "requested_by_id": request.requested_by_id})
            return _request_view(s, request)
        user = _target(s, request.user_id)
        floor = _floor(ctx, request.legal_basis)
        result, seqs = _erase_in(ctx, s, user, floor)
        counts = {"exchanges": result.exchanges, "raw_texts": result.raw_texts,
                  "conversations": result.conversations, "review_notes": result.review_notes,
                  "decision_notes": result.decision_notes, "audit_seqs": seqs,
                  "held_exchanges": result.held_exchanges, "held_events": result.held_events}
        # No username and no reason here: both may identify the person this erasure is for.
        event = audit_q.append_event(
            s, actor=actor.username, actor_id=actor.user_id, action=audit_q.ERASURE_ACTION, object_type="user",
            object_id=user.id,
            details={"user": user.id, "request": request_id, "requested_by_id": request.requested_by_id,
                     "reason_given": True, "legal_basis": request.legal_basis,
                     "floor": None if floor is None else floor.isoformat(), **counts,
                     "remains": audit_q.erasure_remains(s, seqs)})
        request.status = "done"
        request.result = {**counts, "event_seq": event.seq}
        view = _request_view(s, request)
    logger.warning("erased the content of user id %s (request %s) approved by %s: %s", user.id, request_id,
                   actor.username, view.summary)
    export_files_svc.delete_exports_for_erasure(ctx, user.id, actor.username, actor.user_id)  # files may hold them
    _truncate_log(ctx)
    return view


@requires("users.erase")
def cancel_erasure(ctx: AppContext, actor: Principal, request_id: int) -> ErasureRequestView:
    """Withdraw one's own pending erasure request. Audited as ``privacy.erase_cancelled``."""
    request_id = _request_id(request_id)
    with ctx.db.session() as s:
        request = four_eyes.ensure_found(erasure_q.lock_erasure_request(s, request_id), request_id, WHAT)
        four_eyes.ensure_requester(request, actor, "the person who asked for an erasure", otherwise=None)
        four_eyes.ensure_pending(request, request_id, WHAT, "Erasure request")
        request.status = "cancelled"
        request.reason = None
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action=CANCEL_ACTION,
                             object_type="erasure_request", object_id=request_id, details={"user": request.user_id})
        return _request_view(s, request)


@requires("users.erase")
def list_erasure_requests(ctx: AppContext, actor: Principal, status: str | None = None) -> list[ErasureRequestView]:
    """Erasure requests, newest first (``status``: pending, done, rejected or cancelled)."""
    if status is not None and status not in ERASURE_REQUEST_STATUSES:
        raise InvalidInput(f"Unknown request status {status!r}.")
    with ctx.db.session(readonly=True) as s:
        return [_request_view(s, r) for r in erasure_q.list_erasure_requests(s, status=status)]


@requires("users.erase")
def preview_erasure_of(ctx: AppContext, actor: Principal, user_id: int,
                       legal_basis: str | None = None) -> ErasureResult:
    """What asking for the erasure of account ``user_id``'s content would erase now, and keep under the floor
    without ``legal_basis``; changes nothing (the command line shows it before asking)."""
    with ctx.db.session(readonly=True) as s:
        user = _target(s, user_id)
        result, _ = _erase_in(ctx, s, user, _floor(ctx, _clean_legal_basis(legal_basis)), dry_run=True)
        return result


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
