"""Server-side browser sessions: the table's queries, the service, the cookie routes and the pages' use of them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import server
from console.services import sessions
from console.services import users as users_svc
from console.services.errors import AccessDenied, SessionEnded
from console.ui import UiSession
from db import audit as audit_q
from db import sessions as sessions_q
from db.tables import BrowserSession
from tests.conftest import console_env

ROOT = Path(__file__).resolve().parents[2]
SESSION_KEY = "llm_console_session"


def _ends(ctx) -> list[tuple[str, dict]]:
    with ctx.db.session(readonly=True) as s:
        return [(e.object_id, e.details) for e in audit_q.iter_events(s, action="auth.session_end")]


def _signed_in(ctx, principal) -> tuple[int, str]:
    """A started session whose ticket was redeemed: (session id, cookie token)."""
    started = sessions.start(ctx, principal, client="ip:127.0.0.1", user_agent="Test\x00Browser/1.0")
    redeemed = sessions.redeem(ctx, started.ticket)
    assert redeemed is not None
    return started.session_id, redeemed[0]


# --- the table ----------------------------------------------------------------------------------------------------


def test_only_digests_are_stored_and_a_ticket_works_once(ctx, make_user):
    op = make_user("op", "operator")
    started = sessions.start(ctx, op, client="ip:10.0.0.1", user_agent="x" * 500)
    with ctx.db.session(readonly=True) as s:
        row = s.get(BrowserSession, started.session_id)
        assert row.ticket_hash == sessions_q.digest(started.ticket) and row.token_hash is None
        assert started.ticket not in {row.ticket_hash, row.client, row.user_agent}
        assert len(row.user_agent) == sessions_q.MAX_USER_AGENT_CHARS  # bounded
        assert row.expires_at == ctx.now() + timedelta(hours=ctx.settings.session_max_hours)
    token, expires = sessions.redeem(ctx, started.ticket)
    assert len(token) >= 43 and expires == ctx.now() + timedelta(hours=12)
    with ctx.db.session(readonly=True) as s:
        row = s.get(BrowserSession, started.session_id)
        assert row.token_hash == sessions_q.digest(token) and row.ticket_hash is None
        assert token not in (row.token_hash or "")
    assert sessions.redeem(ctx, started.ticket) is None  # single use


def test_a_ticket_older_than_a_minute_is_refused(ctx, make_user, clock):
    started = sessions.start(ctx, make_user("op", "operator"))
    clock.advance(seconds=sessions.TICKET_SECONDS + 1)
    assert sessions.redeem(ctx, started.ticket) is None
    assert sessions.redeem(ctx, "") is None and sessions.redeem(ctx, "x" * 1000) is None


def test_why_ended_covers_expiry_idle_revocation_disabling_and_the_epoch(ctx, make_user, clock):
    op = make_user("op", "operator")
    session_id, _ = _signed_in(ctx, op)
    idle = timedelta(minutes=30)
    with ctx.db.session() as s:
        from db.users import get_user

        row = s.get(BrowserSession, session_id)
        user = get_user(s, op.user_id)
        now = clock.now
        assert sessions_q.why_ended(row, user, now, idle) is None
        assert sessions_q.why_ended(row, user, now + timedelta(minutes=31), idle) == sessions_q.IDLE
        assert sessions_q.why_ended(row, user, now + timedelta(hours=12), idle) == sessions_q.EXPIRED
        assert sessions_q.why_ended(row, None, now, idle) == sessions_q.ACCOUNT_GONE
        user.session_epoch += 1
        assert sessions_q.why_ended(row, user, now, idle) == sessions_q.PASSWORD_RESET
        user.disabled = True
        assert sessions_q.why_ended(row, user, now, idle) == sessions_q.DISABLED
        s.rollback()


def test_stale_sessions_are_closed_and_audited(ctx, make_user, clock):
    op = make_user("op", "operator")
    first, _ = _signed_in(ctx, op)
    clock.advance(minutes=31)
    second, _ = _signed_in(ctx, op)  # starting a session sweeps the ones left idle
    assert [(oid, d["reason"]) for oid, d in _ends(ctx)] == [(str(first), "idle")]
    clock.advance(hours=13)
    with ctx.db.session() as s:
        assert sessions_q.end_stale(s, clock.now, timedelta(minutes=30)) == [second]
    assert _ends(ctx)[-1][1]["reason"] in {"expired", "idle"}


# --- the service --------------------------------------------------------------------------------------------------


def test_a_cookie_token_restores_the_user_and_the_start_is_audited(ctx, make_user):
    op = make_user("op", "operator")
    session_id, token = _signed_in(ctx, op)
    principal, restored_id = sessions.resume(ctx, token)
    assert (principal.user_id, principal.username, principal.roles, restored_id) == (
        op.user_id, "op", frozenset({"operator"}), session_id)
    with ctx.db.session(readonly=True) as s:
        (start,) = audit_q.iter_events(s, action="auth.session_start")
    assert start.object_id == str(session_id) and start.actor == "op" and start.details["method"] == "password"
    with pytest.raises(SessionEnded, match="no longer valid"):
        sessions.resume(ctx, "not-a-token")


def test_last_seen_is_written_at_most_once_a_minute_and_idle_sessions_end(ctx, make_user, clock):
    op = make_user("op", "operator")
    session_id, token = _signed_in(ctx, op)
    start = clock.now

    def last_seen():
        with ctx.db.session(readonly=True) as s:
            return s.get(BrowserSession, session_id).last_seen_at

    clock.advance(seconds=30)
    sessions.check(ctx, session_id)
    assert last_seen() == start
    clock.advance(seconds=40)
    sessions.check(ctx, session_id)
    assert last_seen() == clock.now
    clock.advance(minutes=29)
    sessions.resume(ctx, token)  # still within the idle limit since the last write
    clock.advance(minutes=31)
    with pytest.raises(SessionEnded, match="30 minutes without activity"):
        sessions.check(ctx, session_id)
    assert _ends(ctx) == [(str(session_id), {"reason": "idle", "user_id": op.user_id})]
    with pytest.raises(SessionEnded, match="30 minutes without activity"):
        sessions.resume(ctx, token)  # the ended session's reason is kept
    assert len(_ends(ctx)) == 1  # ended once


def test_a_session_ends_at_its_absolute_limit_however_active(ctx, make_user, clock):
    op = make_user("op", "operator")
    session_id, _ = _signed_in(ctx, op)
    for _ in range(12 * 4 - 1):  # active every 15 minutes, never idle
        clock.advance(minutes=15)
        sessions.check(ctx, session_id)
    clock.advance(minutes=15)
    with pytest.raises(SessionEnded, match="lasted its 12 hours"):
        sessions.check(ctx, session_id)
    assert _ends(ctx)[-1][1]["reason"] == "expired"


@pytest.mark.parametrize("change,reason,text", [
    ("reset", "password reset", "password was reset"),
    ("disable", "disabled", "no longer active"),
    ("roles", "roles changed", "roles were changed"),
    ("admin", "ended by an admin", "An admin ended your session"),
])
def test_admin_actions_end_the_users_sessions(ctx, make_user, change, reason, text):
    admin = make_user("boss", "admin")
    op = make_user("op", "operator")
    session_id, token = _signed_in(ctx, op)
    if change == "reset":
        users_svc.reset_password(ctx, admin, op.user_id, "another strong password")
    elif change == "disable":
        users_svc.set_disabled(ctx, admin, op.user_id, True)
    elif change == "roles":
        users_svc.set_roles(ctx, admin, op.user_id, ["operator", "analyst"])
    else:
        (listed,) = sessions.list_sessions(ctx, admin, op.user_id)
        assert listed.id == session_id and listed.active and listed.cookie_issued
        sessions.end_session(ctx, admin, session_id)
    with pytest.raises(SessionEnded, match=text):
        sessions.check(ctx, session_id)
    with pytest.raises(SessionEnded, match=text):
        sessions.resume(ctx, token)
    ((object_id, details),) = _ends(ctx)
    assert object_id == str(session_id) and details["reason"] == reason
    assert sessions.list_sessions(ctx, admin, op.user_id) == []
    (ended,) = sessions.list_sessions(ctx, admin, op.user_id, include_ended=True)
    assert ended.end_reason == reason and not ended.active


def test_saving_the_same_roles_keeps_the_sessions(ctx, make_user):
    admin = make_user("boss", "admin")
    op = make_user("op", "operator")
    session_id, _ = _signed_in(ctx, op)
    users_svc.set_roles(ctx, admin, op.user_id, ["operator"])
    assert sessions.check(ctx, session_id).username == "op"


def test_only_admins_list_or_end_sessions(ctx, make_user):
    op = make_user("op", "operator")
    other = make_user("other", "operator")
    session_id, _ = _signed_in(ctx, other)
    with pytest.raises(AccessDenied):
        sessions.list_sessions(ctx, op, other.user_id)
    with pytest.raises(AccessDenied):
        sessions.end_session(ctx, op, session_id)
    assert sessions.check(ctx, session_id).username == "other"


def test_signing_out_ends_the_session_with_reason_logout(ctx, make_user):
    op = make_user("op", "operator")
    session_id, token = _signed_in(ctx, op)
    sessions.close(ctx, session_id)
    sessions.close(ctx, session_id)  # twice: no second event
    assert [d["reason"] for _, d in _ends(ctx)] == ["logout"]
    with pytest.raises(SessionEnded, match="You are signed out"):
        sessions.resume(ctx, token)


# --- the cookie routes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [
    ("/review", "/review"), ("/", "/"), (None, "/"), ("", "/"), ("//evil.example/x", "/"),
    ("https://evil.example", "/"), ("/\\evil.example", "/"), ("/a/../b", "/"), ("review", "/"),
    ("/review?x=1", "/"), ("/re view", "/"),
])
def test_next_is_a_path_on_this_server_only(value, expected):
    assert server.safe_next(value) == expected


def test_cross_site_requests_are_refused():
    assert server.same_origin({"sec-fetch-site": "same-origin"}, "http", "h:1")
    assert not server.same_origin({"sec-fetch-site": "cross-site"}, "http", "h:1")
    assert server.same_origin({"origin": "http://h:1"}, "http", "h:1")
    assert not server.same_origin({"origin": "http://evil.example"}, "http", "h:1")
    assert not server.same_origin({"origin": "https://h:1"}, "http", "h:1")


def test_a_request_with_neither_fetch_metadata_nor_origin_is_refused():
    # An old browser sends neither on a cross-site form: a page elsewhere could sign the victim in with the
    # attacker's own ticket (login CSRF). Every browser since 2020 sends Sec-Fetch-Site; curl can add it.
    assert not server.same_origin({}, "http", "h:1")
    assert server.same_origin({"sec-fetch-site": "none"}, "http", "h:1")  # typed in the address bar


@pytest.fixture
def client(ctx, monkeypatch):
    from starlette.testclient import TestClient

    monkeypatch.setattr(server, "_context", lambda: ctx)
    with TestClient(_cookie_app(), base_url="http://console.test", headers={"Sec-Fetch-Site": "same-origin"}) as c:
        yield c


def _cookie_app():
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(routes=[Route(server.SESSION_PATH, server.session_route, methods=["GET", "POST"]),
                             Route(server.LOGOUT_PATH, server.logout_route, methods=["POST"])])


def test_the_session_route_sets_an_httponly_lax_cookie_once_and_redirects_to_a_safe_path(ctx, make_user, client):
    op = make_user("op", "operator")
    started = sessions.start(ctx, op)
    response = client.post(server.SESSION_PATH, data={"ticket": started.ticket, "next": "//evil.example"},
                           follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    # Plain http to a host that is not this machine: browsers refuse a Secure cookie there, so it has no
    # __Host- prefix either (LLM_CONSOLE_COOKIE_SECURE=true when TLS ends at a proxy in front).
    assert cookie.startswith(f"{sessions.PLAIN_COOKIE_NAME}=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Path=/" in cookie and "Secure" not in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    assert sessions.resume(ctx, token)[0].username == "op"
    again = client.post(server.SESSION_PATH, data={"ticket": started.ticket}, follow_redirects=False)
    assert again.status_code == 403 and "set-cookie" not in again.headers


def test_the_console_fetch_gets_204_and_a_redirect_keeps_a_deep_link(ctx, make_user, client):
    op = make_user("op", "operator")
    fetched = client.post(server.SESSION_PATH, data={"ticket": sessions.start(ctx, op).ticket},
                          headers={"X-Requested-With": "llm-console"})
    assert fetched.status_code == 204 and sessions.PLAIN_COOKIE_NAME in fetched.headers["set-cookie"]
    linked = client.get(server.SESSION_PATH, params={"ticket": sessions.start(ctx, op).ticket, "next": "/review"},
                        follow_redirects=False)
    assert linked.status_code == 303 and linked.headers["location"] == "/review"


def test_a_cross_site_form_cannot_sign_someone_in(ctx, make_user, client):
    started = sessions.start(ctx, make_user("op", "operator"))
    response = client.post(server.SESSION_PATH, data={"ticket": started.ticket},
                           headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
                           follow_redirects=False)
    assert response.status_code == 403 and "set-cookie" not in response.headers
    assert sessions.redeem(ctx, started.ticket) is not None  # the refused request did not use it up


def test_logout_ends_the_cookies_session_and_clears_the_cookie(ctx, make_user, client):
    op = make_user("op", "operator")
    session_id, token = _signed_in(ctx, op)
    client.cookies.set(sessions.PLAIN_COOKIE_NAME, token)
    response = client.post(server.LOGOUT_PATH, headers={"X-Requested-With": "llm-console"})
    assert response.status_code == 204
    cleared = response.headers.get_list("set-cookie")
    assert any(c.startswith('llm_console_session=""') and "Max-Age=0" in c for c in cleared)
    assert any(c.startswith('__Host-llm_console_session=""') and "Max-Age=0" in c for c in cleared)
    assert [(o, d["reason"]) for o, d in _ends(ctx)] == [(str(session_id), "logout")]


def _cookie_client(ctx, monkeypatch, base_url: str, cookie_secure: bool | None):
    from dataclasses import replace

    from starlette.testclient import TestClient

    from console.services.context import AppContext

    there = AppContext(replace(ctx.settings, cookie_secure=cookie_secure), ctx.db, clock=ctx.clock)
    monkeypatch.setattr(server, "_context", lambda: there)
    return TestClient(_cookie_app(), base_url=base_url, headers={"Sec-Fetch-Site": "same-origin"})


@pytest.mark.parametrize("base_url,cookie_secure,host_prefixed", [
    ("http://localhost:8501", None, True),  # browsers treat http://localhost as a secure context
    ("http://127.0.0.1:8501", None, True),
    ("https://console.example", None, True),
    ("http://console.example", True, True),  # TLS ends at a proxy in front
    ("http://console.example", None, False),
    ("http://localhost:8501", False, False),
], ids=["localhost", "loopback-ip", "https", "tls-at-proxy", "plain-http", "turned-off"])
def test_the_session_cookie_is_host_prefixed_and_secure_wherever_a_browser_keeps_it(ctx, make_user, monkeypatch,
                                                                                    base_url, cookie_secure,
                                                                                    host_prefixed):
    op = make_user("op", "operator")
    with _cookie_client(ctx, monkeypatch, base_url, cookie_secure) as client:
        response = client.post(server.SESSION_PATH, data={"ticket": sessions.start(ctx, op).ticket},
                               headers={"X-Requested-With": "llm-console"})
    assert response.status_code == 204
    cookie = response.headers["set-cookie"]
    attributes = [a.strip().lower() for a in cookie.split(";")[1:]]
    assert not any(a.startswith("domain") for a in attributes) and "path=/" in attributes
    if host_prefixed:
        assert cookie.startswith("__Host-llm_console_session=") and "secure" in attributes
    else:
        assert cookie.startswith("llm_console_session=") and "secure" not in attributes
    token = cookie.split(";")[0].split("=", 1)[1]
    name = cookie.split("=", 1)[0]
    assert sessions.cookie_token({name: token}) == token and sessions.resume(ctx, token)[0].username == "op"


@pytest.mark.parametrize("headers", [{}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"}],
                         ids=["neither-header", "cross-site", "foreign-origin"])
def test_the_session_route_refuses_a_request_not_known_to_come_from_the_console(ctx, make_user, headers):
    from starlette.testclient import TestClient

    started = sessions.start(ctx, make_user("op", "operator"))
    with TestClient(_cookie_app(), base_url="http://console.test") as bare:
        server_context = server._context
        try:
            server._context = lambda: ctx  # type: ignore[assignment]
            response = bare.post(server.SESSION_PATH, data={"ticket": started.ticket}, headers=headers,
                                 follow_redirects=False)
        finally:
            server._context = server_context  # type: ignore[assignment]
    assert response.status_code == 403 and "set-cookie" not in response.headers
    assert sessions.redeem(ctx, started.ticket) is not None  # not used up


def test_an_anonymous_hit_on_the_cookie_routes_opens_no_write_transaction(ctx, make_user, monkeypatch, tmp_path):
    import sqlite3

    from starlette.testclient import TestClient

    from console.services.context import AppContext
    from db import Database, DbConfig

    # Another connection holds the SQLite write lock; a route that opened a write transaction would wait out the
    # short busy timeout and fail ("database is locked"): anonymous traffic could queue every sign-in behind it.
    short = Database(DbConfig(url=ctx.db.config.url, busy_timeout_ms=300))
    monkeypatch.setattr(server, "_context", lambda: AppContext(ctx.settings, short, clock=ctx.clock))
    holder = sqlite3.connect(ctx.db.url.database, isolation_level=None, timeout=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with TestClient(_cookie_app(), base_url="http://console.test",
                        headers={"Sec-Fetch-Site": "same-origin"}) as client:
            for data in ({"ticket": "not-a-ticket"}, {"ticket": ""}, {}):
                assert client.post(server.SESSION_PATH, data=data).status_code == 403
            assert client.get(server.SESSION_PATH, params={"ticket": "x" * 43}).status_code == 403
            client.cookies.set(sessions.COOKIE_NAME, "not-a-token")
            assert client.post(server.LOGOUT_PATH, headers={"X-Requested-With": "llm-console"}).status_code == 204
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        short.dispose()


def test_streamlit_options_are_parsed_to_their_types():
    assert server.config_options(["--server.port", "8600", "--server.address=0.0.0.0",
                                  "--server.headless", "true"]) == {
        "server.port": 8600, "server.address": "0.0.0.0", "server.headless": True}
    with pytest.raises(SystemExit):
        server.config_options(["--server.nonsense", "1"])


# --- the pages ----------------------------------------------------------------------------------------------------


@pytest.fixture
def app_env(tmp_path, monkeypatch, ctx):
    """The pages' resources over this test's database; on the real clock, as the pages' own context is."""
    from console.services.context import AppContext

    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield AppContext(ctx.settings, ctx.db)
    st.cache_resource.clear()


def test_signing_in_starts_a_session_and_hands_the_browser_a_ticket(app_env, make_user):
    from tests.conftest import STRONG_PASSWORD

    make_user("olivia", "operator")
    at = AppTest.from_file(str(ROOT / "console" / "app.py"), default_timeout=60)
    at.run()
    at.text_input(key="login_username").input("olivia")
    at.text_input(key="login_password").input(STRONG_PASSWORD)
    at.button(key="login_submit").click()
    at.run()
    assert not at.exception
    state: UiSession = at.session_state[SESSION_KEY]
    assert state.principal.username == "olivia" and state.browser_session is not None
    assert state.cookie_ticket is None  # handed to the browser in that run (the page's script POSTs it)
    with app_env.db.session(readonly=True) as s:
        row = s.get(BrowserSession, state.browser_session)
        assert row.ticket_hash is not None and row.token_hash is None and row.user_id == state.principal.user_id


def test_a_session_ended_by_an_admin_signs_the_user_out_at_the_next_run(app_env, make_user):
    admin = make_user("boss", "admin")
    op = make_user("op", "operator")
    session_id, _ = _signed_in(app_env, op)
    at = AppTest.from_file(str(ROOT / "console" / "app.py"), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=op, browser_session=session_id)
    at.run()
    assert not at.exception and at.session_state[SESSION_KEY].principal is not None
    sessions.end_session(app_env, admin, session_id)
    at.run()
    state = at.session_state[SESSION_KEY]
    assert state.principal is None and state.browser_session is None
    assert any("An admin ended your session" in i.value for i in at.info)
    assert at.text_input(key="login_username")


def test_the_users_page_lists_a_users_sessions_and_ends_one(app_env, make_user):
    admin = make_user("boss", "admin")
    op = make_user("op", "operator")
    session_id, _ = _signed_in(app_env, op)
    from console import app_pages

    at = AppTest.from_file(str(app_pages.PAGES_DIR / app_pages.PAGE_TABLE["users"][3]), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=admin)
    at.run()
    at.selectbox(key="edit_user").select("op")
    at.run()
    assert any(f"Session {session_id}" in m.value for m in at.markdown)
    at.button(key=f"end_session_{session_id}").click()
    at.run()
    assert not at.exception
    assert any(f"Ended session {session_id} of op" in m.value for m in at.success)
    with app_env.db.session(readonly=True) as s:
        (event,) = audit_q.iter_events(s, action="auth.session_end")
    assert event.actor == "boss" and event.details["reason"] == "ended by an admin"


@pytest.mark.parametrize("value,parsed", [(None, None), ("auto", None), ("true", True), ("off", False)])
def test_the_cookie_secure_setting_is_auto_true_or_false(value, parsed):
    from console.settings import Settings, SettingsError

    env = {} if value is None else {"LLM_CONSOLE_COOKIE_SECURE": value}
    settings = Settings.from_env(env)
    assert settings.cookie_secure is parsed
    shown = dict((name, value) for name, value, _ in settings.describe())["LLM_CONSOLE_COOKIE_SECURE"]
    assert shown == {None: "auto", True: "true", False: "false"}[parsed]
    with pytest.raises(SettingsError, match="LLM_CONSOLE_COOKIE_SECURE"):
        Settings.from_env({"LLM_CONSOLE_COOKIE_SECURE": "sometimes"})
