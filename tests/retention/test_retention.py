"""Retention (old text goes, metadata stays) and erasure of one person's content: services, files, CLI, Users page."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages, cli
from console.services import retention
from console.services import users as users_svc
from console.services.access import Principal, os_user
from console.services.errors import AccessDenied, InvalidInput, NotFound, SeparationOfDuties
from console.ui import UiSession
from db import audit as audit_q
from db import chat as chat_q
from db import users as users_q
from db.chat import PendingRecord, TurnRecord
from db.review.decisions import record_decision
from db.review.items import ReviewItemRecord
from db.safety import FindingRecord, RawTextRecord
from db.tables import AuditEvent, Conversation, Exchange, Finding, RawText, ReviewDecision, ReviewItem
from tests.conftest import console_env

SESSION_KEY = "llm_console_session"
MARK = "ZQXV-olga-7781"  # in every text the person stored; must leave the database files
KEEP = "KEEP-otto-5521"  # in another person's texts; must stay
REASON = "erasure request #1234 received by email"


# --- building a store ---------------------------------------------------------------------------------------------


def _turn(ctx, owner, conversation_id, *, days_old: float, text: str, raw: bool = True, note: str | None = None,
          status: str = "ok") -> int:
    """One finished exchange ``days_old`` days old, with a finding, raw texts and (with ``note``) a review item."""
    created = ctx.now() - timedelta(days=days_old)
    with ctx.db.session() as s:
        ex = chat_q.store_turn(s, TurnRecord(
            conversation_id=conversation_id, user_id=owner.user_id, actor=owner.username, model_version="demo-v1",
            prompt=f"prompt {text}", response=f"answer {text}", status=status, created_at=created,
            timings=chat_q.ExchangeTimings(prompt_tokens=7, output_tokens=9, e2e_ms=120.0),
            findings=(FindingRecord("prompt", "presidio", "EMAIL_ADDRESS", 0.9, "flag", start=0, end=5),),
            raw_texts=(RawTextRecord("prompt", f"raw prompt {text}"), RawTextRecord("output", f"raw answer {text}"))
            if raw else (),
            review=ReviewItemRecord(reason="manual", note=note) if note is not None else None,
        ))
        return ex.id


def _pending(ctx, owner, conversation_id, *, days_old: float, text: str) -> int:
    with ctx.db.session() as s:
        ex = chat_q.begin_exchange(s, PendingRecord(
            conversation_id=conversation_id, user_id=owner.user_id, actor=owner.username, model_version="demo-v1",
            prompt=f"pending {text}", created_at=ctx.now() - timedelta(days=days_old),
            raw_texts=(RawTextRecord("prompt", f"raw pending {text}"),)))
        return ex.id


def _conversation(ctx, owner, title: str, system_prompt: str | None = None, *, days_old: float = 0) -> int:
    with ctx.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=owner.user_id, actor=owner.username, title=title,
                                          system_prompt=system_prompt)
        conv.created_at = ctx.now() - timedelta(days=days_old)
        return conv.id


def _item_of(ctx, exchange_id: int) -> int:
    with ctx.db.session() as s:
        return s.scalars(sa.select(ReviewItem.id).where(ReviewItem.exchange_id == exchange_id)).one()


def _decide(ctx, reviewer, item_id: int, note: str) -> int:
    with ctx.db.session() as s:
        return record_decision(s, item_id=item_id, reviewer_id=reviewer.user_id, decision="violation",
                               actor=reviewer.username, note=note).id


def _exchange(ctx, exchange_id: int) -> Exchange:
    with ctx.db.session(readonly=True) as s:
        return s.get(Exchange, exchange_id)


def _raw(ctx, exchange_id: int) -> list[RawText]:
    with ctx.db.session(readonly=True) as s:
        return list(s.scalars(sa.select(RawText).where(RawText.exchange_id == exchange_id).order_by(RawText.id)))


def _events(ctx, action: str) -> list[AuditEvent]:
    with ctx.db.session(readonly=True) as s:
        return list(audit_q.iter_events(s, action=action))


def _head(ctx) -> int:
    with ctx.db.session(readonly=True) as s:
        return int(s.scalar(sa.select(sa.func.max(AuditEvent.seq))) or 0)


def _file_bytes(ctx) -> bytes:
    """The database file and its write-ahead log, as they are on disk."""
    path = Path(ctx.db.url.database)
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


# --- retention ----------------------------------------------------------------------------------------------------


@pytest.fixture
def aged(ctx, make_user):
    """Exchanges of several ages: older than text retention (365 d), older than raw retention (30 d) only, new,
    and an old one still pending."""
    olga = make_user("olga", "operator")
    all_old = _conversation(ctx, olga, "all old title", "old system prompt", days_old=400)
    mixed = _conversation(ctx, olga, "mixed title", days_old=400)
    ids = {
        "old": _turn(ctx, olga, all_old, days_old=400, text="old", note="old note"),
        "old_mixed": _turn(ctx, olga, mixed, days_old=390, text="old mixed"),
        "mid": _turn(ctx, olga, mixed, days_old=100, text="mid", note="mid note"),
        "new": _turn(ctx, olga, mixed, days_old=1, text="new"),
        "pending": _pending(ctx, olga, mixed, days_old=400, text="stuck"),
    }
    return {"ids": ids, "all_old": all_old, "mixed": mixed, "olga": olga}


def test_retention_erases_exactly_what_is_past_the_cut_offs_and_keeps_metadata(ctx, aged):
    ids = aged["ids"]
    with ctx.db.session(readonly=True) as s:
        findings_before = s.scalar(sa.select(sa.func.count()).select_from(Finding))
    before = _exchange(ctx, ids["old"])

    result = retention.apply_retention(ctx)

    assert (result.exchanges, result.raw_texts, result.conversations, result.review_notes) == (2, 6, 1, 1)
    assert result.text_cutoff == ctx.now() - timedelta(days=365)
    assert result.raw_cutoff == ctx.now() - timedelta(days=30)
    old = _exchange(ctx, ids["old"])
    assert (old.prompt, old.response) == ("", "") and old.text_erased_at is not None
    # Metadata stays: status, model, timings, token counts, times.
    assert (old.status, old.model_version, old.e2e_ms, old.prompt_tokens, old.output_tokens, old.created_at) == (
        before.status, before.model_version, before.e2e_ms, before.prompt_tokens, before.output_tokens,
        before.created_at)
    assert _exchange(ctx, ids["old_mixed"]).prompt == ""
    assert all(r.text == "" and r.erased_at is not None for r in _raw(ctx, ids["old"]) + _raw(ctx, ids["mid"]))
    mid = _exchange(ctx, ids["mid"])
    assert (mid.prompt, mid.response, mid.text_erased_at) == ("prompt mid", "answer mid", None)
    new = _exchange(ctx, ids["new"])
    assert new.prompt == "prompt new" and [r.text for r in _raw(ctx, ids["new"])] == ["raw prompt new",
                                                                                        "raw answer new"]
    pending = _exchange(ctx, ids["pending"])
    assert pending.prompt == "pending stuck" and pending.text_erased_at is None
    assert [r.text for r in _raw(ctx, ids["pending"])] == ["raw pending stuck"]
    with ctx.db.session(readonly=True) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Finding)) == findings_before
        notes = dict(s.execute(sa.select(ReviewItem.exchange_id, ReviewItem.note)).all())
        all_old, mixed = s.get(Conversation, aged["all_old"]), s.get(Conversation, aged["mixed"])
    assert notes == {ids["old"]: None, ids["mid"]: "mid note"}
    assert (all_old.title, all_old.system_prompt) == ("", None)
    assert mixed.title == "mixed title"  # it still has exchanges with text
    events = _events(ctx, retention.RETENTION_ACTION)
    assert [e.details["batch"] for e in events] == ["text", "raw", "conversations"]
    assert events[0].actor == "system"
    assert events[0].details["text_cutoff"] == result.text_cutoff.isoformat()
    assert events[0].details["exchanges"] == 2 and events[1].details["raw_texts"] == 2
    assert audit_q.verify_chain(ctx.db).ok


def test_retention_is_idempotent_and_a_run_with_nothing_to_do_writes_nothing(ctx, aged):
    first = retention.apply_retention(ctx)
    assert first.total > 0
    head = _head(ctx)
    again = retention.apply_retention(ctx)
    assert again.total == 0 and again.batches == 0
    assert _head(ctx) == head
    assert audit_q.verify_chain(ctx.db).ok


def test_retention_works_in_batches_with_one_event_each(ctx, make_user):
    olga = make_user("olga", "operator")
    conv = _conversation(ctx, olga, "t", days_old=500)
    for i in range(5):
        _turn(ctx, olga, conv, days_old=400, text=f"n{i}", raw=False)
    result = retention.apply_retention(ctx, batch_size=2)
    assert result.exchanges == 5
    text_batches = [e.details for e in _events(ctx, retention.RETENTION_ACTION) if e.details["batch"] == "text"]
    assert [d["exchanges"] for d in text_batches] == [2, 2, 1]
    assert audit_q.verify_chain(ctx.db).ok


def test_a_dry_run_counts_and_changes_nothing(ctx, aged):
    head = _head(ctx)
    dry = retention.apply_retention(ctx, dry_run=True)
    assert dry.dry_run and (dry.exchanges, dry.raw_texts, dry.conversations, dry.review_notes) == (2, 6, 1, 1)
    assert _head(ctx) == head and _exchange(ctx, aged["ids"]["old"]).prompt == "prompt old"


def test_the_retention_task_applies_retention_in_a_round(ctx, aged):
    task = retention.RetentionTask(ctx)
    assert task.interval_s == ctx.settings.retention_check_seconds
    assert task.run_once().exchanges == 2
    assert _exchange(ctx, aged["ids"]["old"]).prompt == ""


# --- erasure ------------------------------------------------------------------------------------------------------


@pytest.fixture
def people(ctx, make_user):
    """olga (operator and reviewer: the person to erase), otto (another operator), rita (reviewer), ada and abe
    (admins: one asks, the other approves)."""
    p = {
        "ada": make_user("ada", "admin"),
        "abe": make_user("abe", "admin"),
        "olga": make_user("olga", "operator", "reviewer", email="olga.person@example.com"),
        "otto": make_user("otto", "operator"),
        "rita": make_user("rita", "reviewer"),
    }
    olga, otto, rita = p["olga"], p["otto"], p["rita"]
    conv = _conversation(ctx, olga, f"title {MARK}", f"system {MARK}")
    p["olga_ex"] = _turn(ctx, olga, conv, days_old=2, text=MARK, note=f"note {MARK}")
    # A prompt stored, then answered: the row is rewritten, which can leave an old copy in the page's free space.
    pending = _pending(ctx, olga, conv, days_old=1, text=MARK)
    with ctx.db.session() as s:
        chat_q.complete_exchange(s, pending, TurnRecord(
            conversation_id=conv, user_id=olga.user_id, actor=olga.username, model_version="demo-v1",
            prompt="", response=f"a much longer answer {MARK} " * 20,
            raw_texts=(RawTextRecord("output", f"raw long answer {MARK} " * 300),)))  # overflow pages
    p["olga_pending"] = _pending(ctx, olga, conv, days_old=0, text=MARK)  # still being answered
    otto_conv = _conversation(ctx, otto, f"title {KEEP}", f"system {KEEP}")
    p["otto_ex"] = _turn(ctx, otto, otto_conv, days_old=2, text=KEEP, note=f"note {KEEP}")
    p["rita_decision"] = _decide(ctx, rita, _item_of(ctx, p["olga_ex"]), f"rita's note {KEEP}")
    p["olga_decision"] = _decide(ctx, olga, _item_of(ctx, p["otto_ex"]), f"olga's note {MARK}")
    return p


BASIS = "court order 2026/77 (art. 17 GDPR, unlawful processing)"


def _erase(ctx, people, who: str = "olga", basis: str | None = BASIS):
    """ada asks, abe approves (which erases); the request as it ends."""
    asked = retention.request_erasure(ctx, people["ada"], people[who].user_id, REASON, basis)
    return retention.decide_erasure(ctx, people["abe"], asked.id, True)


def test_erasure_removes_every_text_of_the_person_from_the_database_files(ctx, people):
    assert MARK.encode() in _file_bytes(ctx)  # the search below can find it

    done = _erase(ctx, people)

    assert MARK.encode() not in _file_bytes(ctx)
    assert KEEP.encode() in _file_bytes(ctx)
    r = done.result
    assert (done.status, r["exchanges"], r["raw_texts"], r["conversations"], r["review_notes"],
            r["decision_notes"]) == ("done", 3, 5, 1, 1, 1)
    assert audit_q.verify_chain(ctx.db).ok


def test_erasure_keeps_metadata_and_other_peoples_content(ctx, people):
    _erase(ctx, people)
    ex = _exchange(ctx, people["olga_ex"])
    assert (ex.prompt, ex.response, ex.status, ex.e2e_ms) == ("", "", "ok", 120.0) and ex.text_erased_at
    assert _exchange(ctx, people["olga_pending"]).prompt == ""
    other = _exchange(ctx, people["otto_ex"])
    assert (other.prompt, other.response) == (f"prompt {KEEP}", f"answer {KEEP}")
    assert [r.text for r in _raw(ctx, people["otto_ex"])] == [f"raw prompt {KEEP}", f"raw answer {KEEP}"]
    with ctx.db.session(readonly=True) as s:
        decisions = {d.id: d for d in s.scalars(sa.select(ReviewDecision))}
        item_notes = dict(s.execute(sa.select(ReviewItem.exchange_id, ReviewItem.note)).all())
        titles = dict(s.execute(sa.select(Conversation.user_id, Conversation.title)).all())
        user_row = s.execute(sa.text("SELECT username, email, disabled FROM users WHERE id = :i"),
                             {"i": people["olga"].user_id}).one()
    assert decisions[people["olga_decision"]].note is None
    assert decisions[people["olga_decision"]].note_erased_at is not None
    assert decisions[people["olga_decision"]].decision == "violation"  # the decision itself stays
    assert decisions[people["rita_decision"]].note == f"rita's note {KEEP}"  # the reviewer's work
    assert item_notes == {people["olga_ex"]: None, people["otto_ex"]: f"note {KEEP}"}
    assert titles == {people["olga"].user_id: "", people["otto"].user_id: f"title {KEEP}"}
    assert tuple(user_row) == ("olga", "olga.person@example.com", False)  # the account stays, enabled


def test_erasure_clears_personal_audit_details_and_records_itself_without_personal_text(ctx, people):
    done = _erase(ctx, people)
    created = [e for e in _events(ctx, "user.create") if e.object_id == str(people["olga"].user_id)][0]
    assert created.details["email"] == audit_q.ERASED and created.erased_at is not None
    assert created.seq in done.result["audit_seqs"]
    others = [e for e in _events(ctx, "user.create") if e.object_id == str(people["otto"].user_id)]
    assert others[0].erased_at is None
    [event] = _events(ctx, audit_q.ERASURE_ACTION)
    assert event.seq == done.result["event_seq"] and (event.actor, event.actor_id) == ("abe", people["abe"].user_id)
    assert event.details == {"user": people["olga"].user_id, "request": done.id,
                             "requested_by_id": people["ada"].user_id, "reason_given": True, "legal_basis": BASIS,
                             "floor": None, "exchanges": 3, "raw_texts": 5, "conversations": 1, "review_notes": 1,
                             "decision_notes": 1, "audit_seqs": done.result["audit_seqs"], "held_exchanges": 0,
                             "held_events": 0, "remains": {}}
    text = audit_q.canonical_json(event.details) + (event.object_id or "")
    assert "olga" not in text and "1234" not in text and MARK not in text
    [asked] = _events(ctx, retention.REQUEST_ACTION)
    assert "1234" not in audit_q.canonical_json(asked.details) and asked.details["legal_basis"] == BASIS
    assert done.reason is None  # blanked once decided
    assert audit_q.verify_chain(ctx.db).ok


def test_erasure_clears_the_reasons_the_person_typed_in_audit_events(ctx, people):
    with ctx.db.session() as s:
        audit_q.append_event(s, actor="olga", actor_id=people["olga"].user_id, action="review.reveal_reason",
                             object_type="review_item", object_id=1, details={"reason": f"checking {MARK}"})
        # A switch the reconciler made on olga's request: the system is the actor, olga typed the reason.
        audit_q.append_event(s, actor="system", action="model.switch", object_type="model_version", object_id="v2",
                             details={"requested_by": "olga", "reason": f"faster {MARK}", "from": "v1", "to": "v2"})
    _erase(ctx, people)
    assert MARK.encode() not in _file_bytes(ctx)
    with ctx.db.session(readonly=True) as s:
        [switch] = list(audit_q.iter_events(s, action="model.switch"))
    assert switch.details == {"requested_by": "olga", "reason": "[erased]", "from": "v1", "to": "v2"}
    assert audit_q.verify_chain(ctx.db).ok


def test_erasure_is_idempotent(ctx, people):
    _erase(ctx, people)
    again = _erase(ctx, people)
    r = again.result
    assert (r["exchanges"], r["raw_texts"], r["conversations"], r["review_notes"], r["decision_notes"],
            r["audit_seqs"]) == (0, 0, 0, 0, 0, [])
    assert len(_events(ctx, audit_q.ERASURE_ACTION)) == 2
    assert audit_q.verify_chain(ctx.db).ok


# --- issue 21, item 5: by user id, four eyes, the six-month floor ------------------------------------------------


def test_one_admin_alone_cannot_erase(ctx, people):
    asked = retention.request_erasure(ctx, people["ada"], people["olga"].user_id, REASON, BASIS)
    assert asked.status == "pending" and asked.reason == REASON
    assert _exchange(ctx, people["olga_ex"]).prompt == f"prompt {MARK}"  # a request erases nothing
    head = _head(ctx)
    with pytest.raises(SeparationOfDuties):
        retention.decide_erasure(ctx, people["ada"], asked.id, True)
    assert _exchange(ctx, people["olga_ex"]).prompt == f"prompt {MARK}"
    denied = [e for e in _events(ctx, "access.denied") if e.seq > head]
    assert [e.details["action"] for e in denied] == ["users.erase.decide"]
    assert not hasattr(retention, "erase_user")  # the one-admin path is gone


def test_a_rejected_or_cancelled_request_erases_nothing_and_forgets_its_reason(ctx, people):
    asked = retention.request_erasure(ctx, people["ada"], people["olga"].user_id, REASON)
    rejected = retention.decide_erasure(ctx, people["abe"], asked.id, False)
    assert (rejected.status, rejected.reason, rejected.decided_by) == ("rejected", None, "abe")
    again = retention.request_erasure(ctx, people["ada"], people["olga"].user_id, REASON)
    with pytest.raises(AccessDenied):
        retention.cancel_erasure(ctx, people["abe"], again.id)
    assert retention.cancel_erasure(ctx, people["ada"], again.id).status == "cancelled"
    with pytest.raises(InvalidInput, match="already cancelled"):
        retention.decide_erasure(ctx, people["abe"], again.id, True)
    assert _exchange(ctx, people["olga_ex"]).prompt == f"prompt {MARK}"
    assert [e.action for e in _events(ctx, retention.REJECT_ACTION) + _events(ctx, retention.CANCEL_ACTION)] == [
        retention.REJECT_ACTION, retention.CANCEL_ACTION]


def test_erasure_request_refusals_keep_their_words_and_their_order(ctx, people):
    """The four-eyes checks (console.services.four_eyes) say what this module always said, in the same order."""
    ada, abe = people["ada"], people["abe"]
    for call in (lambda bad: retention.decide_erasure(ctx, abe, bad, True),
                 lambda bad: retention.cancel_erasure(ctx, ada, bad),
                 lambda bad: retention.preview_erasure(ctx, abe, bad)):
        for bad in (0, "1", True):
            with pytest.raises(InvalidInput, match=r"^Choose an erasure request\.$"):
                call(bad)
        with pytest.raises(NotFound, match=r"^There is no erasure request #999\.$"):
            call(999)
    asked = retention.request_erasure(ctx, ada, people["olga"].user_id, REASON)
    with pytest.raises(InvalidInput, match=r"^Choose approve or reject\.$"):
        retention.decide_erasure(ctx, abe, asked.id, 1)
    head = _head(ctx)
    with pytest.raises(SeparationOfDuties) as own:
        retention.decide_erasure(ctx, ada, asked.id, False)
    assert str(own.value) == "Separation of duties: nobody approves or rejects their own erasure request."
    assert [e.details for e in _events(ctx, "access.denied") if e.seq > head] == [
        {"action": "users.erase.decide", "reason": "separation of duties"}]
    with pytest.raises(AccessDenied) as cancel:
        retention.cancel_erasure(ctx, abe, asked.id)
    assert str(cancel.value) == "Only the person who asked for an erasure can cancel it."
    retention.decide_erasure(ctx, abe, asked.id, False)
    with pytest.raises(InvalidInput) as decided:
        retention.decide_erasure(ctx, abe, asked.id, True)
    assert str(decided.value) == f"Erasure request #{asked.id} is already rejected."
    with pytest.raises(InvalidInput) as cancelled:
        retention.cancel_erasure(ctx, ada, asked.id)
    assert str(cancelled.value) == f"Erasure request #{asked.id} is already rejected."
    with pytest.raises(AccessDenied):  # not the requester comes before the status
        retention.cancel_erasure(ctx, abe, asked.id)
    assert retention.preview_erasure(ctx, abe, asked.id).request_id == asked.id  # any status: nothing changes
    assert audit_q.verify_chain(ctx.db).ok


def test_an_admin_cannot_approve_the_erasure_of_their_own_content(ctx, people):
    asked = retention.request_erasure(ctx, people["ada"], people["abe"].user_id, REASON, BASIS)
    with pytest.raises(InvalidInput, match="your own content"):
        retention.decide_erasure(ctx, people["abe"], asked.id, True)


@pytest.mark.parametrize("name", ["system", "cli", "watch", "anonymous", "System", "ANONYMOUS"])
def test_reserved_actor_names_are_refused_as_usernames(ctx, people, name):
    with pytest.raises(InvalidInput, match="reserved"):
        users_svc.add_user(ctx, people["ada"], name, "correct horse battery staple", ["operator"])
    with pytest.raises(InvalidInput, match="reserved"):
        users_svc.add_user(ctx, Principal.shell(ctx), name, None, ["operator"], email=f"{name.lower()}@example.com")
    with ctx.db.session() as s, pytest.raises(users_q.ReservedUsernameError):
        users_q.create_user(s, name, None, ["operator"])


def test_erasing_an_account_named_like_a_system_actor_touches_only_its_own_events(ctx, people):
    """An account made before names were reserved (written here past the check): erasing it must not wipe the
    typed names of failed sign-ins (actor "anonymous") or the system's switch reasons (actor "system")."""
    with ctx.db.session() as s:
        s.execute(sa.text("INSERT INTO users (username, disabled, failed_login_count, session_epoch, created_at, "
                          "updated_at) VALUES ('anonymous', false, 0, 0, :t, :t)"), {"t": ctx.now()})
        uid = s.scalar(sa.text("SELECT id FROM users WHERE username = 'anonymous'"))
        audit_q.append_event(s, actor="anonymous", action="auth.login_failed", object_type="sign_in",
                             details={"reason": "no such user", "username": "someone-typed-this"})
        audit_q.append_event(s, actor="system", action="model.switch", object_type="model_version", object_id="v2",
                             details={"requested_by": "anonymous", "reason": "faster", "from": "v1", "to": "v2"})
        audit_q.append_event(s, actor="anonymous", actor_id=uid, action="review.reveal_reason",
                             object_type="review_item", object_id=1, details={"reason": f"mine {MARK}"})
    asked = retention.request_erasure(ctx, people["ada"], uid, REASON, BASIS)
    done = retention.decide_erasure(ctx, people["abe"], asked.id, True)
    assert len(done.result["audit_seqs"]) == 1
    [failed] = _events(ctx, "auth.login_failed")
    [switch] = _events(ctx, "model.switch")
    [reveal] = _events(ctx, "review.reveal_reason")
    assert failed.details["username"] == "someone-typed-this" and switch.details["reason"] == "faster"
    assert reveal.details["reason"] == audit_q.ERASED


def test_without_a_legal_basis_logs_younger_than_six_months_stay(ctx, people):
    olga = people["olga"]
    conv = _conversation(ctx, olga, "an old chat", days_old=300)
    old_ex = _turn(ctx, olga, conv, days_old=200, text=f"old {MARK}")
    asked = retention.request_erasure(ctx, people["ada"], olga.user_id, REASON)  # no legal basis
    preview = retention.preview_erasure(ctx, people["abe"], asked.id)
    assert preview.exchanges == 1 and preview.held_exchanges == 3 and preview.floor is not None
    done = retention.decide_erasure(ctx, people["abe"], asked.id, True)
    assert done.result["exchanges"] == 1 and done.result["held_exchanges"] == 3
    assert _exchange(ctx, old_ex).prompt == ""
    assert _exchange(ctx, people["olga_ex"]).prompt == f"prompt {MARK}"  # two days old: kept
    [event] = _events(ctx, audit_q.ERASURE_ACTION)
    assert event.details["legal_basis"] is None and event.details["floor"] is not None
    assert audit_q.verify_chain(ctx.db).ok


@pytest.mark.parametrize("role", ["operator", "reviewer", "analyst"])
def test_only_an_admin_may_ask_for_or_approve_an_erasure(ctx, people, make_user, role):
    someone = make_user(f"some-{role}", role)
    asked = retention.request_erasure(ctx, people["ada"], people["olga"].user_id, REASON, BASIS)
    head = _head(ctx)
    with pytest.raises(AccessDenied):
        retention.request_erasure(ctx, someone, people["olga"].user_id, REASON, BASIS)
    with pytest.raises(AccessDenied):
        retention.decide_erasure(ctx, someone, asked.id, True)
    assert _exchange(ctx, people["olga_ex"]).prompt == f"prompt {MARK}"
    denied = [e for e in _events(ctx, "access.denied") if e.seq > head]
    assert [e.details["action"] for e in denied] == ["users.erase", "users.erase_approve"]


@pytest.mark.parametrize("who,reason,error,message", [
    ("ada", REASON, InvalidInput, "your own content"),
    (None, REASON, NotFound, "No user with id 9999"),
    ("olga", "too short", InvalidInput, "10 characters"),
    ("olga", "   \x00 \x00        ", InvalidInput, "10 characters"),
    ("olga", "x" * 2001, InvalidInput, "2,000"),
])
def test_bad_erasure_requests_are_refused_and_change_nothing(ctx, people, who, reason, error, message):
    head = _head(ctx)
    uid = people[who].user_id if who else 9999
    with pytest.raises(error, match=message):
        retention.request_erasure(ctx, people["ada"], uid, reason)
    assert _head(ctx) == head
    assert _exchange(ctx, people["olga_ex"]).prompt == f"prompt {MARK}"


def test_secure_delete_is_what_removes_the_old_copies(ctx, people):
    """Control: with SQLite's secure_delete off (a build's default may be), the marker stays in the file after the
    erasure, so the file search above can fail; the console's database turns it on for every connection."""
    with ctx.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    ctx.db.engine.dispose()

    @sa.event.listens_for(ctx.db.engine, "connect")
    def _off(dbapi_connection, record):  # runs after the database's own listener
        dbapi_connection.execute("PRAGMA secure_delete=OFF")

    _erase(ctx, people)
    assert MARK.encode() in _file_bytes(ctx)


def test_the_database_turns_secure_delete_on_over_a_build_that_defaults_to_off(ctx, make_user):
    ctx.db.engine.dispose()

    @sa.event.listens_for(ctx.db.engine, "connect", insert=True)
    def _default_off(dbapi_connection, record):  # runs before the database's own listener
        dbapi_connection.execute("PRAGMA secure_delete=OFF")

    people = {"ada": make_user("ada", "admin"), "abe": make_user("abe", "admin"), "olga": make_user("olga", "operator")}
    olga = people["olga"]
    conv = _conversation(ctx, olga, f"title {MARK}")
    pending = _pending(ctx, olga, conv, days_old=0, text=MARK)
    with ctx.db.session() as s:
        chat_q.complete_exchange(s, pending, TurnRecord(
            conversation_id=conv, user_id=olga.user_id, actor="olga", model_version="demo-v1", prompt="",
            response=f"longer answer {MARK} " * 30))
    _erase(ctx, people)
    assert MARK.encode() not in _file_bytes(ctx)


# --- command line -------------------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(ctx, monkeypatch, tmp_path):
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    return ctx


def test_cli_retention_apply_and_dry_run(cli_env, aged, capsys):
    assert cli.main(["retention", "apply", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("retention would erase: 2 exchange texts") and "6 raw texts" in out
    assert _exchange(cli_env, aged["ids"]["old"]).prompt == "prompt old"
    assert cli.main(["retention", "apply"]) == 0
    assert capsys.readouterr().out.startswith("retention erased: 2 exchange texts")
    assert _exchange(cli_env, aged["ids"]["old"]).prompt == ""


def test_cli_erase_request_waits_for_an_admin_and_the_shell_cannot_erase_alone(cli_env, people, capsys):
    assert cli.main(["erase", "request", "--user", "olga", "--reason", REASON, "--legal-basis", BASIS, "--yes"]) == 0
    out = capsys.readouterr().out
    assert "is waiting: another admin approves it on the Users page" in out and "3 exchanges, 5 raw texts" in out
    assert _exchange(cli_env, people["olga_ex"]).prompt == f"prompt {MARK}"
    [event] = _events(cli_env, retention.REQUEST_ACTION)
    shell = Principal.shell(cli_env)
    assert event.actor == shell.username == f"shell:{os_user()}" and event.actor_id == shell.user_id
    assert cli.main(["erase", "list", "--status", "pending"]) == 0
    assert f"pending: user olga (id {people['olga'].user_id}), asked by {shell.username}" in capsys.readouterr().out
    [request] = retention.list_erasure_requests(cli_env, people["ada"], "pending")
    done = retention.decide_erasure(cli_env, people["ada"], request.id, True)
    assert done.status == "done" and _exchange(cli_env, people["olga_ex"]).prompt == ""


def test_cli_erase_asks_on_a_terminal_and_stops_unless_the_name_is_typed(cli_env, people, monkeypatch, capsys):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    answers = iter(["otto", "olga"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert cli.main(["erase", "request", "--user", "olga", "--reason", REASON]) == 1
    captured = capsys.readouterr()
    assert "Found now: 0 exchanges" in captured.out and "It keeps the account itself" in captured.out
    assert "younger than six months: 3 exchanges" in captured.out
    assert captured.err == "llm-console: error: not confirmed; nothing was asked for\n"
    assert not retention.list_erasure_requests(cli_env, people["ada"])
    assert cli.main(["erase", "request", "--user", "olga", "--reason", REASON]) == 0
    assert len(retention.list_erasure_requests(cli_env, people["ada"], "pending")) == 1


@pytest.mark.parametrize("argv,message", [
    (["erase", "request", "--user", "nobody", "--reason", REASON, "--yes"], "No user named 'nobody'."),
    (["erase", "request", "--user", "olga", "--reason", "short", "--yes"],
     "reason for the erasure needs at least 10 characters"),
    (["erase", "request", "--user", "olga", "--reason", REASON, "--legal-basis", "law", "--yes"], "legal basis"),
    (["erase", "request", "--user", "olga", "--reason", REASON], "add --yes"),  # standard input is no terminal
])
def test_cli_erase_bad_input_is_one_line_and_changes_nothing(cli_env, people, capsys, argv, message):
    Principal.shell(cli_env)  # the shell user exists already (its first command creates it, audited)
    head = _head(cli_env)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("llm-console: error: ") and message in err and err.count("\n") == 1
    assert _head(cli_env) == head


def test_cli_erase_without_a_reason_is_a_usage_error(cli_env, people, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["erase", "request", "--user", "olga"])
    assert exc.value.code == 2 and "--reason" in capsys.readouterr().err


# --- the Users page -----------------------------------------------------------------------------------------------


@pytest.fixture
def app_env(tmp_path, monkeypatch, ctx):
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


def _users_page(principal) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / app_pages.PAGE_TABLE["users"][3]), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=principal)
    at.run()
    return at


def _open_erase_form(at: AppTest, username: str) -> AppTest:
    at.selectbox(key="edit_user").select(username)
    at.run()
    return at


def test_the_users_page_asks_and_another_admin_approves_and_erases(app_env, people):
    at = _open_erase_form(_users_page(people["ada"]), "olga")
    assert not at.exception
    at.text_area(key="erase_reason_0").input(REASON)
    at.text_input(key="erase_basis_0").input(BASIS)
    at.checkbox(key="erase_confirm_0").check()
    at.button(key="erase_submit").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    [request] = retention.list_erasure_requests(app_env, people["ada"], "pending")
    assert any(f"request #{request.id}" in s.value.replace("\\", "") for s in at.success)
    assert _exchange(app_env, people["olga_ex"]).prompt == f"prompt {MARK}"
    assert not [b for b in at.button if b.key == f"erase_approve_{request.id}"]  # not for the one who asked

    at = _users_page(people["abe"])
    assert any("Approving erases now: 3 exchanges" in c.value.replace("\\", "") for c in at.caption)
    at.button(key=f"erase_approve_{request.id}").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(s.value.replace("\\", "").startswith("Erased the content of olga: 3 exchanges") for s in at.success)
    assert _exchange(app_env, people["olga_ex"]).prompt == ""


def test_the_users_page_asks_for_nothing_without_the_confirmation_box(app_env, people):
    at = _open_erase_form(_users_page(people["ada"]), "olga")
    at.text_area(key="erase_reason_0").input(REASON)
    at.button(key="erase_submit").click()
    at.run()
    assert [e.value for e in at.error] == ["Tick the box to confirm the request; nothing was asked for."]
    assert not retention.list_erasure_requests(app_env, people["ada"])


def test_the_users_page_shows_a_short_reason_as_a_clear_error(app_env, people):
    at = _open_erase_form(_users_page(people["ada"]), "olga")
    at.text_area(key="erase_reason_0").input("because")
    at.checkbox(key="erase_confirm_0").check()
    at.button(key="erase_submit").click()
    at.run()
    assert any("10 characters" in e.value for e in at.error)
    assert not retention.list_erasure_requests(app_env, people["ada"])


def test_an_admin_is_not_offered_to_erase_their_own_content(app_env, people):
    at = _open_erase_form(_users_page(people["ada"]), "ada")
    assert any("cannot erase your own content" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == "erase_submit"]


def test_added_user_message_survives_the_rerun(app_env, people):
    at = _users_page(people["ada"])
    at.text_input(key="new_username").input("newbie")
    at.multiselect(key="new_roles").select("analyst")
    at.text_input(key="new_password").input("correct horse battery staple")
    at.button(key="add_user_submit").click()
    at.run()
    assert [s.value.replace("\\", "") for s in at.success] == ["Added newbie."]
    at.run()
    assert not at.success  # shown once


def test_an_answer_finishing_after_the_erasure_does_not_write_its_text_back(ctx, people):
    olga = people["olga"]
    _erase(ctx, people)
    with ctx.db.session() as s:
        conv = s.get(Exchange, people["olga_pending"]).conversation_id
        chat_q.complete_exchange(s, people["olga_pending"], TurnRecord(
            conversation_id=conv, user_id=olga.user_id, actor=olga.username, model_version="demo-v1",
            prompt="", response=f"late answer {MARK}", raw_texts=(RawTextRecord("output", f"late raw {MARK}"),)))
    done = _exchange(ctx, people["olga_pending"])
    assert (done.status, done.response, done.prompt) == ("ok", "", "")
    assert MARK.encode() not in _file_bytes(ctx)
