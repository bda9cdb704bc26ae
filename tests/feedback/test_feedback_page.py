"""AppTest of the thumbs under the Chat page's answers: given, read back after navigation, a thumbs-down's reason
sent (and the box emptied), a reason too long refused with the text kept; no thumbs on an answer that is not one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from console import ui
from db import chat as chat_q
from db.chat import TurnRecord
from db.tables import Feedback, ReviewItem
from tests.conftest import console_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def page_env(ctx, clock, tmp_path, monkeypatch):
    clock.now = datetime.now(UTC)
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


def _conversation(ctx, owner) -> tuple[int, int, int]:
    with ctx.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=owner.user_id, actor=owner.username)
        ok = chat_q.store_turn(s, TurnRecord(conversation_id=conv.id, user_id=owner.user_id, actor=owner.username,
                                             model_version="demo-v1", prompt="Where is my parcel?",
                                             response="Refunds take 90 days.")).id
        blocked = chat_q.store_turn(s, TurnRecord(conversation_id=conv.id, user_id=owner.user_id,
                                                  actor=owner.username, model_version="demo-v1", prompt="bad words",
                                                  status="blocked", prompt_action="block")).id
        return conv.id, ok, blocked


def _open(principal, conversation_id: int) -> AppTest:
    at = AppTest.from_file(str(ROOT / "console" / "views" / "chat.py"), default_timeout=60)
    at.session_state["llm_console_session"] = ui.UiSession(principal=principal, last_activity=None)
    at.query_params["conversation"] = str(conversation_id)
    return at.run()


def _stored(ctx) -> list[tuple[int, int, str | None]]:
    with ctx.db.session(readonly=True) as s:
        return [(f.exchange_id, f.rating, f.reason) for f in s.scalars(select(Feedback))]


def test_thumbs_down_with_a_reason_is_stored_sent_to_review_and_read_back_after_navigation(page_env, make_user):
    olga = make_user("olga", "operator")
    conv, ok, blocked = _conversation(page_env, olga)
    at = _open(olga, conv)
    assert not at.exception, [e.value for e in at.exception]
    assert [f.key for f in at.feedback] == [f"feedback_{ok}"]  # the blocked prompt has no answer to rate
    assert at.feedback(key=f"feedback_{ok}").value is None
    at.feedback(key=f"feedback_{ok}").set_value(0).run()  # thumbs down
    assert not at.exception
    assert _stored(page_env) == [(ok, -1, None)]
    assert any("thumbs down" in c.value for c in at.caption)
    at.text_input(key=f"feedback_reason_{ok}").set_value("It promises a refund we never give")
    at.button(key=f"feedback_send_{ok}").click().run()
    assert not at.exception
    assert _stored(page_env) == [(ok, -1, "It promises a refund we never give")]
    assert at.text_input(key=f"feedback_reason_{ok}").value == ""  # the form reset
    with page_env.db.session(readonly=True) as s:
        assert [(i.reason, i.exchange_id) for i in s.scalars(select(ReviewItem))] == [("feedback", ok)]
    # Another page and back (a fresh session): the rating comes from the database.
    again = _open(olga, conv)
    assert again.feedback(key=f"feedback_{ok}").value == 0
    assert any("your reason\\: It promises a refund" in c.value for c in again.caption)
    # Thumbs up replaces it; deselecting takes it back.
    again.feedback(key=f"feedback_{ok}").set_value(1).run()
    assert _stored(page_env) == [(ok, 1, None)]
    again.feedback(key=f"feedback_{ok}").set_value(None).run()
    assert _stored(page_env) == []


def test_a_reason_over_the_limit_is_refused_and_comes_back_in_the_box(page_env, make_user):
    olga = make_user("olga", "operator")
    conv, ok, _ = _conversation(page_env, olga)
    at = _open(olga, conv)
    at.feedback(key=f"feedback_{ok}").set_value(0).run()
    too_long = "x" * 1001
    at.text_input(key=f"feedback_reason_{ok}").set_value(too_long)
    at.button(key=f"feedback_send_{ok}").click().run()
    assert not at.exception
    assert any("1,001 characters; the limit is 1,000" in e.value for e in at.error)
    assert at.text_input(key=f"feedback_reason_{ok}").value == too_long
    assert _stored(page_env) == [(ok, -1, None)]
