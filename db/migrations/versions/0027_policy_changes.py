"""Policy change requests with a backtest, approved by a second admin (issue 25, part 6).

PLACEHOLDER: filled in by the engineer who owns this part; empty until then (a valid, empty step in the chain).

Revision ID: 0027_policy_changes
Revises: 0026_alerts
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0027_policy_changes"
down_revision: str | None = "0026_alerts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
