"""Spot checks: sampling unflagged exchanges into review (issue 25, part 3).

- ``spot_checks``: one row per exchange drawn blind into review as a spot check: which rule drew it (its scope
  key), for which UTC day (YYYY-MM-DD), and the review item it opened. ``exchange_id`` is unique, so an exchange is never drawn
  twice, whichever replica draws. The rules themselves live in ``app_state`` (key ``spot_check.rules``).

Revision ID: 0024_spot_checks
Revises: 0023_feedback
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024_spot_checks"
down_revision: str | None = "0023_feedback"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "spot_checks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("exchange_id", sa.Integer(), sa.ForeignKey("exchanges.id"), nullable=False),
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("review_items.id"), nullable=False),
        sa.Column("rule", sa.String(300), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("exchange_id", name="uq_spot_checks_exchange_id"),
    )
    op.create_index("ix_spot_checks_day_rule", "spot_checks", ["day", "rule"])
    op.create_index("ix_spot_checks_item_id", "spot_checks", ["item_id"])


def downgrade() -> None:
    op.drop_index("ix_spot_checks_item_id", table_name="spot_checks")
    op.drop_index("ix_spot_checks_day_rule", table_name="spot_checks")
    op.drop_table("spot_checks")
