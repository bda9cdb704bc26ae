"""One chat turn end to end: real vLLM engine (tiny model), real Presidio, real SQLite; policy in both directions."""

from __future__ import annotations

import dataclasses
import sqlite3
import textwrap
import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from console.services import chat as chat_svc
from console.services import moderation
from console.services.errors import ConsoleError, InvalidInput, ModelUnavailable, NotFound, StorageUnavailable
from db import audit as audit_q
from db import chat as chat_q
from db import safety as safety_q
from db.config import DbConfig
from db.database import Database
from db.review import items as items_q
from db.review import queue as queue_q
from db.tables import AuditEvent, Conversation, Exchange, RawText, ReviewItem
from db.tables import Finding as FindingRow
from engine.errors import EngineDeadError
from engine.safety.base import Finding
from engine.safety.policy import Policy
from engine.safety.runner import ScannerRunner

# What the chat page passes; the spy host below makes every answer exactly max_tokens long.
SAMPLING = {"temperature": 0.0, "top_p": 0.95, "max_tokens": 12}
EMAIL_PROMPT = "My email is jane.doe@example.com, where is my order?"


def _policy(prompt_rules: str = "", output_rules: str = "", mode: str = "stream_then_scan",
            keep_raw: bool = False) -> Policy:
    return Policy.from_toml(textwrap.dedent(f"""
        version = "test"
        output_mode = "{mode}"
        keep_raw_text = {str(keep_raw).lower()}
        [rules.prompt.default]
        action = "allow"
        {prompt_rules}
        [rules.output.default]
        action = "allow"
        {output_rules}
    """))


class SpyHost:
    """Our own seam around the real host: records what the model was asked.

    It sets ``ignore_eos`` (which the chat page never does) so the untrained tiny model always answers with
    exactly ``max_tokens`` tokens and counts can be asserted. ``die_after`` makes the engine fail mid-stream.
    """

    def __init__(self, host):
        self.host = host
        self.calls: list[list] = []
        self.die_after: int | None = None
        self.suffix: str | None = None  # one more delta after the model's own (e.g. a NUL)
        self.on_call = None  # called with the messages before the model is asked (e.g. to look at the store)

    @property
    def serving(self):
        return self.host.serving

    def status(self):
        return self.host.status()

    def stream_chat(self, messages, sampling, *, request_id=None):
        self.calls.append(list(messages))
        if self.on_call is not None:
            self.on_call(messages)
        stream = self.host.stream_chat(messages, dataclasses.replace(sampling, ignore_eos=True),
                                       request_id=request_id)
        if self.suffix is not None:
            return SuffixStream(stream, self.suffix)
        return stream if self.die_after is None else DyingStream(stream, self.die_after)


class SuffixStream:
    """A real stream whose answer ends with one more delta of our choosing (a NUL byte, say)."""

    def __init__(self, stream, suffix):
        self.stream, self.suffix = stream, suffix

    @property
    def result(self):
        return self.stream.result

    def __iter__(self):
        yield from self.stream
        # One delta, or (a list) several: an answer that goes on in pieces of our choosing.
        yield from [self.suffix] if isinstance(self.suffix, str) else self.suffix

    def cancel(self):
        self.stream.cancel()


class DyingStream:
    """A real stream that fails like a crashed engine after ``n`` deltas (hard to cause for real), or at its end when
    the engine handed over fewer (it batches tokens into one delta every 20 ms, so a fast answer can come in two)."""

    result = None

    def __init__(self, stream, n):
        self.stream, self.n = stream, n

    def __iter__(self):
        for i, delta in enumerate(self.stream):
            if i == self.n:
                break
            yield delta
        self.stream.cancel()
        raise EngineDeadError("The model stopped working. An admin has to restart it.")

    def cancel(self):
        self.stream.cancel()


class WholeTextPiiScanner:
    """A PII scanner at our own seam: reports any text, whole, as an email address (to be redacted when stored)."""

    name = "presidio"
    version = "test-1"
    labels = ("EMAIL_ADDRESS",)

    def scan(self, text):
        return (Finding("presidio", "EMAIL_ADDRESS", 0.99, 0, len(text), self.version),) if text else ()


class EverythingScanner:
    """A scanner at our own seam that flags any text with a whole-text label, for output-side policies."""

    name = "everything"
    version = "test-1"
    labels = ("toxicity",)

    def scan(self, text):
        return (Finding("everything", "toxicity", 0.99, None, None, self.version),) if text else ()


@pytest.fixture(scope="module")
def presidio_runner():
    from engine.safety.pii import PresidioScanner

    return ScannerRunner([PresidioScanner()])


@pytest.fixture
def chat(ctx, engine_host, make_user, presidio_runner):
    """An operator, a spy around the real engine, and a settable safety stack."""
    spy = SpyHost(engine_host)
    holder: dict = {"stack": None}
    ctx.host_factory = lambda: spy
    ctx.safety_factory = lambda: holder["stack"]

    def use_policy(policy: Policy, runner: ScannerRunner | None = None) -> None:
        with ctx.db.session() as s:
            version = safety_q.store_policy_version(s, policy.source_text, None, actor="test").version
        holder["stack"] = moderation.SafetyStack(runner or presidio_runner, policy, version)

    op = make_user("olivia", "operator")
    return ctx, op, spy, use_policy


def _run(turn) -> str:
    return "".join(turn.deltas())


def test_a_turn_streams_and_stores_the_exchange_with_its_metrics_and_audit_event(chat):
    ctx, op, spy, _ = chat
    turn = chat_svc.start_turn(ctx, op, None, "Hello, where is my order?", **SAMPLING)
    deltas = list(turn.deltas())
    assert len(deltas) > 1 and all(isinstance(d, str) for d in deltas)
    outcome = turn.outcome
    assert outcome.status == "ok" and outcome.text == "".join(deltas)
    assert outcome.exchange_id == turn.exchange_id  # the row stored when the prompt was submitted, completed
    with ctx.db.session() as s:
        ex = chat_q.get_exchange(s, outcome.exchange_id)
        assert ex.response == "".join(deltas) and ex.status == "ok"
        assert ex.model_version == "tiny-test" and ex.output_tokens == SAMPLING["max_tokens"]
        assert 0 <= ex.ttft_ms <= ex.e2e_ms and ex.tokens_per_s > 0
        assert ex.sampling["max_tokens"] == SAMPLING["max_tokens"]
        events = list(audit_q.iter_events(s, action="chat.exchange", object_id=str(ex.id)))
        prompts = list(audit_q.iter_events(s, action="chat.prompt", object_id=str(ex.id)))
    assert len(events) == 1 and events[0].actor == "olivia"
    assert len(prompts) == 1 and prompts[0].seq < events[0].seq
    assert audit_q.verify_chain(ctx.db).ok


def test_the_prompt_is_stored_pending_with_its_audit_event_before_the_engine_is_asked(chat):
    ctx, op, spy, use_policy = chat
    use_policy(_policy('[rules.prompt.EMAIL_ADDRESS]\nthreshold = 0.5\naction = "flag"', keep_raw=True))
    seen = []

    def look(messages):
        with ctx.db.session(readonly=True) as s:
            rows = [(e.status, e.prompt, e.response) for e in s.scalars(select(Exchange))]
            prompts = [e.object_id for e in audit_q.iter_events(s, action="chat.prompt")]
            raws = [(r.direction, r.text) for r in s.scalars(select(RawText))]
        seen.append((messages[-1].content, rows, prompts, raws))

    spy.on_call = look
    turn = chat_svc.start_turn(ctx, op, None, EMAIL_PROMPT, **SAMPLING)
    [(sent, rows, prompts, raws)] = seen
    assert sent == EMAIL_PROMPT  # flag: the model sees it as written, after it was on record
    assert rows == [("pending", "My email is <EMAIL_ADDRESS>, where is my order?", "")]
    assert prompts == [str(turn.exchange_id)] and raws == [("prompt", EMAIL_PROMPT)]
    text = _run(turn)
    with ctx.db.session() as s:
        [ex] = s.scalars(select(Exchange)).all()
        [item] = queue_q.list_queue(s)
    assert (ex.id, ex.status, ex.response) == (turn.exchange_id, "ok", text)
    assert item.exchange_id == ex.id and item.direction == "prompt"


def test_a_second_turn_sends_the_conversation_history(chat):
    ctx, op, spy, _ = chat
    first = chat_svc.start_turn(ctx, op, None, "First question", **SAMPLING, system_prompt="Be brief.")
    _run(first)
    second = chat_svc.start_turn(ctx, op, first.conversation_id, "Second question", **SAMPLING)
    _run(second)
    roles = [m.role for m in spy.calls[-1]]
    assert roles == ["system", "user", "assistant", "user"]
    assert spy.calls[-1][1].content == "First question"
    history = chat_svc.conversation_history(ctx, op, first.conversation_id)
    assert [h.prompt for h in history] == ["First question", "Second question"]
    assert [c.id for c in chat_svc.list_conversations(ctx, op)] == [first.conversation_id]


def test_stopping_a_stream_aborts_the_request_and_stores_the_partial_answer(chat):
    ctx, op, spy, _ = chat
    turn = chat_svc.start_turn(ctx, op, None, "Tell me a long story", **{**SAMPLING, "max_tokens": 400})
    gen = turn.deltas()
    partial = next(gen) + next(gen)
    gen.close()  # what Streamlit does when the user presses Stop (the script run is interrupted)
    assert turn.outcome.status == "aborted"
    with ctx.db.session() as s:
        ex = chat_q.get_exchange(s, turn.outcome.exchange_id)
        assert ex.status == "aborted" and ex.response.startswith(partial)
        assert ex.output_tokens is None or ex.output_tokens < 400


def test_another_users_conversation_cannot_be_continued_or_sent_to_review(chat, make_user):
    ctx, op, spy, _ = chat
    turn = chat_svc.start_turn(ctx, op, None, "Mine", **SAMPLING)
    _run(turn)
    other = make_user("oscar", "operator")
    with pytest.raises(NotFound):
        chat_svc.start_turn(ctx, other, turn.conversation_id, "Hijack", **SAMPLING)
    with pytest.raises(NotFound):
        chat_svc.send_to_review(ctx, other, turn.outcome.exchange_id, "look")


@pytest.mark.parametrize("prompt", ["", "   ", "x" * (chat_svc.MAX_PROMPT_CHARS + 1)], ids=["empty", "blank", "huge"])
def test_bad_prompts_are_refused_before_anything_is_stored(chat, prompt):
    ctx, op, spy, _ = chat
    with pytest.raises(InvalidInput):
        chat_svc.start_turn(ctx, op, None, prompt, **SAMPLING)
    assert spy.calls == []
    with ctx.db.session() as s:
        assert chat_q.list_conversations(s, op.user_id) == []


def test_a_prompt_longer_than_the_context_gives_a_clear_error_and_is_recorded(chat):
    ctx, op, spy, _ = chat
    with pytest.raises(InvalidInput, match="too long"):
        chat_svc.start_turn(ctx, op, None, "refund " * 2000, **SAMPLING)
    with ctx.db.session() as s:
        [conv] = chat_q.list_conversations(s, op.user_id)
        [ex] = chat_q.list_exchanges(s, conv.id)
    assert ex.status == "error" and "token" in ex.error


def test_no_engine_means_a_clear_model_unavailable_error(chat):
    ctx, op, spy, _ = chat
    ctx.host_factory = lambda: None
    with pytest.raises(ModelUnavailable, match="No model is being served"):
        chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING)


SAMPLING_CASES = [
    ("temperature too high", {"temperature": 3.0}, "Temperature"),
    ("top-p zero", {"top_p": 0.0}, "Top-p"),
    ("no tokens", {"max_tokens": 0}, "Max tokens"),
]


@pytest.mark.parametrize("name,change,message", SAMPLING_CASES, ids=[c[0] for c in SAMPLING_CASES])
def test_out_of_range_sampling_settings_are_refused_before_anything_is_stored(chat, name, change, message):
    ctx, op, spy, _ = chat
    with pytest.raises(InvalidInput, match=message):
        chat_svc.start_turn(ctx, op, None, "Hello", **{**SAMPLING, **change})
    assert spy.calls == []
    with ctx.db.session() as s:
        assert chat_q.list_conversations(s, op.user_id) == []


def test_an_engine_failing_mid_stream_is_model_unavailable_and_the_partial_turn_is_stored_as_error(chat):
    ctx, op, spy, _ = chat
    spy.die_after = 2
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING)
    shown = []
    with pytest.raises(ModelUnavailable, match="stopped working") as raised:
        for delta in turn.deltas():
            shown.append(delta)
    assert isinstance(raised.value.__cause__, EngineDeadError) and 1 <= len(shown) <= 2
    assert turn.outcome.exchange_id == turn.exchange_id
    with ctx.db.session() as s:
        ex = chat_q.get_exchange(s, turn.outcome.exchange_id)
    assert ex.status == "error" and ex.error == "The model stopped working. An admin has to restart it."
    assert ex.response == "".join(shown)


def test_a_blocked_prompt_never_reaches_the_model_and_goes_to_review(chat):
    ctx, op, spy, use_policy = chat
    use_policy(_policy('[rules.prompt.EMAIL_ADDRESS]\nthreshold = 0.5\naction = "block"'))
    turn = chat_svc.start_turn(ctx, op, None, EMAIL_PROMPT, **SAMPLING)
    assert turn.blocked and _run(turn) == ""
    assert spy.calls == []
    assert "blocked" in turn.outcome.notice
    with ctx.db.session() as s:
        ex = chat_q.get_exchange(s, turn.outcome.exchange_id)
        assert ex.status == "blocked" and ex.prompt_action == "block"
        assert "jane.doe@example.com" not in ex.prompt and "<EMAIL_ADDRESS>" in ex.prompt
        [item] = queue_q.list_queue(s)
        assert item.exchange_id == ex.id and item.reason == "blocked" and item.severity == 3


def test_a_redacted_prompt_reaches_the_model_without_the_personal_data(chat):
    ctx, op, spy, use_policy = chat
    use_policy(_policy('[rules.prompt.EMAIL_ADDRESS]\nthreshold = 0.5\naction = "redact"'))
    turn = chat_svc.start_turn(ctx, op, None, EMAIL_PROMPT, **SAMPLING)
    _run(turn)
    sent = spy.calls[-1][-1].content
    assert "jane.doe@example.com" not in sent and "<EMAIL_ADDRESS>" in sent
    with ctx.db.session() as s:
        findings = safety_q.list_findings(s, turn.outcome.exchange_id)
        ex = chat_q.get_exchange(s, turn.outcome.exchange_id)
    assert [(f.direction, f.label, f.action) for f in findings] == [("prompt", "EMAIL_ADDRESS", "redact")]
    assert ex.prompt_action == "redact" and ex.review_status == "none"


def test_stored_text_is_redacted_even_when_the_policy_only_flags_and_raw_text_is_kept_apart(chat):
    ctx, op, spy, use_policy = chat
    use_policy(_policy('[rules.prompt.EMAIL_ADDRESS]\nthreshold = 0.5\naction = "flag"', keep_raw=True))
    turn = chat_svc.start_turn(ctx, op, None, EMAIL_PROMPT, **SAMPLING)
    _run(turn)
    assert "jane.doe@example.com" in spy.calls[-1][-1].content  # flag: the model sees the original
    with ctx.db.session() as s:
        ex = chat_q.get_exchange(s, turn.outcome.exchange_id)
        raws = list(s.query(RawText).filter_by(exchange_id=ex.id))
        assert "<EMAIL_ADDRESS>" in ex.prompt and ex.review_status == "pending"
        assert [(r.direction, r.text) for r in raws] == [("prompt", EMAIL_PROMPT)]


class DiskFull(Exception):
    pass


def test_a_flagged_turn_stores_exchange_findings_raw_text_and_review_item_together_or_nothing(chat, monkeypatch):
    ctx, op, spy, use_policy = chat
    use_policy(_policy('[rules.prompt.EMAIL_ADDRESS]\nthreshold = 0.5\naction = "flag"', keep_raw=True))

    def rows(s):
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t))
                for t in (Exchange, FindingRow, RawText, ReviewItem)}

    turn = chat_svc.start_turn(ctx, op, None, EMAIL_PROMPT, **SAMPLING)
    _run(turn)
    with ctx.db.session() as s:
        assert rows(s) == {"exchanges": 1, "findings": 1, "raw_texts": 1, "review_items": 1}
        events_before = s.scalar(select(func.count()).select_from(AuditEvent))

    # The review item is the last part stored: failing there (the disk filled up) must undo all the others of
    # the completion. The prompt, stored before the model was asked, stays pending with its finding and raw text.
    def disk_full(*args, **kwargs):
        raise DiskFull("database or disk is full")

    monkeypatch.setattr(items_q, "create_review_item", disk_full)
    turn = chat_svc.start_turn(ctx, op, turn.conversation_id, EMAIL_PROMPT, **SAMPLING)
    with ctx.db.session() as s:
        assert rows(s) == {"exchanges": 2, "findings": 2, "raw_texts": 2, "review_items": 1}
        events_before = s.scalar(select(func.count()).select_from(AuditEvent))
    with pytest.raises(DiskFull):
        _run(turn)
    with ctx.db.session() as s:
        assert rows(s) == {"exchanges": 2, "findings": 2, "raw_texts": 2, "review_items": 1}
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == events_before
        pending = chat_q.get_exchange(s, turn.exchange_id)
        assert (pending.status, pending.response, pending.output_action) == ("pending", "", None)
    assert audit_q.verify_chain(ctx.db).ok


def test_monitor_only_rules_record_findings_without_enforcing(chat):
    ctx, op, spy, use_policy = chat
    use_policy(_policy('[rules.prompt.EMAIL_ADDRESS]\nthreshold = 0.5\naction = "block"\nmonitor_only = true'))
    turn = chat_svc.start_turn(ctx, op, None, EMAIL_PROMPT, **SAMPLING)
    assert not turn.blocked
    _run(turn)
    with ctx.db.session() as s:
        [f] = safety_q.list_findings(s, turn.outcome.exchange_id)
    assert f.action == "monitor:block" and turn.outcome.prompt_action == "allow"


def test_hold_until_scanned_shows_nothing_until_the_scan_passes(chat):
    ctx, op, spy, use_policy = chat
    use_policy(_policy(mode="hold_until_scanned"))
    chunks = list(chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING).deltas())
    assert len(chunks) == 1 and chunks[0]


def test_an_output_blocked_in_hold_mode_is_never_shown(chat):
    ctx, op, spy, use_policy = chat
    use_policy(_policy(output_rules='[rules.output.toxicity]\nthreshold = 0.5\naction = "block"',
                       mode="hold_until_scanned"), ScannerRunner([EverythingScanner()]))
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING)
    assert list(turn.deltas()) == [moderation.BLOCKED_OUTPUT_NOTICE]
    assert turn.outcome.output_action == "block"
    with ctx.db.session() as s:
        [item] = queue_q.list_queue(s)
    assert item.reason == "blocked" and item.direction == "output"


def test_an_output_flagged_after_streaming_goes_to_review(chat):
    ctx, op, spy, use_policy = chat
    use_policy(_policy(output_rules='[rules.output.toxicity]\nthreshold = 0.5\naction = "flag"'),
               ScannerRunner([EverythingScanner()]))
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING)
    text = _run(turn)
    assert text and turn.outcome.output_action == "flag"
    with ctx.db.session() as s:
        [item] = queue_q.list_queue(s)
    assert item.reason == "flagged" and item.exchange_id == turn.outcome.exchange_id


def test_an_operator_can_send_any_message_to_review_with_a_note(chat):
    ctx, op, spy, _ = chat
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING)
    _run(turn)
    with pytest.raises(InvalidInput):
        chat_svc.send_to_review(ctx, op, turn.outcome.exchange_id, "  ")
    chat_svc.send_to_review(ctx, op, turn.outcome.exchange_id, "Odd answer")
    with ctx.db.session() as s:
        [item] = queue_q.list_queue(s)
    assert item.reason == "manual" and item.note == "Odd answer" and item.created_by_id == op.user_id


def test_stored_text_cuts_personal_data_but_not_toxicity_windows():
    text = "You idiot, mail me at jane.doe@example.com"
    findings = (
        Finding("profanity-fallback", "profanity", 0.93, 0, len(text), "fallback"),
        Finding("presidio", "EMAIL_ADDRESS", 1.0, text.index("jane"), len(text), "presidio"),
    )
    assert moderation._redact_all(text, findings) == "You idiot, mail me at <EMAIL_ADDRESS>"


def test_an_answer_cut_by_an_engine_restart_is_stored_as_aborted_with_a_notice_naming_why(chat):
    ctx, op, spy, _ = chat
    turn = chat_svc.start_turn(ctx, op, None, "Hello", temperature=0.0, top_p=1.0, max_tokens=1500)
    deltas = turn.deltas()
    first = next(deltas)
    spy.host.restart(wait=True)  # an admin's restart cuts what is in flight
    rest = "".join(deltas)
    with ctx.db.session() as s:
        ex = chat_q.get_exchange(s, turn.outcome.exchange_id)
    assert ex.status == "aborted" and ex.response == first + rest
    assert 0 < ex.output_tokens < 1500
    assert "engine was restarted" in (turn.outcome.notice or "")


# --- privacy: partial answers, the system prompt, notes ----------------------------------------------------------


def test_a_partial_answer_from_an_engine_that_failed_mid_stream_is_scanned_and_redacted_when_stored(chat):
    ctx, op, spy, use_policy = chat
    use_policy(_policy(output_rules='[rules.output.EMAIL_ADDRESS]\nthreshold = 0.5\naction = "flag"'),
               ScannerRunner([WholeTextPiiScanner()]))
    spy.die_after = 2
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **{**SAMPLING, "max_tokens": 64})
    shown = []
    with pytest.raises(ModelUnavailable):
        for delta in turn.deltas():
            shown.append(delta)
    assert 1 <= len(shown) <= 2 and "".join(shown)
    with ctx.db.session() as s:
        ex = chat_q.get_exchange(s, turn.outcome.exchange_id)
        output = [(f.direction, f.label, f.action) for f in safety_q.list_findings(s, ex.id) if f.direction == "output"]
        [item] = queue_q.list_queue(s)
    assert ex.status == "error" and ex.response == "<EMAIL_ADDRESS>" and ex.output_action == "flag"
    assert output == [("output", "EMAIL_ADDRESS", "flag")]
    assert item.exchange_id == ex.id and item.direction == "output"


SYSTEM_PROMPT = "Always copy jane.doe@example.com on your answers."


def _system_findings(ctx, exchange_id):
    with ctx.db.session() as s:
        return [(f.direction, f.detector, f.label, f.action, f.start) for f in safety_q.list_findings(s, exchange_id)
                if f.detector.startswith(moderation.SYSTEM_PROMPT_DETECTOR_PREFIX)]


def test_a_blocked_system_prompt_refuses_the_turn_and_every_later_one_and_goes_to_review(chat):
    ctx, op, spy, use_policy = chat
    use_policy(_policy('[rules.prompt.EMAIL_ADDRESS]\nthreshold = 0.5\naction = "block"'))
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING, system_prompt=SYSTEM_PROMPT)
    assert turn.blocked and _run(turn) == "" and spy.calls == []
    assert "system prompt was blocked" in turn.outcome.notice
    with ctx.db.session() as s:
        ex = chat_q.get_exchange(s, turn.outcome.exchange_id)
        conv = chat_q.get_conversation(s, turn.conversation_id)
        [item] = queue_q.list_queue(s)
    assert ex.status == "blocked" and ex.prompt_action == "block" and ex.prompt == "Hello"
    assert "jane.doe@example.com" not in conv.system_prompt and "<EMAIL_ADDRESS>" in conv.system_prompt
    assert _system_findings(ctx, ex.id) == [("prompt", "system prompt/presidio", "EMAIL_ADDRESS", "block", None)]
    assert item.exchange_id == ex.id and item.reason == "blocked"
    with pytest.raises(InvalidInput, match="system prompt was blocked"):
        chat_svc.start_turn(ctx, op, turn.conversation_id, "Hello again", **SAMPLING)
    assert spy.calls == []


def test_a_redacted_system_prompt_reaches_the_model_without_the_personal_data_and_is_stored_redacted(chat):
    ctx, op, spy, use_policy = chat
    use_policy(_policy('[rules.prompt.EMAIL_ADDRESS]\nthreshold = 0.5\naction = "redact"'))
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING, system_prompt=SYSTEM_PROMPT)
    _run(turn)
    system = spy.calls[-1][0]
    assert system.role == "system" and "jane.doe@example.com" not in system.content
    assert "<EMAIL_ADDRESS>" in system.content
    assert "system prompt" in turn.outcome.notice
    _run(chat_svc.start_turn(ctx, op, turn.conversation_id, "And then?", **SAMPLING))
    assert spy.calls[-1][0].content == system.content
    [conv] = chat_svc.list_conversations(ctx, op)
    assert conv.system_prompt == system.content
    assert _system_findings(ctx, turn.outcome.exchange_id) == [
        ("prompt", "system prompt/presidio", "EMAIL_ADDRESS", "redact", None)]
    assert turn.outcome.prompt_action == "redact"


def test_a_flagged_system_prompt_is_stored_redacted_goes_to_review_and_the_reviewer_sees_it(chat, make_user):
    from console.services import review

    ctx, op, spy, use_policy = chat
    use_policy(_policy('[rules.prompt.EMAIL_ADDRESS]\nthreshold = 0.5\naction = "flag"', keep_raw=True))
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING, system_prompt=SYSTEM_PROMPT)
    _run(turn)
    assert "jane.doe@example.com" in spy.calls[-1][0].content  # flag: the model sees it as written
    with ctx.db.session() as s:
        [item] = queue_q.list_queue(s)
        raws = list(s.query(RawText).filter_by(exchange_id=turn.outcome.exchange_id))
        stored = s.scalars(select(Conversation.system_prompt)).one()
    assert "jane.doe@example.com" not in stored and raws == []  # the raw system prompt is never kept
    view = review.item_view(ctx, make_user("rita", "reviewer"), item.id)
    assert view.system_prompt == stored and "<EMAIL_ADDRESS>" in view.system_prompt
    assert ("prompt", "system prompt/presidio", "EMAIL_ADDRESS") in [
        (f.direction, f.detector, f.label) for f in view.findings]


@pytest.mark.parametrize("with_scanners", [True, False], ids=["presidio", "patterns-only"])
def test_an_operators_note_is_stored_with_personal_data_cut(chat, with_scanners):
    ctx, op, spy, use_policy = chat
    if with_scanners:
        use_policy(_policy())
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING)
    _run(turn)
    chat_svc.send_to_review(ctx, op, turn.outcome.exchange_id,
                            "Customer jane.doe@example.com called from +1 212-555-0123 about this\x00")
    with ctx.db.session() as s:
        [item] = queue_q.list_queue(s)
    assert item.note == "Customer <EMAIL_ADDRESS> called from <PHONE_NUMBER> about this"


# --- robustness: a locked database, a full disk, NUL bytes -------------------------------------------------------


def _locked(message="database is locked"):
    return OperationalError("INSERT INTO exchanges ...", {}, sqlite3.OperationalError(message))


def _counts(ctx):
    with ctx.db.session() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t))
                for t in (Exchange, FindingRow, ReviewItem, AuditEvent)}


def test_a_store_that_finds_the_database_locked_is_tried_once_more_and_stored_once(chat, monkeypatch):
    ctx, op, spy, _ = chat
    monkeypatch.setattr(chat_svc, "STORE_RETRY_WAIT_S", 0.01)
    real, calls = chat_q.complete_exchange, []

    def locked_once(session, exchange_id, record):
        calls.append(record)
        if len(calls) == 1:
            raise _locked()
        return real(session, exchange_id, record)

    monkeypatch.setattr(chat_q, "complete_exchange", locked_once)
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING)
    text = _run(turn)
    assert len(calls) == 2 and turn.outcome.saved and turn.outcome.notice is None
    with ctx.db.session() as s:
        [ex] = s.scalars(select(Exchange)).all()
    assert ex.id == turn.outcome.exchange_id and ex.response == text
    assert audit_q.verify_chain(ctx.db).ok


def test_a_full_disk_returns_the_answer_with_a_notice_that_it_was_not_saved(chat, monkeypatch):
    ctx, op, spy, _ = chat
    before = _counts(ctx)
    calls = []

    def disk_full(session, exchange_id, record):
        calls.append(record)
        raise _locked("database or disk is full")

    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING)
    monkeypatch.setattr(chat_q, "complete_exchange", disk_full)
    text = _run(turn)  # no exception: the page keeps the answer
    assert len(calls) == 1  # a full disk is not retried
    assert text and turn.outcome.text == text and not turn.outcome.saved and turn.outcome.exchange_id is None
    assert "disk is full" in turn.outcome.notice and "not in the conversation's history" in turn.outcome.notice
    after = _counts(ctx)
    # Only the prompt, stored before the model was asked, is there: pending, without an answer.
    assert after["exchanges"] == before["exchanges"] + 1 and after["review_items"] == before["review_items"]
    with ctx.db.session() as s:
        ex = chat_q.get_exchange(s, turn.exchange_id)
    assert (ex.status, ex.response) == ("pending", "")
    assert audit_q.verify_chain(ctx.db).ok


@pytest.fixture
def impatient_db(chat):
    """The chat context on a database that waits only 0.2 s for a lock, and a second connection to hold one."""
    ctx = chat[0]
    path = ctx.settings.data_dir / "console.db"
    ctx.db.dispose()
    ctx.db = Database(DbConfig(url=f"sqlite:///{path}", busy_timeout_ms=200))
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    yield holder
    holder.close()
    ctx.db.dispose()


def test_a_database_locked_longer_than_the_retry_keeps_the_answer_unsaved_and_the_store_consistent(
        chat, impatient_db, monkeypatch):
    ctx, op, spy, _ = chat
    monkeypatch.setattr(chat_svc, "STORE_RETRY_WAIT_S", 0.1)
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING)
    impatient_db.execute("BEGIN IMMEDIATE")  # another writer holds the lock past busy timeout and retry
    text = _run(turn)
    impatient_db.execute("ROLLBACK")
    assert text and not turn.outcome.saved and "busy" in turn.outcome.notice
    with ctx.db.session() as s:
        assert [e.status for e in s.scalars(select(Exchange))] == ["pending"]  # the prompt only
    assert audit_q.verify_chain(ctx.db).ok
    # The database is usable again right away.
    again = chat_svc.start_turn(ctx, op, turn.conversation_id, "Hello again", **SAMPLING)
    _run(again)
    assert again.outcome.saved
    with ctx.db.session() as s:
        assert [e.status for e in s.scalars(select(Exchange).order_by(Exchange.id))] == ["pending", "ok"]


def test_a_lock_released_during_the_retry_wait_lets_the_turn_be_stored(chat, impatient_db, monkeypatch):
    ctx, op, spy, _ = chat
    monkeypatch.setattr(chat_svc, "STORE_RETRY_WAIT_S", 1.0)
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING)
    impatient_db.execute("BEGIN IMMEDIATE")
    releasing = threading.Event()

    def release() -> None:
        releasing.set()  # before the lock goes: a turn stored after this waited for it
        impatient_db.execute("ROLLBACK")

    threading.Timer(0.6, release).start()
    text = _run(turn)
    assert releasing.is_set()  # the turn was stored only once the lock was let go (no wall-clock comparison)
    assert turn.outcome.saved and turn.outcome.notice is None
    with ctx.db.session() as s:
        assert chat_q.get_exchange(s, turn.outcome.exchange_id).response == text
    assert audit_q.verify_chain(ctx.db).ok


def test_a_locked_database_at_the_start_of_a_turn_is_a_clear_error_and_nothing_reaches_the_model(
        chat, impatient_db, monkeypatch):
    ctx, op, spy, _ = chat
    monkeypatch.setattr(chat_svc, "STORE_RETRY_WAIT_S", 0.1)
    impatient_db.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageUnavailable, match="busy.*not sent to the model") as raised:
            # Past the access guard (its own read is the access service's business): the turn's first write.
            chat_svc._begin_turn(ctx, op, None, "Hello", **SAMPLING)
    finally:
        impatient_db.execute("ROLLBACK")
    assert isinstance(raised.value, ConsoleError) and spy.calls == []
    assert audit_q.verify_chain(ctx.db).ok


def test_a_nul_byte_at_the_end_of_the_prompt_and_of_the_answer_is_not_stored(chat):
    ctx, op, spy, use_policy = chat
    use_policy(_policy('[rules.prompt.EMAIL_ADDRESS]\nthreshold = 0.5\naction = "flag"', keep_raw=True))
    spy.suffix = "\x00"
    turn = chat_svc.start_turn(ctx, op, None, "My email is jane.doe@example.com\x00", **SAMPLING,
                               system_prompt="Be brief.\x00")
    text = _run(turn)
    assert "\x00" not in text and turn.outcome.saved
    assert spy.calls[-1][0].content == "Be brief." and spy.calls[-1][-1].content == "My email is jane.doe@example.com"
    with ctx.db.session() as s:
        ex = chat_q.get_exchange(s, turn.outcome.exchange_id)
        [raw] = s.query(RawText).filter_by(exchange_id=ex.id).all()
    assert ex.prompt == "My email is <EMAIL_ADDRESS>" and ex.response == text and "\x00" not in raw.text
    assert audit_q.verify_chain(ctx.db).ok


STREAMED_ANSWER = (" Thanks for waiting. Your order shipped today and should arrive on Friday. If it is late, write to "
                   "jane.doe@example.com and quote your order number. Our returns team will call you on "
                   "+44 20 7946 0958 tomorrow. Have a nice day!")


def test_a_streamed_answer_is_scanned_while_it_streams_and_stored_redacted(chat):
    ctx, op, spy, use_policy = chat
    use_policy(_policy(output_rules='[rules.output.EMAIL_ADDRESS]\nthreshold = 0.5\naction = "flag"'))
    spy.suffix = [STREAMED_ANSWER[i:i + 4] for i in range(0, len(STREAMED_ANSWER), 4)]
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING)
    shown = "".join(turn.deltas())
    assert "jane.doe@example.com" in shown  # streamed as it came (stream_then_scan), judged when complete
    assert turn._scan.scanned_chars > 0  # finished sentences were scanned before the last token
    with ctx.db.session() as s:
        ex = chat_q.get_exchange(s, turn.outcome.exchange_id)
        output = [(f.label, f.action) for f in safety_q.list_findings(s, ex.id) if f.direction == "output"]
    assert "jane.doe@example.com" not in ex.response and "7946 0958" not in ex.response
    assert "<EMAIL_ADDRESS>" in ex.response and ex.response.endswith("tomorrow. Have a nice day!")
    assert output.count(("EMAIL_ADDRESS", "flag")) == 1  # seen by overlapping segments, reported once
    assert sum(label == "PHONE_NUMBER" for label, _ in output) == 1
    assert turn.outcome.output_action == "flag"
