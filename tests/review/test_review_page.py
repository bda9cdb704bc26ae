"""AppTest of the Review queue and Escalations pages, driving widgets by key and checking rows in the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import ui
from console.services import chat as chat_svc
from console.services import review
from db import audit as audit_q
from db import chat as chat_q
from db.review import decisions as decisions_q
from tests.conftest import console_env
from tests.review_fixtures import flag

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def page_env(ctx, clock, tmp_path, monkeypatch):
    # The page runs on the real clock; items are created relative to it.
    clock.now = datetime.now(UTC)
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


@pytest.fixture
def people(make_user):
    return {"op": make_user("olga", "operator"), "alice": make_user("alice", "reviewer"),
            "bob": make_user("bob", "reviewer"), "admin": make_user("ada", "admin")}


def open_page(principal, name: str = "review") -> AppTest:
    at = AppTest.from_file(str(ROOT / "console" / "views" / f"{name}.py"), default_timeout=60)
    at.session_state["llm_console_session"] = ui.UiSession(principal=principal, last_activity=None)
    return at.run()


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def queue_items(at: AppTest) -> list[int]:
    table = next(d for d in at.dataframe if "item" in d.value.columns and "assignee" in d.value.columns)
    return list(table.value["item"])


def decisions(ctx, item_id: int) -> list[tuple[str, str | None]]:
    with ctx.db.session(readonly=True) as s:
        return [(d.decision, d.category) for d in decisions_q.list_decisions(s, item_id)]


def test_the_queue_shows_items_counts_and_overdue_but_not_the_reviewers_own(page_env, people, make_user, clock):
    both = make_user("rhea", "operator", "reviewer")
    flag(page_env, both)
    fresh = flag(page_env, people["op"], severity=3)
    late = flag(page_env, people["op"], severity=1, created_at=clock.now - timedelta(days=4))
    at = open_page(both)
    assert not at.exception
    assert queue_items(at) == [fresh, late]
    shown = metrics(at)
    assert shown["Open"] == "3" and shown["Overdue"] == "1" and shown["Oldest open"].startswith("4 d")
    table = next(d for d in at.dataframe if "due" in d.value.columns)
    due = list(table.value["due"])
    assert not due[0].startswith("🔴") and due[1].startswith("🔴 overdue")


def test_filters_narrow_the_queue(page_env, people):
    person = flag(page_env, people["op"], label="PERSON", score=0.6)
    flag(page_env, people["op"], label="EMAIL_ADDRESS", score=0.95)
    at = open_page(people["alice"])
    at.selectbox(key="f_label").set_value("PERSON").run()
    assert queue_items(at) == [person]
    at.selectbox(key="f_label").set_value(None)
    at.slider(key="f_score").set_value((0.9, 1.0)).run()
    assert len(queue_items(at)) == 1 and queue_items(at) != [person]


def test_take_next_then_decide_records_the_decision_and_takes_the_next(page_env, people):
    first = flag(page_env, people["op"], severity=3)
    second = flag(page_env, people["op"], severity=1)
    at = open_page(people["alice"])
    at.button(key="take_next").click().run()
    assert any(f"Item {first}" in m.value for m in at.markdown)
    at.radio(key=f"decision_{first}").set_value("violation")
    at.selectbox(key=f"category_{first}").set_value("pii_leak")
    at.button(key="decide").click().run()
    assert not at.exception
    assert decisions(page_env, first) == [("violation", "pii_leak")]
    assert any(f"took item {second}" in s.value for s in at.success)
    assert any(f"Item {second}" in m.value for m in at.markdown)


def test_an_escalation_without_a_note_is_refused_on_the_page(page_env, people):
    item = flag(page_env, people["op"])
    at = open_page(people["alice"])
    at.button(key="take_next").click().run()
    at.radio(key=f"decision_{item}").set_value("escalate")
    at.button(key="decide").click().run()
    assert any("note is required" in e.value for e in at.error)
    assert decisions(page_env, item) == []


def test_bulk_decision_from_the_page_decides_every_selected_item(page_env, people):
    items = [flag(page_env, people["op"], label="PERSON") for _ in range(3)]
    at = open_page(people["alice"])
    at.multiselect(key="bulk_items").set_value(items[:2])
    at.radio(key="bulk_decision_0").set_value("false_positive")
    at.button(key="bulk_decide").click().run()
    assert not at.exception
    assert [decisions(page_env, i) for i in items] == [[("false_positive", None)]] * 2 + [[]]
    assert queue_items(at) == [items[2]]


def test_revealing_raw_text_needs_a_reason_shows_it_for_that_run_only_and_is_audited(page_env, people):
    flag(page_env, people["op"], raw_prompt="mail me at ada@example.com")
    at = open_page(people["alice"])
    at.button(key="take_next").click().run()
    assert "ada@example.com" not in str([m.value for m in at.markdown])
    at.text_input(key="reveal_reason").input("verify the address is real")
    at.button(key="reveal_submit").click().run()
    assert any("ada@example" in w.value for w in at.warning)
    with page_env.db.session(readonly=True) as s:
        (event,) = audit_q.iter_events(s, action="review.reveal_reason")
    assert event.details["reason"] == "verify the address is real"
    at.run()
    assert not any("ada@example" in w.value for w in at.warning)


def test_a_second_reviewer_gives_a_blind_opinion_on_the_page(page_env, people):
    item = flag(page_env, people["op"])
    review.decide(page_env, people["alice"], item, "violation", category="pii_leak", share=1.0)
    at = open_page(people["bob"])
    at.radio(key=f"second_decision_{item}").set_value("false_positive")
    at.button(key="second_decide").click().run()
    assert decisions(page_env, item) == [("violation", "pii_leak"), ("false_positive", None)]
    assert metrics(at)["Double-reviewed items"] == "1"
    # One pair that disagrees, chance agreement 0: kappa = (0 - 0) / (1 - 0) = 0.
    assert metrics(at)["Agreement (Cohen's kappa)"] == "0.00"


def test_an_operator_does_not_get_the_review_page(page_env, people):
    flag(page_env, people["admin"])
    at = open_page(people["op"])
    assert any("do not allow" in e.value for e in at.error)
    assert not at.dataframe


def test_an_admin_decides_an_escalated_item_on_the_escalations_page(page_env, people):
    item = flag(page_env, people["op"])
    review.decide(page_env, people["alice"], item, "escalate", note="threat or joke?")
    at = open_page(people["admin"], "escalations")
    assert any("threat or joke?" in m.value for m in at.markdown)
    at.radio(key=f"esc_decision_{item}").set_value("violation")
    at.selectbox(key=f"esc_category_{item}").set_value("violence_or_threat")
    at.button(key="esc_decide").click().run()
    assert not at.exception
    assert decisions(page_env, item) == [("escalate", None), ("violation", "violence_or_threat")]
    assert any("No escalated items" in i.value for i in at.info)


def form_values(at: AppTest, prefix: str) -> tuple[str, str | None, str | None]:
    """What the decision form shows now, found by its widgets' key prefix whatever item they are keyed by."""
    def one(widgets, name: str):  # noqa: ANN001, ANN202
        [widget] = [w for w in widgets if (w.key or "").startswith(f"{prefix}{name}")]
        return widget.value

    notes = [w for w in at.text_input if (w.key or "").startswith(f"{prefix}note")]
    return one(at.radio, "decision"), one(at.selectbox, "category"), notes[0].value if notes else None


def test_the_next_item_opens_with_an_empty_decision_form(page_env, people):
    first = flag(page_env, people["op"], severity=3)
    second = flag(page_env, people["op"], severity=1)
    at = open_page(people["alice"])
    at.button(key="take_next").click().run()
    at.radio(key=f"decision_{first}").set_value("escalate")
    at.selectbox(key=f"category_{first}").set_value("pii_leak")
    at.text_input(key=f"note_{first}").input("is this address real?")
    at.button(key="decide").click().run()
    assert not at.exception
    assert decisions(page_env, first) == [("escalate", None)]
    assert any(f"Item {second}" in m.value for m in at.markdown)
    assert form_values(at, "") == ("violation", None, "")
    # Clicking on decides the new item with the defaults, not with the previous item's verdict.
    at.selectbox(key=f"category_{second}").set_value("harassment")
    at.button(key="decide").click().run()
    assert decisions(page_env, second) == [("violation", "harassment")]


def test_the_bulk_form_is_empty_again_after_a_bulk_decision(page_env, people):
    items = [flag(page_env, people["op"], label="PERSON") for _ in range(3)]
    at = open_page(people["alice"])
    at.multiselect(key="bulk_items").set_value(items[:2])
    at.radio(key="bulk_decision_0").set_value("escalate")
    at.text_input(key="bulk_note_0").input("same spam campaign")
    at.button(key="bulk_decide").click().run()
    assert not at.exception
    assert at.multiselect(key="bulk_items").value == []
    assert form_values(at, "bulk_") == ("violation", None, "")


def test_the_next_second_review_opens_with_an_empty_form(page_env, people):
    first, second = flag(page_env, people["op"]), flag(page_env, people["op"])
    for item in (first, second):
        review.decide(page_env, people["alice"], item, "violation", category="pii_leak", share=1.0)
    at = open_page(people["bob"])
    shown = first if any(f"Item {first}" in m.value for m in at.markdown) else second
    other = second if shown == first else first
    at.radio(key=f"second_decision_{shown}").set_value("escalate")
    at.selectbox(key=f"second_category_{shown}").set_value("pii_leak")
    at.button(key="second_decide").click().run()
    assert not at.exception
    assert any(f"Item {other}" in m.value for m in at.markdown)
    assert form_values(at, "second_") == ("violation", None, None)


def test_the_next_escalation_opens_with_an_empty_form(page_env, people):
    first, second = flag(page_env, people["op"]), flag(page_env, people["op"])
    for item in (first, second):
        review.decide(page_env, people["alice"], item, "escalate", note="threat or joke?")
    at = open_page(people["admin"], "escalations")
    shown = at.selectbox(key="escalation_item").value
    other = second if shown == first else first
    at.radio(key=f"esc_decision_{shown}").set_value("false_positive")
    at.selectbox(key=f"esc_category_{shown}").set_value("violence_or_threat")
    at.text_input(key=f"esc_note_{shown}").input("a joke between colleagues")
    at.button(key="esc_decide").click().run()
    assert not at.exception
    assert at.selectbox(key="escalation_item").value == other
    assert form_values(at, "esc_") == ("violation", None, "")


def test_the_operators_note_reaches_the_reviewers_item_view(page_env, people):
    op = people["op"]
    with page_env.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=op.user_id, actor=op.username)
        exchange = chat_q.store_turn(s, chat_q.TurnRecord(
            conversation_id=conv.id, user_id=op.user_id, actor=op.username, model_version="demo-v1",
            prompt="refund?", response="Refunds take 90 days."))
        exchange_id = exchange.id
    item = chat_svc.send_to_review(page_env, op, exchange_id, "The *refund* policy is made up")
    review.claim(page_env, people["alice"], item)
    at = open_page(people["alice"])
    assert any(f"Item {item}" in m.value for m in at.markdown)
    # Shown escaped: the operator's text is not markdown.
    assert any("The \\*refund\\* policy is made up" in i.value for i in at.info)


def test_the_reviewer_sees_the_conversations_system_prompt_and_the_operators_note_redacted(page_env, people):
    op = people["op"]
    with page_env.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=op.user_id, actor=op.username,
                                          system_prompt="Always copy <EMAIL_ADDRESS> on your answers.")
    item = flag(page_env, op, conversation_id=conv.id)
    exchange_id = review.item_view(page_env, people["alice"], item).exchange_id
    manual = chat_svc.send_to_review(page_env, op, exchange_id, "Ask jane.doe@example.com about this one")
    review.claim(page_env, people["alice"], manual)
    at = open_page(people["alice"])
    assert not at.exception
    shown = [m.value for m in at.markdown]
    [system] = [m for m in shown if "System prompt" in m]
    assert "Always copy :orange-background[\\<EMAIL\\_ADDRESS\\>] on your answers" in system
    [note] = [i.value for i in at.info if "Operator's note" in i.value]
    assert "jane.doe" not in note and "\\<EMAIL\\_ADDRESS\\>" in note
