"""The review queue's labels column: only the labels whose finding triggered the flag or block, not every label the
toxicity model scored (each message stores all six)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import streamlit as st
from sqlalchemy import select

from console.services import review
from console.services.moderation import REVIEW_DEADLINE_HOURS
from db import chat as chat_q
from db.chat import TurnRecord
from db.review.items import ReviewItemRecord
from db.safety import FindingRecord
from db.tables import ReviewItem
from tests.e2e_support import console_env
from tests.review.test_review_page import open_page, queue_items

TOX = ("toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack")


def _tox(direction: str, triggered: dict[str, tuple[float, str]], low: float = 0.04) -> list[FindingRecord]:
    """All six toxicity findings of one text, as the chat flow stores them: ``triggered`` labels with their score
    and action, every other label at a low score with the action ``allow``."""
    return [FindingRecord(direction=direction, detector="tox-block", label=label,
                          score=triggered.get(label, (low, "allow"))[0], action=triggered.get(label, (low, "allow"))[1])
            for label in TOX]


def _store(ctx, owner, findings, *, reason: str = "flagged", prompt_action: str = "flag",
           output_action: str = "allow") -> int:
    now = ctx.now()
    with ctx.db.session() as s:
        conversation = chat_q.create_conversation(s, user_id=owner.user_id, actor=owner.username)
        exchange = chat_q.store_turn(s, TurnRecord(
            conversation_id=conversation.id, user_id=owner.user_id, actor=owner.username, model_version="demo-v1",
            prompt="some prompt", response="some answer", prompt_action=prompt_action, output_action=output_action,
            policy_version=1, created_at=now, findings=tuple(findings),
            review=ReviewItemRecord(reason=reason, direction="prompt", severity=2,
                                    due_at=now + timedelta(hours=REVIEW_DEADLINE_HOURS[2])),
        ))
        return s.scalars(select(ReviewItem.id).where(ReviewItem.exchange_id == exchange.id)).one()


@pytest.fixture
def people(make_user):
    return {"op": make_user("olga", "operator"), "alice": make_user("alice", "reviewer")}


CASES = {
    "one label flagged": ([*_tox("prompt", {"insult": (0.31, "flag")}), *_tox("output", {})], "insult", 0.31),
    "prompt flag and output block": (
        [*_tox("prompt", {"insult": (0.4, "flag")}), *_tox("output", {"threat": (0.9, "block")})], "insult, threat",
        0.9),
    "redaction and monitor-only hits are not triggers": (
        [FindingRecord("prompt", "presidio", "EMAIL_ADDRESS", 1.0, "redact", start=0, end=4),
         FindingRecord("prompt", "presidio", "PERSON", 0.85, "monitor:redact", start=5, end=9),
         *_tox("prompt", {"toxicity": (0.7, "flag")})], "toxicity", 0.7),
    # An item sent by hand has no trigger: the scanner's low scores are findings, not flags.
    "sent by hand": ([*_tox("prompt", {}), *_tox("output", {})], "", 0.0),
}


@pytest.mark.parametrize(("findings", "labels", "score"), CASES.values(), ids=CASES.keys())
def test_the_queue_lists_only_the_labels_that_triggered_the_item(ctx, people, findings, labels, score):
    manual = labels == ""
    item = _store(ctx, people["op"], findings, reason="manual" if manual else "flagged",
                  prompt_action="allow" if manual else "flag")
    (row,) = review.list_queue(ctx, people["alice"]).rows
    assert row.item_id == item
    assert (row.labels, row.max_score) == (labels, score)


@pytest.fixture
def page_env(ctx, clock, tmp_path, monkeypatch):
    clock.now = datetime.now(UTC)
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


def test_the_review_page_shows_only_the_triggering_label(page_env, people):
    item = _store(page_env, people["op"], [*_tox("prompt", {"insult": (0.31, "flag")}, low=0.07),
                                          *_tox("output", {}, low=0.02)])
    at = open_page(people["alice"])
    assert not at.exception
    assert queue_items(at) == [item]
    table = next(d for d in at.dataframe if "labels" in d.value.columns)
    assert list(table.value["labels"]) == ["insult"]
    assert list(table.value["max score"]) == [0.31]


def test_the_label_and_score_filters_match_only_triggering_findings(ctx, people):
    insult = _store(ctx, people["op"], _tox("prompt", {"insult": (0.6, "flag")}, low=0.2))
    threat = _store(ctx, people["op"], _tox("prompt", {"threat": (0.9, "block")}, low=0.2), prompt_action="block")

    def shown(**spec) -> set[int]:
        return {r.item_id for r in review.list_queue(ctx, people["alice"], review.QueueFilter(**spec)).rows}

    assert shown(label="insult") == {insult}  # the threat item's insult score (0.2) is a finding, not a flag
    assert shown(label="toxicity") == set()
    assert shown(max_score=0.5) == set()  # every item has low scores; none was flagged for one
    assert shown(min_score=0.8) == {threat}
    assert review.filter_options(ctx, people["alice"])["label"] == ["insult", "threat"]
