"""The Alerts page (AppTest): an admin adds a webhook (the form resets), sends a test alert to the loopback receiver
and sees it delivered in the log, which says which notice (firing or resolved) each delivery carried; bad input keeps
what was typed; the URL is never shown back; others cannot open it."""

from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.services import alerts as alerts_svc
from console.textsafe import escape_markdown as md
from console.ui import UiSession
from tests.alerts.conftest import URL_TOKEN
from tests.conftest import console_env


@pytest.fixture
def page_env(ctx, tmp_path, monkeypatch):
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


def _page(principal) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "alerts.py"), default_timeout=60)
    at.session_state["llm_console_session"] = UiSession(principal=principal)
    return at


def _everything(at) -> str:
    parts = [*(m.value for m in at.markdown), *(c.value for c in at.caption), *(e.value for e in at.error),
             *(s.value for s in at.success), *(i.value for i in at.text_input)]
    parts += [frame.value.to_csv() for frame in at.dataframe]
    return "\n".join(str(p) for p in parts)


def _table(at, column):
    for frame in at.dataframe:
        if column in frame.value.columns:
            return frame.value
    raise AssertionError(f"no table with a column {column!r}")


def test_an_admin_adds_a_webhook_sends_a_test_and_sees_it_delivered(page_env, make_user, receiver):
    admin = make_user("ada", "admin")
    at = _page(admin).run()
    assert not at.exception
    assert "No webhooks yet" in _everything(at)
    at.text_input(key="wh_name").input("on-call")
    at.text_input(key="wh_url").input(receiver.url)
    at.text_input(key="wh_secret").input("s3cret-shared-key")
    at.button[0].click()  # the form's submit button is the first button on the page
    at.run()
    assert not at.error, [e.value for e in at.error]
    assert at.success[0].value == md(f"Webhook on-call added (http://127.0.0.1:{receiver.port}/…).")
    assert at.text_input(key="wh_name").value == "" and at.text_input(key="wh_url").value == ""  # reset
    hooks = _table(at, "address")
    assert list(hooks["name"]) == ["on-call"] and list(hooks["signed"]) == ["yes"]
    at.button(key="wh_test").click()
    at.run()
    assert at.success[0].value == md("Test alert sent to on-call: 1 delivered.")
    log = _table(at, "last HTTP status")
    assert list(log["status"]) == ["delivered"] and list(log["attempts"]) == ["1 of 4"]
    assert list(log["last HTTP status"]) == ["200"]
    assert len(receiver.requests) == 1 and receiver.requests[0].json()["alert"]["kind"] == "test"
    assert URL_TOKEN not in _everything(at) and "s3cret-shared-key" not in _everything(at)


def test_a_refused_webhook_keeps_what_was_typed_and_says_which_field(page_env, make_user):
    admin = make_user("ada", "admin")
    at = _page(admin).run()
    at.text_input(key="wh_name").input("ops")
    at.text_input(key="wh_url").input("ftp://files.example.com/hook")
    at.button[0].click()
    at.run()
    assert [e.value for e in at.error] == [md("URL: only http:// and https:// addresses are allowed (not ftp:).")]
    assert at.text_input(key="wh_name").value == "ops"
    assert at.text_input(key="wh_url").value == "ftp://files.example.com/hook"
    assert alerts_svc.list_webhooks(page_env, admin) == []


def test_disabling_and_deleting_from_the_page(page_env, make_user, receiver):
    admin = make_user("ada", "admin")
    alerts_svc.create_webhook(page_env, admin, name="ops", kind="slack", url=receiver.url,
                              alert_kinds=["slo_breach"])
    at = _page(admin).run()
    at.button(key="wh_toggle").click()
    at.run()
    assert at.success[0].value == md("Webhook ops disabled.")
    assert list(_table(at, "address")["status"]) == ["disabled"]
    at.button(key="wh_delete").click()
    at.run()
    assert at.success[0].value == md("Webhook ops deleted; its deliveries stay in the log.")
    assert alerts_svc.list_webhooks(page_env, admin) == []


def test_the_delivery_log_shows_which_notice_each_delivery_carried(page_env, make_user, receiver):
    from db import alerts as alerts_q

    admin = make_user("ada", "admin")
    alerts_svc.create_webhook(page_env, admin, name="ops", kind="json", url=receiver.url,
                              alert_kinds=["slo_breach"])
    with page_env.db.session() as s:
        alerts_q.raise_alert(s, "slo_breach", "ttft_ms/p95", "SLO missed", {"measured": 900}, now=page_env.now())
    with page_env.db.session() as s:
        assert alerts_q.resolve_alert(s, "slo_breach", "ttft_ms/p95", now=page_env.now())
    assert alerts_svc.dispatch(page_env) == {"delivered": 2}
    at = _page(admin).run()
    assert not at.exception
    log = _table(at, "notice")
    assert list(log["notice"]) == ["resolved", "firing"] and list(log["status"]) == ["delivered", "delivered"]
    assert list(_table(at, "resolved (UTC)")["state"]) == ["resolved"]
    assert md("Newest delivery: #2 to ops (resolved notice): delivered (attempt 1 of 4, HTTP 200).") in _everything(at)


@pytest.mark.parametrize("role", ["operator", "reviewer", "analyst"])
def test_only_admins_open_the_page(page_env, make_user, role):
    at = _page(make_user("someone", role)).run()
    assert at.error and "managing alert webhooks" in at.error[0].value
    assert not at.dataframe
