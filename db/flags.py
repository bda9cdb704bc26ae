"""What "flagged" means, defined once for every count of it (docs/architecture.md, "One word, one meaning").

An exchange is *flagged* when the safety policy's action on its prompt or on its output was ``flag`` or ``block``
(:data:`FLAG_ACTIONS`). A stored finding whose score is below its threshold (every message gets toxicity scores)
is a finding, not a flag: only the policy's action counts. The Latency page's buckets (``db.latency``), the watch
window (``db.promotions``) and the Prometheus counters (``console.services.telemetry``) all use these functions,
so the three agree.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, or_
from sqlalchemy.sql.elements import ColumnElement

from db.tables import Exchange

FLAG_ACTIONS: tuple[str, ...] = ("flag", "block")
DIRECTIONS: tuple[str, ...] = ("prompt", "output")


def action_flags(action: str | None) -> bool:
    """Whether one direction's policy action (``allow``, ``flag``, ``redact``, ``block`` or None) is a flag."""
    return action in FLAG_ACTIONS


def is_flagged(prompt_action: str | None, output_action: str | None) -> bool:
    """Whether an exchange is flagged: the policy flagged or blocked its prompt or its output."""
    return action_flags(prompt_action) or action_flags(output_action)


def is_blocked(status: str | None, prompt_action: str | None, output_action: str | None) -> bool:
    """Whether an exchange was blocked: its status is ``blocked`` or its prompt's or output's action is ``block``."""
    return status == "blocked" or prompt_action == "block" or output_action == "block"


def action_flags_sql(action: Any) -> ColumnElement[bool]:
    """:func:`action_flags` in SQL, for an action column (NULL is not a flag)."""
    return action.is_not(None) & action.in_(FLAG_ACTIONS)  # type: ignore[no-any-return]


def flagged_sql() -> ColumnElement[bool]:
    """:func:`is_flagged` in SQL, on :class:`db.tables.Exchange`."""
    return or_(action_flags_sql(Exchange.prompt_action), action_flags_sql(Exchange.output_action))


def as_count(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """1 where ``condition`` holds, else 0 (to sum, or to select as a number on every database)."""
    return case((condition, 1), else_=0)
