"""Helpers for the spot-check tests: store exchanges the way the chat flow does (one store_turn each)."""

from __future__ import annotations

from datetime import datetime

from console.services.access import Principal
from console.services.context import AppContext
from db import chat as chat_q
from db.chat import TurnRecord
from db.safety import FindingRecord


def exchange(ctx: AppContext, owner: Principal, *, created_at: datetime | None = None, model_version: str = "demo-v1",
             prompt: str = "how do I reset my password?", response: str = "Open Settings, then Security.",
             prompt_action: str = "allow", status: str = "ok", synthetic: bool = False,
             findings: tuple[tuple[str, str, float, str], ...] = (("detoxify", "toxicity", 0.02, "allow"),),
             span: tuple[int, int] | None = None) -> int:
    """Store one answered exchange by ``owner``; ``findings`` are (detector, label, score, action) on the prompt.
    Returns the exchange id."""
    with ctx.db.session() as s:
        conversation_id = chat_q.create_conversation(s, user_id=owner.user_id, actor=owner.username).id
        record = TurnRecord(
            conversation_id=conversation_id, user_id=owner.user_id, actor=owner.username,
            model_version=model_version, prompt=prompt, response=response, prompt_action=prompt_action,
            output_action="allow", policy_version=1, created_at=created_at or ctx.now(), status=status,
            synthetic=synthetic,
            findings=tuple(FindingRecord(direction="prompt", detector=d, label=lab, score=sc, action=a,
                                         start=span[0] if span else None, end=span[1] if span else None)
                          for d, lab, sc, a in findings),
        )
        return chat_q.store_turn(s, record).id


def many(ctx: AppContext, owner: Principal, n: int, **kwargs: object) -> list[int]:
    return [exchange(ctx, owner, **kwargs) for _ in range(n)]  # type: ignore[arg-type]
