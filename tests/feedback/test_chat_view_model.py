"""What the chat page says about an exchange, worked out without Streamlit (console/services/chat_view_model.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from console.services import chat_view_model as vm
from console.services.chat import ExchangeView
from console.services.demo_builds import DemoBuildView
from console.services.feedback import FeedbackView
from console.services.moderation import FindingView


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
