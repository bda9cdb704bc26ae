"""AppTest: every page for every role (allowed pages render, others refuse on the server), and the login flow."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.services import access
from console.ui import UiSession
from db import audit as audit_q
from engine.types import HostStatus
from tests.conftest import STRONG_PASSWORD, console_env

ROLES = access.ALL_ROLES
ROOT = Path(__file__).resolve().parent.parent
SESSION_KEY = "llm_console_session"


@pytest.fixture
def app_env(tmp_path, monkeypatch, migrated_db_file, ctx):
    """Point the console's resources at this test's database (the same file `ctx` uses)."""
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


def _page(key: str) -> AppTest:
    return AppTest.from_file(str(app_pages.PAGES_DIR / app_pages.PAGE_TABLE[key][3]), default_timeout=60)


CASES = [(page, role) for page in app_pages.PAGE_TABLE for role in ROLES]


@pytest.mark.parametrize("page,role", CASES, ids=[f"{p}-{r}" for p, r in CASES])
def test_every_page_for_every_role(app_env, make_user, page, role):
    principal = make_user(f"user-{role}", role)
    at = _page(page)
    at.session_state[SESSION_KEY] = UiSession(principal=principal)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    refused = [e.value for e in at.error if "do not allow" in e.value]
    if access.allowed({role}, access.PAGES[page]):
        assert refused == []
        assert at.title and at.title[0].value
    else:
        assert refused, f"{page} rendered for {role}"
        with app_env.db.session() as s:
            denied = list(audit_q.iter_events(s, action="access.denied", actor=principal.username))
        assert denied and denied[-1].details["action"] == access.PAGES[page]


def test_a_page_opened_without_signing_in_asks_to_sign_in(app_env):
    at = _page("chat")
    at.run()
    assert any("sign in" in w.value.lower() for w in at.warning)
    assert not at.chat_input


def test_login_flow_signs_in_and_shows_only_the_users_pages(app_env, make_user):
    make_user("olivia", "operator")
    at = AppTest.from_file(str(ROOT / "console" / "app.py"), default_timeout=60)
    at.run()
    assert at.text_input(key="login_username")
    at.text_input(key="login_username").input("olivia")
    at.text_input(key="login_password").input("wrong password here")
    at.button(key="login_submit").click()
    at.run()
    assert any("Wrong username or password" in e.value for e in at.error)
    assert at.session_state[SESSION_KEY].principal is None
    at.text_input(key="login_password").input(STRONG_PASSWORD)
    at.button(key="login_submit").click()
    at.run()
    assert not at.exception
    assert at.session_state[SESSION_KEY].principal.username == "olivia"
    assert any("olivia" in m.value for m in at.sidebar.markdown)


def test_signing_out_ends_the_session_and_is_audited(app_env, make_user):
    principal = make_user("olivia", "operator")
    at = AppTest.from_file(str(ROOT / "console" / "app.py"), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=principal)
    at.run()
    at.button(key="logout").click()
    at.run()
    assert at.session_state[SESSION_KEY].principal is None
    with app_env.db.session() as s:
        assert [e.action for e in audit_q.iter_events(s, actor="olivia")][-1] == "auth.logout"


def test_a_disabled_users_open_page_signs_them_out_at_the_next_click(app_env, make_user):
    from console.services import users as users_svc

    admin = make_user("boss", "admin")
    op = make_user("op", "operator")
    at = _page("dashboard")
    at.session_state[SESSION_KEY] = UiSession(principal=op)
    at.run()
    assert not at.error
    users_svc.set_disabled(app_env, admin, op.user_id, True)
    at.run()
    assert at.session_state[SESSION_KEY].principal is None
    assert "no longer active" in (at.session_state[SESSION_KEY].flash or "")


def test_admin_adds_a_user_on_the_users_page(app_env, make_user):
    admin = make_user("boss", "admin")
    at = _page("users")
    at.session_state[SESSION_KEY] = UiSession(principal=admin)
    at.run()
    at.text_input(key="new_username").input("newbie")
    at.multiselect(key="new_roles").select("analyst")
    at.text_input(key="new_password").input(STRONG_PASSWORD)
    at.button(key="add_user_submit").click()
    at.run()
    assert not at.exception
    from db import users as users_q

    with app_env.db.session() as s:
        user = users_q.get_user_by_username(s, "newbie")
        assert user is not None and user.roles == frozenset({"analyst"})


def test_users_page_shows_a_clear_error_for_a_short_password_and_creates_nothing(app_env, make_user):
    admin = make_user("boss", "admin")
    at = _page("users")
    at.session_state[SESSION_KEY] = UiSession(principal=admin)
    at.run()
    at.text_input(key="new_username").input("newbie")
    at.multiselect(key="new_roles").select("analyst")
    at.text_input(key="new_password").input("short")
    at.button(key="add_user_submit").click()
    at.run()
    assert any("at least" in e.value for e in at.error)
    from db import users as users_q

    with app_env.db.session() as s:
        assert users_q.get_user_by_username(s, "newbie") is None


class _HostIn:
    """A stand-in engine host at our own seam: only the status the pages read through the models service."""

    def __init__(self, status: HostStatus) -> None:
        self._status = status

    def status(self) -> HostStatus:
        return self._status


def _serve(monkeypatch, status: HostStatus | None) -> None:
    from console import resources

    monkeypatch.setattr(resources, "engine_host", lambda: None if status is None else _HostIn(status))


def test_the_chat_page_without_a_served_model_says_so_and_names_no_missing_control(app_env, make_user):
    at = _page("chat")
    at.session_state[SESSION_KEY] = UiSession(principal=make_user("olivia", "operator"))
    at.run()
    assert not at.exception
    assert [w.value for w in at.warning] == ["No model is being served; ask an admin."]
    assert at.chat_input(key="chat_prompt").disabled


@pytest.mark.parametrize("state", ["failed", "dead"])
def test_the_chat_page_shows_why_the_model_cannot_answer(app_env, make_user, monkeypatch, state):
    _serve(monkeypatch, HostStatus(state, "tiny-v2", "tiny-v2 failed to load", error="out of memory"))
    at = _page("chat")
    at.session_state[SESSION_KEY] = UiSession(principal=make_user("olivia", "operator"))
    at.run()
    assert not at.exception
    [shown] = [e.value for e in at.error]
    assert "failed" in shown and "out of memory" in shown and "Models page" not in shown
    assert at.chat_input(key="chat_prompt").disabled


def test_the_chat_page_shows_loading_progress(app_env, make_user, monkeypatch):
    _serve(monkeypatch, HostStatus("loading", "tiny-v2", "loading weights", progress=0.4))
    at = _page("chat")
    at.session_state[SESSION_KEY] = UiSession(principal=make_user("olivia", "operator"))
    at.run()
    assert any("is loading" in i.value and "loading weights" in i.value for i in at.info)
    assert at.chat_input(key="chat_prompt").disabled


@pytest.mark.parametrize("status,caption", [
    (None, "Model: none served"),
    (HostStatus("ready", "tiny-v2", "ready"), "Live model: **tiny\\-v2** · ready"),
    (HostStatus("dead", "tiny-v2", "died", error="CUDA error"), "Model tiny\\-v2: failed"),
], ids=["none", "ready", "dead"])
def test_the_sidebar_says_which_model_is_served(app_env, make_user, monkeypatch, status, caption):
    _serve(monkeypatch, status)
    at = AppTest.from_file(str(ROOT / "console" / "app.py"), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=make_user("olivia", "operator"))
    at.run()
    assert caption in [c.value for c in at.sidebar.caption]



SSO_SECRETS = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
               "client_id": "console", "client_secret": "s",
               "server_metadata_url": "https://idp.example.com/.well-known/openid-configuration"}


def _login_page_as_sso_user(email: str) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "login.py"), default_timeout=60)
    at.secrets["auth"] = SSO_SECRETS
    at.user = {"is_logged_in": True, "email": email, "iss": "https://idp.example.com"}
    return at


def test_single_sign_on_matches_the_identity_by_email_and_keeps_console_roles(app_env, make_user):
    make_user("jane", "analyst", email="jane@example.com")
    at = _login_page_as_sso_user("Jane@Example.com")
    at.run()
    assert not at.exception
    principal = at.session_state[SESSION_KEY].principal
    assert principal.username == "jane" and principal.roles == frozenset({"analyst"})
    with app_env.db.session() as s:
        [event] = list(audit_q.iter_events(s, action="auth.login", actor="jane"))
    assert event.details["method"] == "sso"


def test_single_sign_on_refuses_an_identity_without_an_account(app_env):
    at = _login_page_as_sso_user("stranger@example.com")
    at.run()
    assert at.session_state[SESSION_KEY].principal is None
    assert any("no active account" in e.value for e in at.error)
