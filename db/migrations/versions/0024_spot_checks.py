"""Spot checks: sampling unflagged exchanges into review (issue 25, part 3).

PLACEHOLDER: filled in by the engineer who owns this part; empty until then (a valid, empty step in the chain).

Revision ID: 0024_spot_checks
Revises: 0023_feedback
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0024_spot_checks"
down_revision: str | None = "0023_feedback"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
