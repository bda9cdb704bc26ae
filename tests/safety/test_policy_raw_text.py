"""AppTest of the Policy page's word on raw text: the default policy keeps none, so "reveal raw text" is never
offered; what turning keep_raw_text on means (kept apart, reviewers only, each reveal audited, retention)."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages, resources
from console.services import policy as policy_svc
from console.ui import UiSession
from engine.safety.policy import DEFAULT_POLICY_PATH, Policy
from tests.conftest import console_env


@pytest.fixture
def app_env(tmp_path, monkeypatch, ctx, clock):
    clock.now = datetime.now(UTC)
    for key, value in console_env(tmp_path, LLM_CONSOLE_RETENTION_RAW_DAYS="12").items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


def _in_force(monkeypatch, policy: Policy) -> None:
    stack = SimpleNamespace(policy=policy, policy_version=1, notice=None, lock=threading.Lock(),
                            runner=SimpleNamespace(versions={"presidio": "test"}))
    monkeypatch.setattr(resources, "safety_stack", lambda: stack)
    st.cache_resource.clear()


def _policy_page(principal) -> str:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / app_pages.PAGE_TABLE["policy"][3]), default_timeout=60)
    at.session_state["llm_console_session"] = UiSession(principal=principal)
    at.run()
    assert not at.exception
    return "\n".join(str(e.value) for e in at.info).replace("\\", "")


@pytest.mark.parametrize("role", ["admin", "reviewer"])
def test_the_policy_page_says_the_default_policy_keeps_no_raw_text_so_nothing_can_be_revealed(
        app_env, make_user, monkeypatch, role):
    policy = Policy.load(DEFAULT_POLICY_PATH)
    assert policy.keep_raw_text is False
    _in_force(monkeypatch, policy)
    shown = _policy_page(make_user(f"p_{role}", role))
    assert "Raw text is not kept (keep_raw_text = false)" in shown
    assert 'reviewers can never reveal raw text (the review queue\'s "Reveal raw text" is not offered)' in shown
    # What turning it on means.
    assert "kept apart from the stored (redacted) text, for 12 days" in shown
    assert "Only reviewers can reveal it" in shown and "every reveal is an audit event" in shown
    assert "from then on, not for earlier ones" in shown


def test_with_raw_text_kept_the_policy_page_says_who_may_see_it_and_for_how_long(app_env, make_user, monkeypatch):
    default = Policy.load(DEFAULT_POLICY_PATH)
    _in_force(monkeypatch, dataclasses.replace(default, keep_raw_text=True))
    shown = _policy_page(make_user("p_admin", "admin"))
    assert "Raw text is kept (keep_raw_text = true)" in shown and "not kept" not in shown
    assert "for 12 days" in shown and "every reveal is an audit event" in shown


def test_the_note_follows_the_retention_setting():
    assert "for 30 days" in policy_svc.raw_text_note(False, 30)
    assert policy_svc.raw_text_note(True, 7).startswith("Raw text is kept")
