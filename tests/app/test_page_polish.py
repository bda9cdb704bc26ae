"""AppTest of the pages' wording (issue 14): what stored chat text is, dated conversations, never-used user fields,
the policy's name beside its stored revision, the review banner in its own tab and why no raw text is revealed,
the Latency page's throughput caption and the audit filter's placeholders. No engine, no scanners."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages, resources
from console.ui import UiSession
from db import chat as chat_q
from db.chat import TurnRecord
from db.safety import FindingRecord
from tests.conftest import STRONG_PASSWORD, console_env
from tests.review_fixtures import flag

SESSION_KEY = "llm_console_session"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app_env(tmp_path, monkeypatch, ctx, clock):
    clock.now = datetime.now(UTC)  # the pages run on the real clock
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


@pytest.fixture
def policy_in_force(app_env, monkeypatch):
    """A safety stack with the shipped policy (keep_raw_text = false) as stored revision 3, without scanners."""
    from engine.safety.policy import DEFAULT_POLICY_PATH, Policy

    policy = Policy.load(DEFAULT_POLICY_PATH)
    assert policy.keep_raw_text is False
    stack = SimpleNamespace(policy=policy, policy_version=3, notice=None, lock=threading.Lock(),
                            runner=SimpleNamespace(versions={"presidio": "test"}))
    monkeypatch.setattr(resources, "safety_stack", lambda: stack)
    st.cache_resource.clear()
    return policy


def _page(key: str, principal) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / app_pages.PAGE_TABLE[key][3]), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=principal)
    return at


def _texts(elements) -> str:  # noqa: ANN001
    return "\n".join(str(e.value) for e in elements).replace("\\", "")  # shown escaped: \<LOCATION\>


# --- chat ----------------------------------------------------------------------------------------------------------
def _conversation(ctx, owner, prompt: str, updated: datetime, *, label: str | None = None) -> int:
    with ctx.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=owner.user_id, actor=owner.username, title=prompt)
        findings = () if label is None else (
            FindingRecord(direction="prompt", detector="presidio", label=label, score=0.85, action="allow",
                          start=prompt.index("<"), end=prompt.index(">") + 1),)
        chat_q.store_turn(s, TurnRecord(
            conversation_id=conv.id, user_id=owner.user_id, actor=owner.username, model_version="demo-v1",
            prompt=prompt, response="Paris.", prompt_action="allow", output_action="allow", policy_version=1,
            findings=findings))
        conv.updated_at = updated
        return conv.id


def test_the_chat_history_says_what_was_stored_and_conversations_carry_their_date(app_env, make_user):
    op = make_user("olga", "operator")
    first = _conversation(app_env, op, "What is the capital of <LOCATION>?", datetime(2026, 11, 25, 8, 5, tzinfo=UTC),
                          label="LOCATION")
    _conversation(app_env, op, "What is the capital of <LOCATION>?", datetime(2026, 11, 26, 14, 30, tzinfo=UTC))
    plain = _conversation(app_env, op, "How do I reset my password?", datetime(2026, 11, 26, 15, 0, tzinfo=UTC))
    at = _page("chat", op)
    at.session_state[SESSION_KEY].chat.conversation_id = first
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [b.label for b in at.sidebar.button if (b.key or "").startswith("conversation_")]
    same = [label for label in labels if "capital" in label]
    assert len(same) == 2 and len(set(same)) == 2  # the same first question, told apart by the date
    assert any("2026-11-25 08:05 UTC" in label for label in same)
    assert any("2026-11-26 14:30 UTC" in label for label in same)
    captions = _texts(at.caption)
    assert "action: **allow**" in captions or "action: allow" in captions.replace("**", "")
    assert ("Stored with 1 place name (<LOCATION>) replaced (privacy policy: personal data is cut from stored "
            "text, whatever the action); the model saw it as written.") in captions
    # A message stored as written says nothing of the kind.
    at.session_state[SESSION_KEY].chat.conversation_id = plain
    at.run()
    assert "Stored with" not in _texts(at.caption)


def test_a_placeholder_the_scanner_did_not_find_is_not_explained_as_redaction(app_env, make_user):
    op = make_user("olga", "operator")
    typed = _conversation(app_env, op, "What does <LOCATION> mean in my history?", datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    at = _page("chat", op)
    at.session_state[SESSION_KEY].chat.conversation_id = typed
    at.run()
    assert not at.exception
    assert "Stored with" not in _texts(at.caption)


# --- users ---------------------------------------------------------------------------------------------------------
def test_the_users_table_says_never_and_not_locked_instead_of_none(app_env, make_user):
    admin = make_user("boss", "admin")
    at = _page("users", admin)
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    row = table.set_index("username").loc["boss"]
    assert row["last sign-in"] == "never" and row["locked until"] == "not locked" and row["email"] == "-"
    cells = {str(v) for v in table.to_numpy().ravel()}
    assert "None" not in cells and "NaT" not in cells and "nan" not in cells
    assert "never" in _texts(at.caption)


def test_adding_a_user_says_so_after_the_rerun(app_env, make_user):
    admin = make_user("boss", "admin")
    at = _page("users", admin)
    at.run()
    at.text_input(key="new_username").input("newbie")
    at.multiselect(key="new_roles").select("analyst")
    at.text_input(key="new_password").input(STRONG_PASSWORD)
    at.button(key="add_user_submit").click().run()
    assert not at.exception
    assert _texts(at.success) == "Added newbie."
    at.run()
    assert not at.success  # shown once


# --- policy --------------------------------------------------------------------------------------------------------
def test_the_policy_page_names_the_policy_and_its_stored_revision_apart(app_env, make_user, policy_in_force):
    admin = make_user("boss", "admin")
    at = _page("policy", admin)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert "Stored version" not in metrics
    assert metrics["Policy in force"] == policy_in_force.version
    assert f"Policy '{policy_in_force.version}' (stored revision 3)" in _texts(at.caption)


# --- review --------------------------------------------------------------------------------------------------------
def test_the_review_banner_shows_in_its_own_tab_once(app_env, make_user):
    op, alice = make_user("olga", "operator"), make_user("alice", "reviewer")
    item = flag(app_env, op)
    at = _page("review", alice)
    at.run()
    at.button(key="take_next").click().run()
    assert not at.exception
    queue, second, quality = at.tabs
    assert f"Took item {item}" in _texts(queue.success)
    assert not second.success and not quality.success
    at.run()  # the next click anywhere: the banner is gone
    assert "Took item" not in _texts(at.success)


def test_the_review_page_says_why_there_is_no_raw_text_to_reveal(app_env, make_user, policy_in_force):
    op, alice = make_user("olga", "operator"), make_user("alice", "reviewer")
    flag(app_env, op)  # no raw text kept
    at = _page("review", alice)
    at.run()
    at.button(key="take_next").click().run()
    assert not at.exception
    assert not [b for b in at.button if b.key == "reveal_submit"]
    assert ("The policy keeps no raw text (keep_raw_text = false), so there is nothing to reveal."
            in _texts(at.caption))


def test_without_the_policy_at_hand_the_review_page_still_says_why(app_env, make_user):
    op, alice = make_user("olga", "operator"), make_user("alice", "reviewer")
    flag(app_env, op)
    at = _page("review", alice)
    at.run()
    at.button(key="take_next").click().run()
    assert not at.exception
    assert "No raw text is kept for this item, so there is nothing to reveal" in _texts(at.caption)


# --- audit and latency ---------------------------------------------------------------------------------------------
def test_the_audit_filters_show_placeholders_not_values_and_export_is_one_button(app_env, make_user):
    at = _page("audit", make_user("ana", "analyst"))
    at.run()
    prefix = at.text_input(key="audit_action_prefix")
    assert prefix.value == "" and prefix.placeholder == "any action" and "auth." not in prefix.placeholder
    exact = at.selectbox(key="audit_action")
    assert exact.value is None and exact.placeholder == "any action"
    assert at.button(key="audit_export_run")  # one click writes it; the console's route then streams it


def test_the_throughput_charts_say_what_they_count(app_env, make_user):
    from tests.latency.test_latency import _seed

    op = make_user("olga", "operator")
    _seed(app_env, datetime.now(UTC))
    at = _page("dashboard", op)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Throughput" in [h.value for h in at.subheader]
    captions = _texts(at.caption)
    assert "divided by its length in minutes or seconds" in captions and "Not one answer's speed" in captions
