"""Helpers for the review tests: put a flagged exchange in the queue the way the chat flow does (one store_turn)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from console.services.access import Principal
from console.services.context import AppContext
from console.services.moderation import REVIEW_DEADLINE_HOURS
from db import chat as chat_q
from db.chat import TurnRecord
from db.review.items import ReviewItemRecord
from db.safety import FindingRecord, RawTextRecord
from db.tables import ReviewItem


def flag(
    ctx: AppContext,
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
    created = created_at or ctx.now()
    with ctx.db.session() as s:
        if conversation_id is None:
            conversation_id = chat_q.create_conversation(s, user_id=owner.user_id, actor=owner.username).id
        exchange = chat_q.store_turn(s, TurnRecord(
            conversation_id=conversation_id, user_id=owner.user_id, actor=owner.username,
            model_version=model_version, prompt=prompt, response="ok", prompt_action="flag", policy_version=1,
            created_at=created,
            findings=(FindingRecord(direction="prompt", detector=detector, label=label, score=score, action="flag",
                                    start=11, end=26),),
            raw_texts=() if raw_prompt is None else (RawTextRecord("prompt", raw_prompt),),
            review=ReviewItemRecord(reason="flagged", direction="prompt", severity=severity,
                                    due_at=created + timedelta(hours=REVIEW_DEADLINE_HOURS[severity])),
        ))
        item = s.scalars(select(ReviewItem).where(ReviewItem.exchange_id == exchange.id)).one()
        # The item's age is the exchange's age, so tests can place items in time.
        item.created_at = created
        return item.id
