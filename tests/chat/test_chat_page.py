"""AppTest of the Chat page with the real engine: the model loads, an answer streams in and is stored."""

from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages, resources
from console.services.access import Principal
from console.ui import UiSession
from db import chat as chat_q
from tests.conftest import console_env

SESSION_KEY = "llm_console_session"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir, migrated_db_file):
    """Console resources over a fresh database whose live model is the tiny model; one engine per module."""
    import shutil

    from console.services import registry
    from console.services.context import AppContext
    from console.settings import Settings
    from db.config import DbConfig
    from db.database import Database

    data = tmp_path_factory.mktemp("chat-page")
    env = console_env(data, LLM_CONSOLE_ENGINE_AUTOSTART="true", LLM_CONSOLE_DEFAULT_MODEL="tiny-page",
                      LLM_CONSOLE_KV_CACHE_GIB="0.25")
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    shutil.copy(migrated_db_file, data / "console.db")
    settings = Settings.from_env()
    ctx = AppContext(settings, Database(DbConfig(settings.database_url)))
    registry.register(ctx, Principal.shell(ctx), name="tiny-page", source=str(tiny_model_dir), revision=None, dtype="float32",
                            max_model_len=512, engine_args={}, description="test")
    st.cache_resource.clear()
    yield ctx
    host = resources.engine_host()
    if host is not None:
        host.shutdown()
    st.cache_resource.clear()
    mp.undo()


def _chat_page(principal) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "chat.py"), default_timeout=120)
    at.session_state[SESSION_KEY] = UiSession(principal=principal)
    return at


def test_the_chat_page_says_the_model_is_loading_then_streams_and_stores_an_answer(served):
    from console.services import users as users_svc
    from console.services.access import Principal

    view = users_svc.add_user(served, Principal.shell(served), "paula", "correct horse battery staple", ["operator"])
    principal = Principal(view.id, view.username, frozenset(view.roles))
    at = _chat_page(principal)
    at.run()
    assert not at.exception
    host = resources.engine_host()
    assert host is not None
    if host.status().state == "loading":
        assert at.chat_input(key="chat_prompt").disabled
        assert any("loading" in i.value for i in at.info)
    host.wait_ready(timeout=180)
    from console.services import serving as serving_svc

    serving = serving_svc.serving_status(resources.app_context())
    assert (serving.state, serving.model_version, serving.error) == ("ready", "tiny-page", None)
    at.run()
    assert at.session_state[SESSION_KEY].chat.engine_was_ready
    assert not at.chat_input(key="chat_prompt").disabled
    at.slider(key="temperature").set_value(0.0)
    at.number_input(key="max_tokens").set_value(24)
    at.chat_input(key="chat_prompt").set_value("How do I reset my password?").run()
    assert not at.exception, [e.value for e in at.exception]
    with served.db.session() as s:
        [conv] = chat_q.list_conversations(s, principal.user_id)
        [ex] = chat_q.list_exchanges(s, conv.id)
    assert ex.status == "ok" and ex.model_version == "tiny-page" and ex.response
    assert ex.sampling["temperature"] == 0.0 and ex.sampling["max_tokens"] == 24
    # After the stream the page shows the stored exchange with its metrics line.
    assert at.session_state[SESSION_KEY].chat.conversation_id == conv.id
    captions = " ".join(c.value for c in at.caption).replace("\\", "")  # shown escaped: tiny\-page
    assert "tiny-page" in captions and "tokens/s" in captions and "first token" in captions
    assert len(at.chat_message) == 2


def test_a_prompt_left_pending_or_interrupted_is_not_shown_as_an_answer(served):
    from datetime import UTC, datetime

    from console.services import users as users_svc
    from console.services.access import Principal

    view = users_svc.add_user(served, Principal.shell(served), "pia", "correct horse battery staple", ["operator"])
    principal = Principal(view.id, view.username, frozenset(view.roles))
    with served.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=principal.user_id, actor=principal.username).id

        def begin(prompt: str, **extra) -> int:
            return chat_q.begin_exchange(s, chat_q.PendingRecord(
                conversation_id=conv, user_id=principal.user_id, actor=principal.username, model_version="tiny-page",
                prompt=prompt, **extra)).id

        stopped = begin("Asked before the console stopped", created_at=datetime(2020, 1, 1, tzinfo=UTC))
        assert chat_q.mark_interrupted(s, datetime(2021, 1, 1, tzinfo=UTC)) == [stopped]
        begin("Still being answered")
    at = _chat_page(principal)
    at.session_state[SESSION_KEY].chat.conversation_id = conv
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning]
    infos = [i.value for i in at.info]
    assert any("console stopped while the model was answering" in w for w in warnings)
    assert any("no answer stored" in i and "still answering" in i for i in infos)
    markdown = " ".join(m.value for m in at.markdown)
    assert "Asked before the console stopped" in markdown and "Still being answered" in markdown
    assert "(no text)" not in markdown  # neither is shown as an (empty) answer
    assert len(at.chat_message) == 4


# --- issue 19: review marker at once, refused input kept, the open conversation in the address ------------------


def _operator(ctx, name: str):
    from console.services import users as users_svc
    from console.services.access import Principal

    view = users_svc.add_user(ctx, Principal.shell(ctx), name, "correct horse battery staple", ["operator"])
    return Principal(view.id, view.username, frozenset(view.roles))


def _answered_conversation(ctx, principal, prompt: str = "Where is my parcel?") -> tuple[int, int]:
    with ctx.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=principal.user_id, actor=principal.username, title=prompt)
        exchange = chat_q.store_turn(s, chat_q.TurnRecord(
            conversation_id=conv.id, user_id=principal.user_id, actor=principal.username, model_version="tiny-page",
            prompt=prompt, response="It is on its way."))
        return conv.id, exchange.id


def _conversations(ctx, principal) -> list[int]:
    with ctx.db.session(readonly=True) as s:
        return [c.id for c in chat_q.list_conversations(s, principal.user_id)]


def _ready_page(principal) -> AppTest:
    resources.engine_host().wait_ready(timeout=180)
    at = _chat_page(principal)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.chat_input(key="chat_prompt").disabled
    return at


def test_a_message_sent_to_review_shows_its_marker_at_once_and_a_second_send_makes_no_second_item(served):
    from sqlalchemy import select

    from db.tables import ReviewItem

    principal = _operator(served, "rhea")
    conv, exchange_id = _answered_conversation(served, principal)
    at = _chat_page(principal)
    at.session_state[SESSION_KEY].chat.conversation_id = conv
    at.run()
    assert not any("review: pending" in c.value for c in at.caption)
    at.text_area(key=f"review_note_{exchange_id}").input("The parcel answer is made up.")
    [send] = [b for b in at.button if b.label == "Send"]
    send.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("review: pending" in c.value for c in at.caption)  # in the run of the click, not the next one
    at.text_area(key=f"review_note_{exchange_id}").input("It also names the wrong shop.")
    [send] = [b for b in at.button if b.label == "Send"]
    send.click().run()
    with served.db.session(readonly=True) as s:
        notes = [i.note for i in s.scalars(select(ReviewItem).where(ReviewItem.exchange_id == exchange_id))]
    assert notes == ["The parcel answer is made up.\n\nIt also names the wrong shop."]


def test_a_first_prompt_too_long_for_the_model_is_refused_with_its_limit_kept_in_the_box_and_no_conversation(served):
    principal = _operator(served, "rory")
    at = _ready_page(principal)
    too_long = "refund " * 600  # 4,200 characters: far over the tiny model's 512 tokens, well under 20,000
    at.chat_input(key="chat_prompt").set_value(too_long).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = " ".join(e.value for e in at.error)
    assert "too long" in errors and "holds 512" in errors  # the limit, in tokens
    box = at.chat_input(key="chat_prompt")
    assert box.proto.set_value and box.proto.value == too_long  # the text is back in the box
    assert _conversations(served, principal) == []  # no empty conversation left in the sidebar
    assert at.session_state[SESSION_KEY].chat.conversation_id is None
    at.run()  # said once: the next run shows neither the error nor the text again
    assert not at.error and not at.chat_input(key="chat_prompt").proto.set_value


def test_a_pasted_prompt_over_the_character_limit_is_refused_with_the_limit_and_kept(served):
    principal = _operator(served, "rosa")
    at = _ready_page(principal)
    box = at.chat_input(key="chat_prompt")
    assert box.proto.max_chars == 0  # no browser limit: a box with one drops a longer paste whole and says nothing
    assert "20,000 characters" in box.placeholder
    pasted = "r" * 25_000
    box.set_value(pasted).run()
    assert any("25,000 characters; the limit is 20,000" in e.value for e in at.error)
    assert at.chat_input(key="chat_prompt").proto.value == pasted
    assert _conversations(served, principal) == []


def test_a_reload_or_a_link_reopens_the_conversation_in_the_address_and_only_the_users_own(served):
    principal = _operator(served, "ruth")
    other = _operator(served, "saul")
    mine, _ = _answered_conversation(served, principal, "Where is my parcel, Ruth?")
    theirs, _ = _answered_conversation(served, other, "Saul's private question")
    at = _chat_page(principal)  # a new browser session (a reload): nothing remembered but the address
    at.query_params["conversation"] = str(mine)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state[SESSION_KEY].chat.conversation_id == mine
    assert any("Where is my parcel, Ruth?" in m.value for m in at.markdown)
    at = _chat_page(principal)
    at.query_params["conversation"] = str(theirs)
    at.run()
    assert at.session_state[SESSION_KEY].chat.conversation_id is None
    assert any("not yours" in e.value for e in at.error)
    assert not any("Saul" in m.value for m in at.markdown)


def test_a_system_prompt_over_its_limit_is_refused_with_the_limit_and_both_texts_are_kept(served):
    principal = _operator(served, "sybil")
    at = _ready_page(principal)
    area = at.text_area(key="system_prompt")
    assert area.proto.max_chars == 0 and "4,000 characters" in area.help  # no browser limit: it is said
    area.input("s" * 5_000)
    at.chat_input(key="chat_prompt").set_value("Where is my parcel?").run()
    assert [e.value for e in at.error] == ["The system prompt has 5,000 characters; the limit is 4,000\\."]
    assert at.text_area(key="system_prompt").value == "s" * 5_000
    assert at.chat_input(key="chat_prompt").proto.value == "Where is my parcel?"
    assert _conversations(served, principal) == []
