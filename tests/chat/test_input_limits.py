"""AppTest: a value over a field's limit is refused with the limit and stays in its box (issue 19 item 7).

A browser box with ``max_chars`` drops a longer paste whole and says nothing (a 70-character username was silently
emptied), so the username boxes have no browser limit: they say it, and the service refuses a longer value with a
message that says it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.ui import UiSession
from db import users as users_q
from tests.conftest import STRONG_PASSWORD, console_env

ROOT = Path(__file__).resolve().parents[2]
SESSION_KEY = "llm_console_session"
LONG_NAME = "a" * 70


@pytest.fixture
def app_env(tmp_path, monkeypatch, migrated_db_file, ctx):
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


def _users_page(admin) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "users.py"), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=admin)
    at.run()
    return at


def _usernames(ctx) -> set[str]:
    with ctx.db.session(readonly=True) as s:
        return {u.username for u in users_q.list_users(s)}


def test_a_70_character_username_on_the_users_page_is_refused_with_its_limit_and_kept(app_env, make_user):
    admin = make_user("boss", "admin")
    at = _users_page(admin)
    box = at.text_input(key="new_username")
    assert box.proto.max_chars == 0 and "64 characters" in box.help
    box.input(LONG_NAME)
    at.multiselect(key="new_roles").select("analyst")
    at.text_input(key="new_password").input(STRONG_PASSWORD)
    at.button(key="add_user_submit").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("at most 64 characters; this one has 70" in e.value for e in at.error)
    assert at.text_input(key="new_username").value == LONG_NAME  # kept, with the rest of the form
    assert at.multiselect(key="new_roles").value == ["analyst"]
    assert _usernames(app_env) == {"boss"}
    # Corrected, it is added, and the form opens empty for the next one.
    at.text_input(key="new_username").input("a" * 64)
    at.button(key="add_user_submit").click().run()
    assert "a" * 64 in _usernames(app_env)
    assert at.text_input(key="new_username").value == "" and at.multiselect(key="new_roles").value == []


def test_a_70_character_username_at_sign_in_is_refused_with_its_limit_and_kept(app_env, make_user):
    make_user("olivia", "operator")
    at = AppTest.from_file(str(ROOT / "console" / "app.py"), default_timeout=60)
    at.run()
    box = at.text_input(key="login_username")
    assert box.proto.max_chars == 0 and "64 characters" in box.help
    box.input(LONG_NAME)
    at.text_input(key="login_password").input(STRONG_PASSWORD)
    at.button(key="login_submit").click().run()
    assert any("at most 64 characters" in e.value for e in at.error)
    assert at.text_input(key="login_username").value == LONG_NAME
    assert at.session_state[SESSION_KEY].principal is None
