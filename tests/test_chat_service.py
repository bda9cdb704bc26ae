"""One chat turn end to end: real vLLM engine (tiny model), real Presidio, real SQLite; policy in both directions."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
from sqlalchemy import func, select

from console.services import chat as chat_svc
from console.services import moderation
from console.services.errors import InvalidInput, ModelUnavailable, NotFound
from db import audit as audit_q
from db import chat as chat_q
from db import safety as safety_q
from db.review import items as items_q
from db.review import queue as queue_q
from db.tables import AuditEvent, Exchange, RawText, ReviewItem
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

    @property
    def serving(self):
        return self.host.serving

    def status(self):
        return self.host.status()

    def stream_chat(self, messages, sampling, *, request_id=None):
        self.calls.append(list(messages))
        stream = self.host.stream_chat(messages, dataclasses.replace(sampling, ignore_eos=True),
                                       request_id=request_id)
        return stream if self.die_after is None else DyingStream(stream, self.die_after)


class DyingStream:
    """A real stream that fails like a crashed engine after ``n`` deltas (hard to cause for real)."""

    result = None

    def __init__(self, stream, n):
        self.stream, self.n = stream, n

    def __iter__(self):
        for i, delta in enumerate(self.stream):
            if i == self.n:
                self.stream.cancel()
                raise EngineDeadError("The model stopped working. An admin has to restart it.")
            yield delta

    def cancel(self):
        self.stream.cancel()


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
    with ctx.db.session() as s:
        ex = chat_q.get_exchange(s, outcome.exchange_id)
        assert ex.response == "".join(deltas)
        assert ex.model_version == "tiny-test" and ex.output_tokens == SAMPLING["max_tokens"]
        assert 0 <= ex.ttft_ms <= ex.e2e_ms and ex.tokens_per_s > 0
        assert ex.sampling["max_tokens"] == SAMPLING["max_tokens"]
        events = list(audit_q.iter_events(s, action="chat.exchange", object_id=str(ex.id)))
    assert len(events) == 1 and events[0].actor == "olivia"
    assert audit_q.verify_chain(ctx.db).ok


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
    assert isinstance(raised.value.__cause__, EngineDeadError) and len(shown) == 2
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

    # The review item is the last part stored: failing there (the disk filled up) must undo all the others.
    def disk_full(*args, **kwargs):
        raise DiskFull("database or disk is full")

    monkeypatch.setattr(items_q, "create_review_item", disk_full)
    turn = chat_svc.start_turn(ctx, op, turn.conversation_id, EMAIL_PROMPT, **SAMPLING)
    with pytest.raises(DiskFull):
        _run(turn)
    with ctx.db.session() as s:
        assert rows(s) == {"exchanges": 1, "findings": 1, "raw_texts": 1, "review_items": 1}
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == events_before
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
