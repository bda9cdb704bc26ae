"""Helpers for the review tests: put a flagged exchange in the queue the way the chat flow does."""

from __future__ import annotations

from datetime import datetime, timedelta

from console.services.access import Principal
from console.services.context import Services
from console.services.moderation import REVIEW_DEADLINE_HOURS
from db import chat as chat_q
from db import review as review_q
from db import safety as safety_q


def flag(
    svc: Services,
    owner: Principal,
    *,
    label: str = "EMAIL_ADDRESS",
    detector: str = "presidio",
    score: float = 0.9,
    severity: int = 2,
    model_version: str = "demo-v1",
    created_at: datetime | None = None,
    prompt: str = "mail me at <EMAIL_ADDRESS>",
    raw_prompt: str | None = None,
    conversation_id: int | None = None,
) -> int:
    """Store an exchange by ``owner`` with one finding and a review item; returns the item id."""
    created = created_at or svc.now()
    with svc.db.session() as s:
        if conversation_id is None:
            conversation_id = chat_q.create_conversation(s, user_id=owner.user_id, actor=owner.username).id
        exchange = chat_q.record_exchange(
            s, conversation_id=conversation_id, user_id=owner.user_id, prompt=prompt, response="ok",
            model_version=model_version, actor=owner.username, prompt_action="flag", policy_version=1,
            created_at=created,
        )
        safety_q.add_findings(s, exchange.id, [safety_q.FindingRecord(
            direction="prompt", detector=detector, label=label, score=score, action="flag", start=11, end=26,
        )], actor=owner.username)
        if raw_prompt is not None:
            safety_q.store_raw_text(s, exchange.id, "prompt", raw_prompt)
        item = review_q.create_review_item(
            s, exchange_id=exchange.id, reason="flagged", direction="prompt", severity=severity,
            due_at=created + timedelta(hours=REVIEW_DEADLINE_HOURS[severity]), actor="system",
        )
        # The item's age is the exchange's age, so tests can place items in time.
        item.created_at = created
        return item.id
