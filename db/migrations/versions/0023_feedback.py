"""User feedback (thumbs up or down, a reason) on exchanges (issue 25, part 2).

PLACEHOLDER: filled in by the engineer who owns this part; empty until then (a valid, empty step in the chain).

Revision ID: 0023_feedback
Revises: 0022_review_reasons
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0023_feedback"
down_revision: str | None = "0022_review_reasons"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
