"""A prompt is on record before the model sees it, and every read of someone else's conversation is audited.

- ``db.chat.begin_exchange`` stores the prompt as a ``pending`` exchange (with its findings, raw text and a
  ``chat.prompt`` event); ``complete_exchange`` completes that row when the answer ends; ``mark_interrupted``
  closes what a stopped process left pending, at the next start.
- The chat service goes through them (a scripted host at our own seam: no model needed here; the real engine's
  turns are in tests/chat/test_chat_service.py).
- Showing a review item (queue, escalations, blind second review) is audited once per sign-in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from console.services import chat as chat_svc
from console.services import moderation, review
from console.services.errors import SeparationOfDuties, StorageUnavailable
from db import audit as audit_q
from db import chat as chat_q
from db import safety as safety_q
from db.chat import ExchangeNotPending, ExchangeTimings, PendingRecord, TurnRecord
from db.review import items as items_q
from db.review import queue as queue_q
from db.review.items import ReviewItemRecord
from db.safety import FindingRecord, RawTextRecord
from db.tables import AuditEvent, Exchange, RawText, ReviewItem
from engine.types import ChatMessage, GenerationResult, ModelSpec, SamplingSettings
from tests.conftest import console_env
from tests.review_fixtures import flag

SAMPLING = {"temperature": 0.0, "top_p": 0.95, "max_tokens": 12}
REDACTED = "Mail me at <EMAIL_ADDRESS>"
RAW = "Mail me at jane.doe@example.com"
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def _events(ctx, action: str, object_id: str | None = None) -> list[AuditEvent]:
    with ctx.db.session(readonly=True) as s:
        return list(audit_q.iter_events(s, action=action, object_id=object_id))


def _conversation(ctx, user) -> int:
    with ctx.db.session() as s:
        return chat_q.create_conversation(s, user_id=user.user_id, actor=user.username).id


def _pending(conversation_id: int, user, **overrides) -> PendingRecord:
    fields = dict(
        conversation_id=conversation_id, user_id=user.user_id, actor=user.username, model_version="demo-v1",
        prompt=REDACTED, request_id="chat-1", sampling={"temperature": 0.3, "max_tokens": 64},
        prompt_action="flag", policy_version=3,
        findings=(FindingRecord("prompt", "presidio", "EMAIL_ADDRESS", 0.99, "flag", start=11, end=26),),
        raw_texts=(RawTextRecord("prompt", RAW),),
    )
    fields.update(overrides)
    return PendingRecord(**fields)


def _answer(conversation_id: int, user, **overrides) -> TurnRecord:
    fields = dict(
        conversation_id=conversation_id, user_id=user.user_id, actor=user.username, model_version="demo-v1",
        prompt=REDACTED, response="It shipped <EMAIL_ADDRESS>", status="ok",
        timings=ExchangeTimings(prompt_tokens=9, output_tokens=5, ttft_ms=12.5, e2e_ms=80.0, tokens_per_s=60.0),
        output_action="flag",
        findings=(FindingRecord("output", "presidio", "EMAIL_ADDRESS", 0.98, "flag", start=11, end=26),),
        raw_texts=(RawTextRecord("output", "It shipped jane.doe@example.com"),),
        review=ReviewItemRecord(reason="flagged", direction="output", severity=3),
    )
    fields.update(overrides)
    return TurnRecord(**fields)


@pytest.fixture
def op(make_user):
    return make_user("olivia", "operator")


# --- db: begin, complete, interrupted ---------------------------------------------------------------------------


def test_a_pending_exchange_holds_the_prompt_its_findings_raw_text_and_a_chat_prompt_event(ctx, op):
    conv = _conversation(ctx, op)
    with ctx.db.session() as s:
        ex = chat_q.begin_exchange(s, _pending(conv, op, synthetic=True))
        exchange_id = ex.id
    with ctx.db.session(readonly=True) as s:
        ex = chat_q.get_exchange(s, exchange_id)
        raws = [(r.direction, r.text) for r in s.scalars(select(RawText).where(RawText.exchange_id == exchange_id))]
        findings = [(f.direction, f.label, f.action) for f in safety_q.list_findings(s, exchange_id)]
        items = s.scalar(select(func.count()).select_from(ReviewItem))
    assert (ex.status, ex.prompt, ex.response, ex.model_version) == ("pending", REDACTED, "", "demo-v1")
    assert ex.sampling == {"temperature": 0.3, "max_tokens": 64} and ex.created_at is not None
    assert ex.finished_at is None and ex.ttft_ms is None and ex.synthetic is True
    assert raws == [("prompt", RAW)] and findings == [("prompt", "EMAIL_ADDRESS", "flag")]
    assert items == 0  # the review item is judged on both sides, when the answer ends
    [event] = _events(ctx, "chat.prompt", str(exchange_id))
    assert event.actor == "olivia" and event.actor_id == op.user_id
    assert event.details == {"conversation_id": conv, "request_id": "chat-1", "model_version": "demo-v1",
                             "model_version_id": None, "prompt_action": "flag", "policy_version": 3,
                             "synthetic": True}
    assert "jane" not in str(event.details) and "EMAIL" not in str(event.details)  # never text
    assert _events(ctx, "chat.exchange") == []
    assert audit_q.verify_chain(ctx.db).ok


def test_completing_a_pending_exchange_fills_the_same_row_with_the_answer_and_audits_it(ctx, op):
    conv = _conversation(ctx, op)
    with ctx.db.session() as s:
        exchange_id = chat_q.begin_exchange(s, _pending(conv, op)).id
    with ctx.db.session() as s:
        done = chat_q.complete_exchange(s, exchange_id, _answer(conv, op, model_version="demo-v2"))
        assert done.id == exchange_id
    with ctx.db.session(readonly=True) as s:
        [ex] = s.scalars(select(Exchange)).all()
        raws = sorted((r.direction, r.text) for r in s.scalars(select(RawText)))
        findings = [(f.direction, f.action) for f in safety_q.list_findings(s, exchange_id)]
        [item] = queue_q.list_queue(s)
    assert (ex.id, ex.status, ex.prompt, ex.response) == (exchange_id, "ok", REDACTED, "It shipped <EMAIL_ADDRESS>")
    assert ex.model_version == "demo-v2"  # the version that actually answered
    assert (ex.ttft_ms, ex.e2e_ms, ex.output_tokens, ex.output_action) == (12.5, 80.0, 5, "flag")
    assert ex.finished_at is not None and ex.prompt_action == "flag" and ex.review_status == "pending"
    assert raws == [("output", "It shipped jane.doe@example.com"), ("prompt", RAW)]
    assert findings == [("prompt", "flag"), ("output", "flag")]
    assert (item.exchange_id, item.direction, item.severity) == (exchange_id, "output", 3)
    [event] = _events(ctx, "chat.exchange", str(exchange_id))
    assert event.details["status"] == "ok" and event.details["prompt_action"] == "flag"
    assert event.details["model_version"] == "demo-v2" and event.details["ttft_ms"] == 12.5
    assert event.details["synthetic"] is False
    assert len(_events(ctx, "chat.prompt", str(exchange_id))) == 1
    assert audit_q.verify_chain(ctx.db).ok


@pytest.mark.parametrize("first", ["completed", "interrupted"])
def test_an_exchange_that_is_not_pending_cannot_be_completed(ctx, op, first):
    conv = _conversation(ctx, op)
    with ctx.db.session() as s:
        exchange_id = chat_q.begin_exchange(s, _pending(conv, op)).id
    with ctx.db.session() as s:
        if first == "completed":
            chat_q.complete_exchange(s, exchange_id, _answer(conv, op, review=None))
        else:
            assert chat_q.mark_interrupted(s, datetime.now(UTC) + timedelta(seconds=1)) == [exchange_id]
    events = len(_events(ctx, "chat.exchange"))
    with pytest.raises(ExchangeNotPending, match="not pending"), ctx.db.session() as s:
        chat_q.complete_exchange(s, exchange_id, _answer(conv, op, response="a second answer"))
    with ctx.db.session(readonly=True) as s:
        assert chat_q.get_exchange(s, exchange_id).response != "a second answer"
    assert len(_events(ctx, "chat.exchange")) == events


def test_the_one_shot_store_and_the_completion_only_take_finished_statuses(ctx, op):
    conv = _conversation(ctx, op)
    with pytest.raises(ValueError, match="status"), ctx.db.session() as s:
        chat_q.store_turn(s, _answer(conv, op, status="pending"))
    with ctx.db.session() as s:
        exchange_id = chat_q.begin_exchange(s, _pending(conv, op)).id
    with pytest.raises(ValueError, match="status"), ctx.db.session() as s:
        chat_q.complete_exchange(s, exchange_id, _answer(conv, op, status="interrupted"))
    with pytest.raises(ValueError, match="conversation and user"), ctx.db.session() as s:
        chat_q.complete_exchange(s, exchange_id, _answer(conv + 1, op))


def test_mark_interrupted_closes_only_what_was_pending_before_the_start_in_one_audit_event(ctx, op):
    conv = _conversation(ctx, op)
    with ctx.db.session() as s:
        old = [chat_q.begin_exchange(s, _pending(conv, op, request_id=f"old-{i}", created_at=LONG_AGO)).id
               for i in range(2)]
        answered = chat_q.begin_exchange(s, _pending(conv, op, request_id="done", created_at=LONG_AGO)).id
        chat_q.complete_exchange(s, answered, _answer(conv, op, review=None))
        current = chat_q.begin_exchange(s, _pending(conv, op, request_id="now")).id  # this process's
    started = datetime.now(UTC) - timedelta(minutes=5)
    with ctx.db.session() as s:
        assert chat_q.mark_interrupted(s, started) == old
    with ctx.db.session(readonly=True) as s:
        status = {e.id: (e.status, e.error) for e in chat_q.list_exchanges(s, conv)}
    assert [status[i][0] for i in old] == ["interrupted", "interrupted"]
    assert status[old[0]][1] == chat_q.INTERRUPTED_ERROR
    assert status[answered][0] == "ok" and status[current][0] == "pending"
    [event] = _events(ctx, "chat.interrupted")
    assert event.actor == "system" and event.details["exchange_ids"] == old and event.details["count"] == 2
    # Nothing left to close: no second event.
    with ctx.db.session() as s:
        assert chat_q.mark_interrupted(s, started) == []
    assert len(_events(ctx, "chat.interrupted")) == 1
    assert audit_q.verify_chain(ctx.db).ok


# --- the chat service over a scripted host ----------------------------------------------------------------------

MODEL = ModelSpec(name="scripted-v1", source="scripted")
ANSWER_WORDS = ["Your", "order", "left", "today."]


class ScriptedStream:
    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.result: GenerationResult | None = None
        self.cancelled = False

    def __iter__(self) -> Iterator[str]:
        for word in ANSWER_WORDS:
            yield word + " "
        self.result = GenerationResult(
            request_id=self.request_id, model_version=MODEL.name, text=" ".join(ANSWER_WORDS) + " ",
            finish_reason="stop", prompt_tokens=7, output_tokens=len(ANSWER_WORDS), queue_s=0.0, ttft_s=0.002,
            mean_itl_s=0.001, e2e_s=0.006, aborted=False)

    def cancel(self) -> None:
        self.cancelled = True


class RecordingHost:
    """Our own seam: answers at once, and notes what the database held when the model was asked."""

    serving = MODEL

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.seen: list[tuple[str, list[tuple[str, str, str | None]], int]] = []
        self.calls: list[list[ChatMessage]] = []

    def stream_chat(self, messages: list[ChatMessage], sampling: SamplingSettings, *,
                    request_id: str | None = None) -> ScriptedStream:
        with self.ctx.db.session(readonly=True) as s:
            rows = [(e.status, e.prompt, e.request_id) for e in s.scalars(select(Exchange).order_by(Exchange.id))]
            prompts = s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "chat.prompt"))
        self.seen.append((messages[-1].content, rows, prompts or 0))
        self.calls.append(list(messages))
        return ScriptedStream(request_id or "")


class EmailScanner:
    """A PII scanner at our own seam: finds the one address the tests use."""

    name = "presidio"
    version = "test-1"
    labels = ("EMAIL_ADDRESS",)

    def scan(self, text):
        from engine.safety.base import Finding

        at = text.find("jane.doe@example.com")
        return () if at < 0 else (Finding("presidio", "EMAIL_ADDRESS", 0.99, at, at + 20, self.version),)


@pytest.fixture
def scripted(ctx, op):
    from engine.safety.policy import Policy
    from engine.safety.runner import ScannerRunner

    host = RecordingHost(ctx)
    ctx.host_factory = lambda: host
    policy = Policy.from_toml('version = "t"\noutput_mode = "stream_then_scan"\nkeep_raw_text = true\n'
                              '[rules.prompt.default]\naction = "allow"\n[rules.output.default]\naction = "allow"\n')
    with ctx.db.session() as s:
        version = safety_q.store_policy_version(s, policy.source_text, None, actor="test").version
    stack = moderation.SafetyStack(ScannerRunner([EmailScanner()]), policy, version)
    ctx.safety_factory = lambda: stack
    return ctx, op, host


def test_the_prompt_is_stored_redacted_and_audited_before_the_model_is_asked(scripted):
    ctx, op, host = scripted
    turn = chat_svc.start_turn(ctx, op, None, RAW, **SAMPLING)
    [(sent, rows, prompt_events)] = host.seen
    assert sent == RAW  # the policy allows it: the model sees it as written
    assert rows == [("pending", REDACTED, turn.request_id)] and prompt_events == 1
    assert turn.exchange_id is not None
    text = "".join(turn.deltas())
    assert text == "Your order left today. " and turn.outcome.saved
    assert turn.outcome.exchange_id == turn.exchange_id  # the same row, completed
    with ctx.db.session(readonly=True) as s:
        [ex] = s.scalars(select(Exchange)).all()
        [raw] = s.scalars(select(RawText)).all()
    assert (ex.status, ex.prompt, ex.response, ex.model_version) == ("ok", REDACTED, text, "scripted-v1")
    assert ex.ttft_ms == 2.0 and (raw.direction, raw.text) == ("prompt", RAW)
    history = chat_svc.conversation_history(ctx, op, turn.conversation_id)
    assert [(h.status, h.response) for h in history] == [("ok", text)]
    assert audit_q.verify_chain(ctx.db).ok


def test_a_synthetic_turn_is_marked_on_the_exchange_and_in_its_audit_events(scripted):
    ctx, op, host = scripted
    turn = chat_svc.start_turn(ctx, op, None, "Load test prompt", **SAMPLING, synthetic=True)
    "".join(turn.deltas())
    plain = chat_svc.start_turn(ctx, op, None, "A person's prompt", **SAMPLING)
    "".join(plain.deltas())
    with ctx.db.session(readonly=True) as s:
        marks = {e.id: e.synthetic for e in s.scalars(select(Exchange))}
    assert marks == {turn.exchange_id: True, plain.exchange_id: False}
    for action in ("chat.prompt", "chat.exchange"):
        assert _events(ctx, action, str(turn.exchange_id))[0].details["synthetic"] is True
        assert _events(ctx, action, str(plain.exchange_id))[0].details["synthetic"] is False


def test_a_blocked_prompt_is_still_stored_in_one_go_without_a_pending_step(scripted):
    ctx, op, host = scripted
    from engine.safety.policy import Policy

    policy = Policy.from_toml('version = "b"\noutput_mode = "stream_then_scan"\nkeep_raw_text = false\n'
                              '[rules.prompt.default]\naction = "allow"\n[rules.prompt.EMAIL_ADDRESS]\n'
                              'threshold = 0.5\naction = "block"\n[rules.output.default]\naction = "allow"\n')
    ctx.safety.policy = policy
    turn = chat_svc.start_turn(ctx, op, None, RAW, **SAMPLING)
    assert turn.blocked and turn.exchange_id is None and host.seen == []
    with ctx.db.session(readonly=True) as s:
        [ex] = s.scalars(select(Exchange)).all()
    assert ex.status == "blocked" and ex.prompt == REDACTED and ex.id == turn.outcome.exchange_id
    assert _events(ctx, "chat.prompt") == [] and len(_events(ctx, "chat.exchange", str(ex.id))) == 1


def _locked(message: str = "database is locked") -> OperationalError:
    return OperationalError("UPDATE exchanges ...", {}, sqlite3.OperationalError(message))


def test_a_storage_failure_at_completion_keeps_the_answer_for_the_user_and_the_prompt_pending(scripted, monkeypatch):
    ctx, op, host = scripted
    turn = chat_svc.start_turn(ctx, op, None, RAW, **SAMPLING)
    calls = []

    def disk_full(session, exchange_id, record):
        calls.append(exchange_id)
        raise _locked("database or disk is full")

    monkeypatch.setattr(chat_q, "complete_exchange", disk_full)
    text = "".join(turn.deltas())  # no exception: the page keeps the answer
    assert calls == [turn.exchange_id]  # a full disk is not retried
    outcome = turn.outcome
    assert text and outcome.text == text and not outcome.saved and outcome.exchange_id is None
    assert "disk is full" in outcome.notice and "the answer is not in the conversation's history" in outcome.notice
    with ctx.db.session(readonly=True) as s:
        [ex] = s.scalars(select(Exchange)).all()
    assert (ex.id, ex.status, ex.prompt, ex.response) == (turn.exchange_id, "pending", REDACTED, "")
    assert _events(ctx, "chat.exchange") == []
    assert audit_q.verify_chain(ctx.db).ok
    [shown] = chat_svc.conversation_history(ctx, op, turn.conversation_id)
    assert (shown.status, shown.response) == ("pending", "")


def test_a_prompt_that_cannot_be_stored_never_reaches_the_model(scripted, monkeypatch):
    ctx, op, host = scripted
    monkeypatch.setattr(chat_svc, "STORE_RETRY_WAIT_S", 0.01)

    def locked(session, record):
        raise _locked()

    monkeypatch.setattr(chat_q, "begin_exchange", locked)
    with pytest.raises(StorageUnavailable, match="not sent to the model"):
        chat_svc.start_turn(ctx, op, None, RAW, **SAMPLING)
    assert host.seen == []
    with ctx.db.session(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(Exchange)) == 0


def test_an_answer_completed_after_its_exchange_was_closed_as_interrupted_is_kept_on_screen(scripted):
    ctx, op, host = scripted
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING)
    chat_svc.mark_interrupted(ctx, before=datetime.now(UTC) + timedelta(seconds=1))  # another process started
    text = "".join(turn.deltas())
    assert text and not turn.outcome.saved and "interrupted" in turn.outcome.notice
    with ctx.db.session(readonly=True) as s:
        assert chat_q.get_exchange(s, turn.exchange_id).status == "interrupted"


def test_the_start_up_sweep_marks_old_pending_exchanges_and_queues_the_flagged_ones(scripted):
    ctx, op, host = scripted
    conv = _conversation(ctx, op)
    with ctx.db.session() as s:
        flagged = chat_q.begin_exchange(s, _pending(conv, op, created_at=LONG_AGO)).id
        plain = chat_q.begin_exchange(s, _pending(conv, op, created_at=LONG_AGO, prompt_action="allow",
                                                  findings=(), raw_texts=())).id
    assert chat_svc.mark_interrupted(ctx, before=datetime.now(UTC)) == [flagged, plain]
    with ctx.db.session(readonly=True) as s:
        [item] = queue_q.list_queue(s)
    assert (item.exchange_id, item.reason, item.direction, item.severity) == (flagged, "flagged", "prompt", 2)
    history = chat_svc.conversation_history(ctx, op, conv)
    assert [h.status for h in history] == ["interrupted", "interrupted"]
    [event] = _events(ctx, "chat.interrupted")
    assert event.details["exchange_ids"] == [flagged, plain]
    # Interrupted turns are not replayed to the model as history.
    turn = chat_svc.start_turn(ctx, op, conv, "Again", **SAMPLING)
    "".join(turn.deltas())
    assert [(m.role, m.content) for m in host.calls[-1]] == [("user", "Again")]
    assert audit_q.verify_chain(ctx.db).ok


@pytest.fixture
def console_resources(ctx, tmp_path: Path, monkeypatch):
    """console.resources over this test's database, with the engine switched off (no vLLM)."""
    from console import resources

    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield resources
    st.cache_resource.clear()


def test_console_start_up_marks_what_an_earlier_process_left_pending(ctx, op, console_resources, monkeypatch):
    conv = _conversation(ctx, op)
    with ctx.db.session() as s:
        left = chat_q.begin_exchange(s, _pending(conv, op, prompt_action="allow", findings=())).id
    monkeypatch.setattr(console_resources, "STARTED_AT", datetime.now(UTC) + timedelta(seconds=1))
    assert console_resources.engine_host() is None  # the engine is off; the sweep runs regardless
    with ctx.db.session(readonly=True) as s:
        assert chat_q.get_exchange(s, left).status == "interrupted"
    [event] = _events(ctx, "chat.interrupted")
    assert event.details["exchange_ids"] == [left]


# --- read auditing: review items and other people's conversations -----------------------------------------------


@pytest.fixture
def people(make_user):
    return {"op": make_user("olga", "operator"), "alice": make_user("alice", "reviewer"),
            "bob": make_user("bob", "reviewer"), "admin": make_user("ada", "admin")}


def _views(ctx, actor: str) -> list[tuple[str, str | None]]:
    with ctx.db.session(readonly=True) as s:
        return [(e.action, e.object_id) for e in audit_q.iter_events(s, actor=actor)
                if e.action in (review.VIEW_ACTION, review.CONVERSATION_VIEW_ACTION)]


def test_opening_a_review_item_is_audited_once_per_sign_in_with_the_conversation_it_shows(ctx, people, clock):
    op = people["op"]
    conv = _conversation(ctx, op)
    earlier = flag(ctx, op, conversation_id=conv)
    item = flag(ctx, op, conversation_id=conv)
    view = review.item_view(ctx, people["alice"], item)
    review.item_view(ctx, people["alice"], item)  # the page shows it again on every click
    assert _views(ctx, "alice") == [("review.view", str(item)), ("chat.conversation_view", str(conv))]
    [seen] = _events(ctx, "review.view")
    assert seen.details == {"exchange_id": view.exchange_id, "conversation_id": conv, "via": "review",
                            "blind": False}
    [conversation] = _events(ctx, "chat.conversation_view")
    with ctx.db.session(readonly=True) as s:
        earlier_exchange = items_q.get_review_item(s, earlier).exchange_id
    assert conversation.details["owner_id"] == op.user_id and conversation.details["item_id"] == item
    assert conversation.details["exchange_ids"] == [earlier_exchange, view.exchange_id]
    assert "mail me" not in str(conversation.details).lower()  # ids, never text
    # Another item is another view; a new sign-in records the same item again.
    review.item_view(ctx, people["alice"], earlier)
    from console.services import auth
    from tests.conftest import STRONG_PASSWORD

    auth.login(ctx, "alice", STRONG_PASSWORD)
    review.item_view(ctx, people["alice"], item)
    assert [o for a, o in _views(ctx, "alice") if a == "review.view"] == [str(item), str(earlier), str(item)]
    assert audit_q.verify_chain(ctx.db).ok


def test_a_refused_view_of_ones_own_conversation_records_no_view(ctx, make_user):
    both = make_user("rhea", "operator", "reviewer")
    item = flag(ctx, both)
    with pytest.raises(SeparationOfDuties):
        review.item_view(ctx, both, item)
    assert _views(ctx, "rhea") == []


def test_the_escalations_page_and_the_blind_second_review_audit_what_they_show(ctx, people):
    item = flag(ctx, people["op"])
    review.decide(ctx, people["alice"], item, "violation", category="pii_leak", share=1.0)
    blind = review.next_second_review(ctx, people["bob"])
    assert blind is not None and blind.item_id == item
    review.next_second_review(ctx, people["bob"])
    assert [a for a, _ in _views(ctx, "bob")] == ["review.view", "chat.conversation_view"]
    [bobs] = [e for e in _events(ctx, "review.view") if e.actor == "bob"]
    assert bobs.details["via"] == "second_review" and bobs.details["blind"] is True

    escalated = flag(ctx, people["op"])
    review.decide(ctx, people["alice"], escalated, "escalate", note="unsure")
    view = review.escalation_view(ctx, people["admin"], escalated)
    review.escalation_view(ctx, people["admin"], escalated)
    with ctx.db.session(readonly=True) as s:
        conv = chat_q.get_exchange(s, view.exchange_id).conversation_id
    assert _views(ctx, "ada") == [("review.view", str(escalated)), ("chat.conversation_view", str(conv))]
    [adas] = [e for e in _events(ctx, "review.view") if e.actor == "ada"]
    assert adas.details["via"] == "escalations" and adas.details["blind"] is False


def test_revealing_raw_text_stays_audited_with_its_reason_and_the_view(ctx, people):
    item = flag(ctx, people["op"], raw_prompt="mail me at jane.doe@example.com")
    text = review.reveal_raw(ctx, people["alice"], item, "prompt", "check the address")
    assert text == "mail me at jane.doe@example.com"
    assert [e.details["reason"] for e in _events(ctx, "review.reveal_reason")] == ["check the address"]
    [reveal] = _events(ctx, "safety.raw_reveal")
    assert reveal.actor == "alice" and reveal.details == {"direction": "prompt", "found": True}


def test_a_view_that_cannot_be_recorded_is_not_shown(ctx, people, monkeypatch):
    item = flag(ctx, people["op"])

    def locked(*args, **kwargs):
        raise _locked()

    monkeypatch.setattr(review, "_append_views", locked)
    with pytest.raises(StorageUnavailable, match="must be recorded"):
        review.item_view(ctx, people["alice"], item)
