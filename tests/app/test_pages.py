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
ROOT = Path(__file__).resolve().parents[2]
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
    assert [e.value for e in at.error] == ["Wrong username or password, or the account cannot sign in right now."]
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


def _chat_as_operator(make_user):
    """The Chat page, run once for an operator; fails on any exception it raised."""
    at = _page("chat")
    at.session_state[SESSION_KEY] = UiSession(principal=make_user("olivia", "operator"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_chat_page_without_a_served_model_says_so_and_names_no_missing_control(app_env, make_user):
    at = _chat_as_operator(make_user)
    assert [w.value for w in at.warning] == ["No model is being served; ask an admin."]
    assert at.chat_input(key="chat_prompt").disabled


def _demo_build_status(ctx, **fields) -> None:
    import json
    import os

    ctx.settings.models_dir.mkdir(parents=True, exist_ok=True)
    (ctx.settings.models_dir / ".support-demo-v1.status.json").write_text(json.dumps(
        {"name": "support-demo-v1", "pid": os.getpid(), "started_at": 0, **fields}))


@pytest.mark.parametrize("host", [None, HostStatus("stopped", None, "No model loaded.")], ids=["no-host", "empty-host"])
def test_the_chat_page_says_the_served_version_is_being_built_and_opens_when_it_is_served(
        app_env, make_user, monkeypatch, host):
    _demo_build_status(app_env, state="building", fraction=0.45,
                       message="training support-demo-v1: step 180 of 400, loss 1.234")
    _serve(monkeypatch, host)
    at = _chat_as_operator(make_user)
    assert [i.value for i in at.info] == [
        "support\\-demo\\-v1 is being built: 45% (training step 180 of 400). The chat opens by itself when it is "
        "ready; nothing to do."]
    assert [b.proto.value for b in at.get("progress")] == [45]
    assert at.warning == [] and at.error == [] and at.chat_input(key="chat_prompt").disabled

    # The build registers it and the console serves it: the page shows the model and the input opens.
    (app_env.settings.models_dir / ".support-demo-v1.status.json").unlink()
    _serve(monkeypatch, HostStatus("ready", "support-demo-v1", "ready"))
    at.run()
    assert not at.exception
    assert not any("being built" in i.value for i in at.info) and not at.chat_input(key="chat_prompt").disabled


def test_the_chat_page_says_a_just_built_version_is_about_to_load(app_env, make_user, monkeypatch, tmp_path):
    from db import model_versions as versions_q

    with app_env.db.session() as s:  # the build registered it; the reconciler has not picked it up yet
        versions_q.register_model_version(s, name="support-demo-v1", source=str(tmp_path), actor="test",
                                          dtype="float32")
    _serve(monkeypatch, HostStatus("stopped", None, "No model loaded."))
    at = _chat_as_operator(make_user)
    assert [i.value for i in at.info] == [
        "support\\-demo\\-v1 is built; the engine starts loading it in a moment. The chat opens by itself when it is "
        "ready."]
    assert at.warning == [] and at.error == [] and at.chat_input(key="chat_prompt").disabled


def test_the_chat_page_says_when_the_served_versions_build_failed_and_names_its_log(app_env, make_user, monkeypatch):
    _demo_build_status(app_env, state="failed", fraction=0.0, message="DemoBuildError: disk full")
    _serve(monkeypatch, HostStatus("stopped", None, "No model loaded."))
    at = _chat_as_operator(make_user)
    [shown] = [e.value for e in at.error]
    assert "failed" in shown and "disk full" in shown
    assert f"`{app_env.settings.data_dir / 'demo-build.log'}`" in shown
    assert at.chat_input(key="chat_prompt").disabled


def test_the_chat_page_says_when_the_served_versions_build_stopped(app_env, make_user, monkeypatch):
    _demo_build_status(app_env, state="building", fraction=0.3, message="training", pid=2**22 + 12345)
    _serve(monkeypatch, HostStatus("stopped", None, "No model loaded."))
    at = _chat_as_operator(make_user)
    [shown] = [w.value for w in at.warning]
    assert "stopped at 30%" in shown and "llm-console run" in shown
    assert at.chat_input(key="chat_prompt").disabled


@pytest.mark.parametrize("state", ["failed", "dead"])
def test_the_chat_page_shows_why_the_model_cannot_answer(app_env, make_user, monkeypatch, state):
    _serve(monkeypatch, HostStatus(state, "tiny-v2", "tiny-v2 failed to load", error="out of memory"))
    at = _chat_as_operator(make_user)
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
    (HostStatus("stopped", None, "No model loaded."), "Model: support\\-demo\\-v1 being built (45%)"),
], ids=["none", "ready", "dead", "first-version-building"])
def test_the_sidebar_says_which_model_is_served(app_env, make_user, monkeypatch, status, caption):
    if status is not None and status.state == "stopped":  # waiting for its first version, still being built
        _demo_build_status(app_env, state="building", fraction=0.45, message="training: step 180 of 400")
    _serve(monkeypatch, status)
    at = AppTest.from_file(str(ROOT / "console" / "app.py"), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=make_user("olivia", "operator"))
    at.run()
    assert caption in [c.value for c in at.sidebar.caption]



SSO_SECRETS = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
               "client_id": "console", "client_secret": "s",
               "server_metadata_url": "https://idp.example.com/.well-known/openid-configuration"}


def _sso_user(email: str, sub: str = "sub-jane", verified: object = True) -> dict[str, object]:
    return {"is_logged_in": True, "email": email, "email_verified": verified, "iss": "https://idp.example.com",
            "sub": sub}


def _login_page_as_sso_user(email: str, sub: str = "sub-jane", verified: object = True) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "login.py"), default_timeout=60)
    at.secrets["auth"] = SSO_SECRETS
    at.user = _sso_user(email, sub, verified)
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


def test_single_sign_on_refuses_an_unverified_email_and_offers_to_sign_out_of_the_provider(app_env, make_user):
    make_user("jane", "analyst", email="jane@example.com")
    at = _login_page_as_sso_user("jane@example.com", verified=False)
    at.run()
    assert at.session_state[SESSION_KEY].principal is None
    assert any("not verified" in e.value for e in at.error)
    assert any(b.label == "Sign out of the identity provider" for b in at.button)


def test_single_sign_on_refuses_a_kelvin_sign_lookalike_of_a_registered_email(app_env, make_user):
    make_user("kate", "admin", email="kate@example.com")
    at = _login_page_as_sso_user("\u212aate@example.com", sub="sub-kelvin")
    at.run()
    assert at.session_state[SESSION_KEY].principal is None
    assert any("normalisation" in e.value for e in at.error)


def test_the_idle_timeout_also_ends_the_single_sign_on_identity(app_env, make_user):
    from datetime import UTC, datetime, timedelta

    jane = make_user("jane", "analyst", email="jane@example.com")
    at = _page("dashboard")
    at.secrets["auth"] = SSO_SECRETS
    at.user = _sso_user("jane@example.com")
    at.session_state[SESSION_KEY] = UiSession(principal=jane, last_activity=datetime.now(UTC) - timedelta(hours=2))
    at.run()
    state = at.session_state[SESSION_KEY]
    assert state.principal is None and "without activity" in (state.flash or "")
    assert at.user == {"is_logged_in": False}  # st.logout() ran: the login page will not sign them straight back in


def test_an_idle_local_session_ends_without_touching_streamlits_identity(app_env, make_user):
    from datetime import UTC, datetime, timedelta

    op = make_user("op", "operator")
    at = _page("dashboard")
    at.session_state[SESSION_KEY] = UiSession(principal=op, last_activity=datetime.now(UTC) - timedelta(hours=2))
    at.run()
    assert at.session_state[SESSION_KEY].principal is None
    assert at.user == {"email": "test@example.com"}


@pytest.mark.parametrize("secret,starts", [
    ("replace-with-a-long-random-string", False), ("short", False), ("k3Jx9vQ2mT7pW4sL8nB6cR1yH5gF0dZa", True),
], ids=["placeholder", "short", "good"])
def test_the_console_refuses_to_start_with_sso_and_a_weak_cookie_secret(app_env, secret, starts):
    at = AppTest.from_file(str(ROOT / "console" / "app.py"), default_timeout=60)
    at.secrets["auth"] = {**SSO_SECRETS, "cookie_secret": secret}
    at.run()
    assert not at.exception
    if starts:
        assert not at.error and at.text_input(key="login_username")
    else:
        [error] = [e.value for e in at.error]
        assert "cookie_secret" in error
        assert not at.text_input  # nothing else is shown: no sign-in form


def test_the_sign_in_form_says_its_limits_and_a_10_mb_username_never_reaches_the_audit_log(app_env):
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "login.py"), default_timeout=60)
    at.run()
    # No browser limit (a box with one drops a longer paste whole and says nothing): the boxes say theirs.
    assert at.text_input(key="login_username").max_chars == 0 and "64" in at.text_input(key="login_username").help
    assert at.text_input(key="login_password").max_chars == 0 and "1,024" in at.text_input(key="login_password").help
    huge = "a" * 10_000_000
    at.text_input(key="login_username").input(huge)
    at.text_input(key="login_password").input(STRONG_PASSWORD)
    at.button(key="login_submit").click()
    at.run()
    # The service refuses it with the limits, before any lookup; the audit event keeps a bounded prefix.
    assert [e.value for e in at.error] == ["A username has at most 64 characters and a password at most 1,024."]
    with app_env.db.session() as s:
        [event] = list(audit_q.iter_events(s, action="auth.login_failed"))
    assert event.details["username"].startswith("a" * 64) and len(str(event.details)) < 300


def test_the_sign_in_page_throttles_repeated_attempts(app_env, make_user, monkeypatch):
    monkeypatch.setenv("LLM_CONSOLE_LOGIN_ATTEMPTS_PER_MINUTE", "2")
    make_user("olivia", "operator")
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "login.py"), default_timeout=60)
    at.run()
    shown = []
    for _ in range(3):
        at.text_input(key="login_username").input("olivia")
        at.text_input(key="login_password").input("wrong password here")
        at.button(key="login_submit").click()
        at.run()
        shown.append([e.value for e in at.error])
    assert shown[-1] == ["Too many sign-in attempts; wait a minute."]
    with app_env.db.session() as s:
        [event] = list(audit_q.iter_events(s, action="auth.login_throttled"))
    assert event.object_id.startswith("session:")
