"""What the chat page says about an exchange, worked out without Streamlit (console/services/chat_view_model.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from console.services import chat_view_model as vm
from console.services.chat import ExchangeView
from console.services.demo_builds import DemoBuildView
from console.services.feedback import FeedbackView
from console.services.moderation import FindingView
from console.textsafe import escape_markdown as esc


def _ex(**changes) -> ExchangeView:
    fields = {"id": 1, "prompt": "mail <EMAIL_ADDRESS> or <EMAIL_ADDRESS> in <LOCATION>", "response": "ok",
              "status": "ok", "error": None, "model_version": "demo-v1", "ttft_ms": 1234.4, "tokens_per_s": 55.55,
              "output_tokens": 12, "prompt_action": "redact",
              "findings": (FindingView("prompt", "presidio", "EMAIL_ADDRESS", 0.9, 5, 20, "redact"),
                           FindingView("prompt", "presidio", "LOCATION", 0.6, 30, 36, "allow"),
                           FindingView("prompt", "detoxify", "toxicity", 0.05, None, None, "allow"))}
    fields.update(changes)
    return ExchangeView(**fields)


def test_the_status_line_names_version_times_speed_tokens_and_a_status_other_than_ok():
    assert vm.status_line(_ex()) == "demo-v1 · first token 1,234 ms · 55.5 tokens/s · 12 tokens"
    assert vm.status_line(_ex(model_version=None, ttft_ms=None, tokens_per_s=None, output_tokens=None,
                              status="aborted")) == "no model · aborted"


def test_the_findings_line_leaves_out_low_scores_that_triggered_nothing():
    line = vm.findings_line(_ex(), "prompt")
    assert line == vm.FindingsLine("EMAIL_ADDRESS 0.90, LOCATION 0.60", "redact")
    assert vm.findings_line(_ex(), "output") is None


def test_the_stored_text_note_counts_placeholders_by_kind_and_says_what_the_model_saw():
    assert vm.stored_note(_ex(), "prompt") == (
        "Stored with 2 email addresses (<EMAIL_ADDRESS>) and 1 place name (<LOCATION>) replaced (privacy policy: "
        "personal data is cut from stored text, whatever the action); the model saw it redacted too.")
    assert vm.stored_note(_ex(prompt="plain"), "prompt") is None


def test_only_answers_take_thumbs_and_the_thumbs_map_to_plus_and_minus_one():
    assert [vm.can_rate(_ex(status=s)) for s in ("ok", "aborted", "blocked", "error", "pending")] == \
        [True, True, False, False, False]
    at = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
    down = FeedbackView(1, -1, "wrong shop", at)
    assert (vm.thumbs_of(down), vm.thumbs_of(FeedbackView(1, 1, None, at)), vm.thumbs_of(None)) == (0, 1, None)
    assert vm.THUMBS_TO_RATING == {0: -1, 1: 1}
    assert vm.feedback_caption(down) == ("You rated this answer thumbs down (2026-12-07 09:30 UTC); your reason: "
                                         "wrong shop")
    assert vm.feedback_caption(None) is None


@pytest.mark.parametrize("state,level,fragment", [
    ("building", "info", "is being built: 45% (training step 1 of 2)"),
    ("built", "info", "is built; the engine starts loading it"),
    ("failed", "error", "failed: disk \\*full\\*"),
    ("interrupted", "warning", "stopped at 45%: its process is gone"),
])
def test_the_build_notice_says_how_far_the_build_is_with_values_escaped(state, level, fragment):
    build = DemoBuildView("demo_v1", state, 0.45, "disk *full*", None, None)
    if state == "building":
        build = DemoBuildView("demo_v1", state, 0.45, "step 1 of 2", None, None)
    got_level, text = vm.build_notice(build)
    assert got_level == level and fragment in text and "demo\\_v1" in text


def test_an_answer_that_is_not_one_is_replaced_by_a_notice_and_only_a_shown_one_is_sent_to_review_or_noted():
    assert vm.answer_notice(_ex()) is None and vm.answer_was_shown(_ex()) and vm.can_send_to_review(_ex())
    error = vm.answer_notice(_ex(status="error", error="out of *memory*"))
    assert error == vm.Notice("error", "The model failed to answer: out of \\*memory\\*")
    assert [vm.answer_notice(_ex(status=s)).level for s in ("blocked", "interrupted", "pending")] == \
        ["warning", "warning", "info"]
    assert not vm.can_send_to_review(_ex(status="pending"))
    assert [vm.answer_was_shown(_ex(status=s)) for s in ("blocked", "error", "aborted")] == [False, False, True]
    assert (vm.review_status(_ex(review_status="none")), vm.review_status(_ex(review_status="pending"))) == \
        (None, "pending")


def test_a_reason_is_sent_only_when_typed_and_the_thanks_say_whether_a_reviewer_reads_it():
    from console.services.feedback import FeedbackResult

    at = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
    down = FeedbackView(1, -1, None, at)
    assert vm.asks_reason(down) and not vm.asks_reason(FeedbackView(1, 1, None, at)) and not vm.asks_reason(None)
    assert vm.reason_problem("  \n") == vm.NO_REASON and vm.reason_problem("wrong order") is None
    assert vm.reason_thanks(FeedbackResult(down, True, 7)) == "Thank you: a reviewer will look at it."
    assert vm.reason_thanks(FeedbackResult(down, True)) == "Thank you: your reason is saved."
    assert (vm.rating_of(0), vm.rating_of(1), vm.rating_of(None)) == (-1, 1, None)


def test_the_serving_notice_says_why_chat_is_paused_and_nothing_once_the_model_is_ready():
    from console.services.serving import ServingView

    assert vm.serving_notice(ServingView("demo-v1", "ready", 1.0, "")) is None
    none = ServingView(None, "none", 0.0, "")
    assert vm.waits_for_build(none) and vm.serving_notice(none) == vm.Notice("warning", vm.NO_MODEL)
    loading = vm.serving_notice(ServingView("demo_v2", "loading", 0.4, "weights"))
    assert loading == vm.Notice("info", "The model demo\\_v2 is loading: weights", 0.4)
    failed = vm.serving_notice(ServingView("demo-v1", "failed", 0.0, "", error="CUDA out of memory"))
    assert failed == vm.Notice("error", "The model demo\\-v1 failed: CUDA out of memory. Chat is paused; ask an admin.")


def test_a_conversation_button_escapes_its_title_and_marks_the_open_conversation():
    from console.services.chat import ConversationView

    at = datetime(2026, 12, 7, 9, 30)  # SQLite gives naive UTC
    button = vm.conversation_button(ConversationView(7, "*refund* [link](x)", None, at), open_id=7)
    assert button == vm.ConversationButton(f"{esc('*refund* [link](x)')} · 2026-12-07 09:30 UTC",
                                           "Conversation 7; last message 2026-12-07 09:30 UTC.", "primary")
    untitled = vm.conversation_button(ConversationView(8, "", None, None), open_id=7)
    assert (untitled.label, untitled.type) == ("Conversation 8 · no date", "tertiary")


def test_the_quota_line_shows_only_limits_that_apply():
    from console.services.quotas import EffectiveLimit, UserQuota

    def quota(rpm, tpd):
        return UserQuota(1, "paula", ("operator",), EffectiveLimit("requests_per_minute", rpm, "override"),
                         EffectiveLimit("tokens_per_day", tpd, "no role"), 2, 1500)

    assert vm.quota_caption(None) is None and vm.quota_caption(quota(None, None)) is None
    line = vm.quota_caption(quota(5, None))
    assert line == ":material/speed: " + esc("Your limits: 5 requests per minute (2 sent this minute)")


def test_the_captions_under_a_message_say_findings_what_was_stored_and_the_review_state():
    prompt = vm.prompt_captions(_ex())
    assert [c.text for c in prompt] == [
        f":material/shield: prompt findings: {esc('EMAIL_ADDRESS 0.90, LOCATION 0.60')} · action: **redact**",
        esc(vm.stored_note(_ex(), "prompt"))]
    assert prompt[0].help is None and prompt[1].help == vm.STORED_NOTE_HELP
    answer = vm.answer_captions(_ex(review_status="pending"))
    assert [c.text for c in answer] == [esc("demo-v1 · first token 1,234 ms · 55.5 tokens/s · 12 tokens"),
                                        ":material/flag: review: pending"]


@pytest.mark.parametrize("status,noted", [("ok", True), ("aborted", True), ("blocked", False), ("error", False)])
def test_what_was_stored_of_an_answer_is_noted_only_when_the_user_saw_it(status, noted):
    ex = _ex(status=status, response="call <PHONE_NUMBER>", output_action="allow",
             findings=(FindingView("output", "presidio", "PHONE_NUMBER", 0.8, 5, 9, "allow"),))
    texts = [c.text for c in vm.answer_captions(ex)]
    assert f":material/shield: output findings: {esc('PHONE_NUMBER 0.80')} · action: **allow**" in texts
    assert (esc(vm.stored_note(ex, "output")) in texts) is noted
    assert len(texts) == (3 if noted else 2)


def test_the_answer_shows_as_written_or_what_stands_in_its_place():
    assert vm.answer(_ex(response="**bold** <b>")) == vm.Notice("markdown", "\\*\\*bold\\*\\* \\<b\\>")
    assert vm.answer(_ex(response="")) == vm.Notice("markdown", "_(no text)_")
    assert vm.answer(_ex(status="blocked")) == vm.answer_notice(_ex(status="blocked"))
    rated = FeedbackView(1, -1, "it is *wrong*", datetime(2026, 12, 7, 9, 30, tzinfo=UTC))
    assert [c.text for c in vm.feedback_captions(rated)] == [esc(vm.feedback_caption(rated))]
    assert "\\*wrong\\*" in vm.feedback_captions(rated)[0].text
    assert vm.feedback_captions(None) == []


def test_a_console_waiting_for_its_build_says_how_the_build_goes_with_a_bar_while_it_builds():
    from console.services.serving import ServingView

    nothing = ServingView(None, "none", 0.0, "")
    building = DemoBuildView("demo_v1", "building", 0.45, "step 1 of 2", None, None)
    failed = DemoBuildView("demo_v1", "failed", 0.45, "disk full", None, None)
    assert vm.serving_notice(nothing, building) == vm.Notice("info", vm.build_notice(building)[1], 0.45)
    assert vm.serving_notice(nothing, failed) == vm.Notice("error", vm.build_notice(failed)[1], None)
    assert vm.serving_notice(nothing, None) == vm.Notice("warning", vm.NO_MODEL)
    # A model that is up says nothing about a build that may still be on record.
    assert vm.serving_notice(ServingView("demo-v1", "ready", 1.0, ""), building) is None
