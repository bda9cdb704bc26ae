"""AppTest of the Policy page: propose a change (the form resets), another admin approves it with the backtest in
view; the requester only cancels; reviewers see requests and no controls; no one-click replace is offered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages, resources
from console.services import policy_changes as changes
from console.ui import UiSession
from db import safety as safety_q
from tests.conftest import console_env
from tests.policy.support import BASE, LOWER, install_stack, seed


@pytest.fixture
def page_env(tmp_path, monkeypatch, ctx, clock, make_user):
    clock.now = datetime.now(UTC)
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    stack = install_stack(ctx)
    monkeypatch.setattr(resources, "safety_stack", lambda: stack)
    people = {"ada": make_user("ada", "admin"), "bob": make_user("bob", "admin"), "rita": make_user("rita", "reviewer")}
    yield ctx, stack, people
    st.cache_resource.clear()


def _page(principal) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / app_pages.PAGE_TABLE["policy"][3]), default_timeout=60)
    at.session_state["llm_console_session"] = UiSession(principal=principal)
    at.run()
    assert not at.exception
    return at


def _buttons(at: AppTest) -> list[str]:
    return [b.label for b in at.button]


def _text(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in (*at.markdown, *at.caption, *at.success, *at.warning, *at.error))


def test_an_admin_proposes_a_change_and_the_form_opens_afresh(page_env):
    ctx, stack, p = page_env
    seed(ctx.db, p["ada"].user_id, [(datetime.now(UTC) - timedelta(hours=1), [("prompt", "tox-block", "toxicity", 0.4)])])
    at = _page(p["ada"])
    assert "Validate and put in force" not in _buttons(at)  # no one-click replace any more
    at.text_area(key="policy_content_0").set_value(LOWER)
    at.text_input(key="policy_reason_0").set_value("catch milder insults")
    at.number_input(key="policy_days_0").set_value(3)
    at.button[[b.label for b in at.button].index("Validate, backtest and request approval")].click().run()
    assert not at.exception
    assert any("waiting for another admin's approval" in str(s.value).replace("\\", "") for s in at.success)
    assert at.text_area(key="policy_content_1").value == BASE and at.text_input(key="policy_reason_1").value == ""
    assert stack.policy.version == "base"
    shown = _text(at)
    assert "catch milder insults" in shown and "You proposed this change" in shown
    assert "Cancel my request" in _buttons(at) and "Approve and put in force" not in _buttons(at)
    assert any("1.00 %" in str(t.value) or "100.00 %" in str(t.value) for t in at.dataframe)


def test_a_refused_proposal_keeps_what_was_typed_and_names_the_field(page_env):
    ctx, stack, p = page_env
    at = _page(p["ada"])
    at.text_area(key="policy_content_0").set_value(LOWER)
    at.text_input(key="policy_reason_0").set_value("")
    at.button[_buttons(at).index("Validate, backtest and request approval")].click().run()
    assert any("reason" in str(e.value) for e in at.error)
    assert at.text_area(key="policy_content_0").value == LOWER
    assert changes.list_changes(ctx, p["ada"]) == []


def test_another_admin_approves_with_the_backtest_in_view_and_the_policy_changes(page_env):
    ctx, stack, p = page_env
    made = changes.propose(ctx, p["ada"], LOWER, "catch milder insults", 7)
    at = _page(p["bob"])
    assert {"Exchanges replayed", "Review items per day"} <= {m.label for m in at.metric}
    assert "Cancel my request" not in _buttons(at)
    at.button[_buttons(at).index("Approve and put in force")].click().run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    assert any(f"Request #{made.id} is approved" in str(s.value).replace("\\", "") for s in at.success)
    assert (stack.policy.version, stack.policy_version) == ("lower", 2)
    with ctx.db.session() as s:
        assert safety_q.latest_policy_version(s).content == LOWER
    assert any(m.label == "Policy in force" and m.value == "lower" for m in at.metric)


def test_a_reviewer_sees_pending_requests_but_no_controls(page_env):
    ctx, stack, p = page_env
    changes.propose(ctx, p["ada"], LOWER, "catch milder insults", 7)
    at = _page(p["rita"])
    assert "catch milder insults" in _text(at)
    assert not at.text_area and _buttons(at) == []
