"""Helpers for the policy change tests: a safety stack with no scanners and a store seeded with known findings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from db.tables import Conversation, Exchange, Finding

# Toxicity at 0.5 flags, threat at 0.9 blocks; EMAIL_ADDRESS is redacted (no review item).
BASE = """version = "base"
[rules.prompt.toxicity]
threshold = 0.5
action = "flag"
[rules.output.toxicity]
threshold = 0.5
action = "flag"
[rules.output.threat]
threshold = 0.9
action = "block"
[rules.prompt.EMAIL_ADDRESS]
threshold = 0.5
action = "redact"
"""
# The same, with the prompt's toxicity threshold lowered to 0.3.
LOWER = BASE.replace('version = "base"', 'version = "lower"').replace(
    "[rules.prompt.toxicity]\nthreshold = 0.5", "[rules.prompt.toxicity]\nthreshold = 0.3")


def install_stack(ctx, content: str = BASE):  # noqa: ANN001, ANN201
    """Store ``content`` as the first policy version and give ``ctx`` a safety stack enforcing it (no scanners)."""
    from console.services import moderation
    from db import safety as safety_q
    from engine.safety.policy import Policy
    from engine.safety.runner import ScannerRunner

    policy = Policy.from_toml(content)
    with ctx.db.session() as s:
        version = safety_q.store_policy_version(s, policy.source_text, None, actor="test").version
    stack = moderation.SafetyStack(ScannerRunner([]), policy, version)
    ctx.safety_factory = lambda: stack
    return stack


def seed(db, user_id: int, rows: Sequence[tuple[datetime, Iterable[tuple[str, str, str, float]]]],
         *, prompt: str = "a stored prompt", synthetic: bool = False) -> list[int]:  # noqa: ANN001
    """One exchange per row (created_at, findings as (direction, detector, label, score)); returns their ids."""
    ids = []
    with db.session() as s:
        conv = Conversation(user_id=user_id, title="t")
        s.add(conv)
        s.flush()
        for i, (created, findings) in enumerate(rows):
            ex = Exchange(conversation_id=conv.id, user_id=user_id, model_version="m", prompt=f"{prompt} {i}",
                          response=f"answer {i}", created_at=created, synthetic=synthetic, policy_version=1)
            s.add(ex)
            s.flush()
            for direction, detector, label, score in findings:
                s.add(Finding(exchange_id=ex.id, direction=direction, detector=detector, label=label, score=score,
                              action="allow"))
            ids.append(ex.id)
    return ids
