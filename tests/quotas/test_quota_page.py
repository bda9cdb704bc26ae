"""AppTest: the Users page's Quotas tab shows effective limits, their source and usage; its forms set role
defaults and overrides, refuse bad values with the service's message, and open empty after a success."""

from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.services import quotas
from console.services.context import utcnow
from console.ui import UiSession
from db import audit as audit_q
from tests.conftest import console_env
from tests.quotas.test_quota_service import _store_tokens

SESSION_KEY = "llm_console_session"


@pytest.fixture
def page(tmp_path, monkeypatch, ctx, make_user):
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    admin, op = make_user("boss", "admin"), make_user("olivia", "operator")
    at = AppTest.from_file(str(app_pages.PAGES_DIR / app_pages.PAGE_TABLE["users"][3]), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=admin)
    at.run()
    assert not at.exception
    yield at, ctx, admin, op
    st.cache_resource.clear()


def _table(at: AppTest, index: int) -> list[dict]:
    return at.dataframe[index].value.to_dict("records")


def _row(at: AppTest, username: str) -> dict:
    [row] = [r for r in _table(at, 1) if r["user"] == username]
    return row


def _changes(ctx) -> list:
    with ctx.db.session(readonly=True) as s:
        return list(audit_q.iter_events(s, action="quota.changed"))


def test_the_quotas_tab_shows_each_users_limits_where_they_come_from_and_usage(page) -> None:
    at, ctx, admin, op = page
    ctx.clock = utcnow  # the page reads the real clock
    before = quotas.minute_start(utcnow())
    quotas.enforce(ctx, op)  # one request this minute
    _store_tokens(ctx, op.user_id, 12, 30)
    at.run()
    same_minute = quotas.minute_start(utcnow()) == before
    row = _row(at, "olivia")
    assert row["requests per minute (limit)"] == "no limit"
    assert row["requests: from"] == "role operator (shipped default)"
    assert row["requests this minute"] == (1 if same_minute else 0) and row["tokens per day (limit)"] == "no limit"
    assert row["tokens today"] == 42 or before.date() != utcnow().date()
    assert _row(at, "boss")["requests this minute"] == 0 and _row(at, "boss")["tokens today"] == 0
    roles = {r["role"]: r for r in _table(at, 2)}
    assert roles["operator"]["requests per minute"] == "no limit (shipped)"


def test_an_admin_sets_a_users_override_and_the_form_opens_empty(page) -> None:
    at, ctx, admin, op = page
    at.selectbox(key="quota_user_name_0").set_value("olivia")
    at.selectbox(key="quota_user_kind_0").set_value("requests_per_minute")
    at.text_input(key="quota_user_value_0").input("1")
    at.button(key="quota_user_save").click()
    at.run()
    assert not at.exception and not at.error
    assert any("olivia's own limit is now 1 request per minute" in s.value for s in at.success)
    assert _row(at, "olivia")["requests per minute (limit)"] == "1"
    assert _row(at, "olivia")["requests: from"] == "override"
    assert at.text_input(key="quota_user_value_1").value == ""  # the next round's form is empty
    [change] = _changes(ctx)
    assert change.details["old"] == "role default" and change.details["new"] == 1


def test_an_admin_sets_a_role_default_and_puts_it_back(page) -> None:
    at, ctx, admin, op = page
    at.selectbox(key="quota_role_name_0").set_value("operator")
    at.selectbox(key="quota_role_kind_0").set_value("tokens_per_day")
    at.text_input(key="quota_role_value_0").input("20000")
    at.button(key="quota_role_save").click()
    at.run()
    assert not at.error and _row(at, "olivia")["tokens per day (limit)"] == "20,000"
    at.selectbox(key="quota_role_name_1").set_value("operator")
    at.selectbox(key="quota_role_kind_1").set_value("tokens_per_day")
    at.button(key="quota_role_reset").click()
    at.run()
    assert not at.error and _row(at, "olivia")["tokens per day (limit)"] == "no limit"
    assert any("shipped default (no limit)" in s.value.replace("\\", "") for s in at.success)
    assert [c.details["new"] for c in _changes(ctx)] == [20000, "shipped default (no limit)"]


@pytest.mark.parametrize("value,expected", [("-3", "cannot be negative"), ("1.5", "is not a whole number"),
                                            ("99999999999", "more than the largest allowed"),
                                            ("lots", "is not a whole number")],
                         ids=["negative", "fraction", "absurd", "word"])
def test_bad_input_battery_the_quota_form_shows_the_services_message_and_keeps_the_value(page, value,
                                                                                         expected) -> None:
    at, ctx, admin, op = page
    at.selectbox(key="quota_user_name_0").set_value("olivia")
    at.text_input(key="quota_user_value_0").input(value)
    at.button(key="quota_user_save").click()
    at.run()
    assert any(expected in e.value for e in at.error)
    assert at.text_input(key="quota_user_value_0").value == value  # kept to correct
    assert _changes(ctx) == []


def test_saving_without_choosing_a_user_names_the_control(page) -> None:
    at, ctx, admin, op = page
    at.text_input(key="quota_user_value_0").input("5")
    at.button(key="quota_user_save").click()
    at.run()
    assert any("Choose a user in 'User' first" in e.value for e in at.error)
    assert _changes(ctx) == []
