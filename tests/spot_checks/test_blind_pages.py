"""AppTest: a spot check and a flagged item look alike to a reviewer; the Review quality page for each role."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from console import ui
from console.services import review
from console.services import spot_checks as spot
from db.tables import AuditEvent, ReviewItem
from tests.conftest import console_env
from tests.review_fixtures import flag
from tests.spot_checks.support import exchange, many

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "mail me at <EMAIL_ADDRESS>"


@pytest.fixture
def page_env(ctx, clock, tmp_path, monkeypatch):
    clock.now = datetime.now(UTC).replace(microsecond=0)
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


@pytest.fixture
def people(make_user):
    return {"op": make_user("olga", "operator"), "alice": make_user("alice", "reviewer"),
            "admin": make_user("ada", "admin")}


def open_page(principal, name: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "console" / "views" / f"{name}.py"), default_timeout=60)
    at.session_state["llm_console_session"] = ui.UiSession(principal=principal, last_activity=None)
    return at.run()


def _pair(ctx, people) -> tuple[int, int]:
    """A flagged item and a spot check on exchanges with the same text and the same finding's score."""
    flagged = flag(ctx, people["op"], score=0.9, severity=2, prompt=PROMPT)
    exchange(ctx, people["op"], created_at=ctx.now() - timedelta(minutes=5), prompt=PROMPT, response="ok",
             findings=(("presidio", "EMAIL_ADDRESS", 0.9, "redact"),), span=(11, 26))
    spot.set_rule(ctx, people["admin"], share_percent=100, daily_cap=5)
    spot.draw(ctx)
    with ctx.db.session(readonly=True) as s:
        (checked,) = s.scalars(select(ReviewItem.id).where(ReviewItem.reason == "spot_check"))
    return flagged, checked


def _rendered(at: AppTest, item_id: int) -> list[str]:
    """Every text the item shows, its ids replaced, in order."""
    texts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    texts += [str(d.value.drop(columns=[c for c in ("item",) if c in d.value.columns]).to_dict("records"))
              for d in at.dataframe if "assignee" not in d.value.columns]  # the queue is compared on its own
    texts += [str(r.options) for r in at.radio]
    return [re.sub(rf"(?i)\b(item\**\s*){item_id}\b", r"\1N", t) for t in texts]


def test_a_reviewer_cannot_tell_a_spot_check_from_a_flagged_item(page_env, people):
    flagged, checked = _pair(page_env, people)
    at = open_page(people["alice"], "review")
    table = next(d for d in at.dataframe if "assignee" in d.value.columns).value.set_index("item")
    # The queue: same reason, severity, deadline, labels and score for both rows.
    assert table.loc[flagged].drop("flagged").to_dict() == table.loc[checked].drop("flagged").to_dict()
    assert set(table["reason"]) == {"check"}
    shown = {}
    for item_id in (flagged, checked):
        review.claim(page_env, people["alice"], item_id)
        at = open_page(people["alice"], "review")
        assert not at.exception
        shown[item_id] = [t for t in _rendered(at, item_id) if "Oldest open" not in t]
        review.release(page_env, people["alice"], item_id)
    assert shown[flagged] == shown[checked]
    words = " ".join(shown[checked]).lower()
    for leak in ("spot", "unflagged", "allow", "blocked"):
        assert leak not in words
    at = open_page(people["alice"], "review")
    options = [o for r in at.radio for o in r.options]
    assert "No violation" in options and "False positive" not in options


def test_the_decision_on_a_spot_check_records_the_category(page_env, people):
    _, checked = _pair(page_env, people)
    review.claim(page_env, people["alice"], checked)
    at = open_page(people["alice"], "review")
    at.radio(key=f"decision_{checked}").set_value("violation")
    at.selectbox(key=f"category_{checked}").set_value("pii_leak")
    at.button(key="decide").click().run()
    assert not at.exception
    with page_env.db.session(readonly=True) as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "review.decision")
                          .order_by(AuditEvent.id.desc())).first()
    assert event is not None and event.details.get("category") == "pii_leak"


def test_admins_set_rules_on_the_review_quality_page_and_reviewers_only_read_them(page_env, people):
    at = open_page(people["admin"], "review_quality")
    assert not at.exception
    assert any("No rule: no spot checks are drawn" in i.value for i in at.info)
    at.number_input(key="rule_share").set_value(2.0)
    at.number_input(key="rule_cap").set_value(15)
    at.selectbox(key="rule_family").set_value("pii")
    at.button(key="rule_save").click().run()
    assert not at.exception
    assert [s.value.replace("\\", "") for s in at.success] == [
        "Rule saved: 2.0 % of every model version, Personal data (PII) only, at most 15 a day."]
    assert spot.list_rules(page_env, people["admin"]) == (spot.Rule(0.02, 15, None, "pii"),)
    assert at.number_input(key="rule_share").value == 1.0  # the form was reset
    reviewer = open_page(people["alice"], "review_quality")
    assert not reviewer.exception
    rules = next(d for d in reviewer.dataframe if "scope" in d.value.columns).value
    assert list(rules["share"]) == ["2.0 %"] and list(rules["daily cap (items)"]) == [15]
    assert not [b for b in reviewer.button if b.key in ("rule_save", "rule_remove")]
    assert not [n for n in reviewer.number_input if n.key == "rule_share"]


def test_the_page_says_not_enough_under_the_minimum_and_shows_the_rate_above_it(page_env, people, clock):
    many(page_env, people["op"], 31, created_at=clock.now - timedelta(hours=1))
    spot.set_rule(page_env, people["admin"], share_percent=100, daily_cap=40)
    spot.draw(page_env)
    with page_env.db.session(readonly=True) as s:
        items = list(s.scalars(select(ReviewItem.id).where(ReviewItem.reason == "spot_check")))
    for item_id in items[:29]:
        review.decide(page_env, people["alice"], item_id, "false_positive", share=0.0)
    review.decide(page_env, people["alice"], items[29], "violation", category="pii_leak", share=0.0)
    at = open_page(people["alice"], "review_quality")
    table = next(d for d in at.dataframe if "miss rate" in d.value.columns).value.set_index("label family")
    pii = table.loc["Personal data (PII)"]
    assert pii["spot checks decided"] == 30 and pii["judged a violation"] == 1
    assert pii["miss rate"] == "3.3 %" and pii["95 % interval"] == "0.6 % to 16.7 %"
    assert any("30 spot checks decided in the last 30 days" in c.value for c in at.caption)
    review.decide(page_env, people["alice"], items[30], "false_positive", share=0.0)
    at.selectbox(key="rq_days").set_value(7).run()
    assert "31 spot checks decided in the last 7 days" in " ".join(c.value for c in at.caption)
