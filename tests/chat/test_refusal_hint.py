"""What the chat page says under a refused message about the text it puts back in the box."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from console.services.chat_view_model import refusal_hint
from console.services.errors import InvalidInput
from console.services.quotas import QuotaExceeded
from console.services.text import required_text
from engine.errors import PromptTooLongError


def test_a_rate_limit_refusal_says_to_send_again_after_the_reset_not_to_shorten_the_message():
    refusal = QuotaExceeded("Rate limit reached: 1 request per minute", kind="requests_per_minute", limit=1, used=1,
                            resets_at=datetime(2026, 12, 7, 3, 0, tzinfo=UTC))
    hint = refusal_hint(refusal)
    assert "once the limit resets" in hint and "shorten" not in hint


def test_a_message_over_the_character_limit_is_to_be_shortened():
    with pytest.raises(InvalidInput) as raised:
        required_text("x" * 30_001, "the message", 20_000, strip=False)
    assert "shorten it" in refusal_hint(raised.value)


def test_a_prompt_the_models_context_cannot_hold_is_to_be_shortened():
    try:
        raise InvalidInput("The prompt is too long") from PromptTooLongError(900, 512)
    except InvalidInput as exc:
        assert "shorten it" in refusal_hint(exc)


def test_other_refusals_say_to_change_what_the_message_names():
    hint = refusal_hint(InvalidInput("Temperature must be between 0 and 2."))
    assert "shorten" not in hint and "change what the message above names" in hint
